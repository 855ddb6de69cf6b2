"""Model names: parsing, validation, default filling, case-insensitive comparison, safe paths.

A name is ``[scheme://]host/namespace/model:tag[@sha256:<hex>]`` (ASCII only), split the way
current Ollama's ``ParseNameBare`` splits it, with missing parts filled from the defaults
(``registry.ollama.ai``, ``library``, ``latest``). This module owns the part rules, the
``Name`` value, the only way to turn name parts into a path under a root (``safe_join``), and
the choice between http and https for a registry host.

Names are compared case-insensitively (Ollama's EqualFold) but keep the casing a user typed,
because that casing is what Ollama writes on disk.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import pathlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from modelfs.errors import DigestInvalid, NameInvalid
from modelfs.formats.digest import Digest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

MAX_HOST_CHARS = 350
MAX_NAME_PART_CHARS = 80
# Error messages quote user input; these bounds keep them one readable line.
MAX_SHOWN_NAME_CHARS = 200
MAX_SHOWN_PART_CHARS = 80

SCHEMES = ("http", "https")


class PartKind(enum.Enum):
    HOST = "host"
    NAMESPACE = "namespace"
    MODEL = "model"
    TAG = "tag"


@dataclass(frozen=True)
class _PartRule:
    pattern: re.Pattern[str]
    max_chars: int
    allowed: str  # the character classes, as shown to a user


_START = "A-Z a-z 0-9 or _"
_RULES: dict[PartKind, _PartRule] = {
    # Patterns are used with fullmatch: "$" in Python would accept a trailing newline.
    PartKind.HOST: _PartRule(
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"), MAX_HOST_CHARS, "A-Z a-z 0-9 _ . : -"
    ),
    PartKind.NAMESPACE: _PartRule(
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*"), MAX_NAME_PART_CHARS, "A-Z a-z 0-9 _ -"
    ),
    PartKind.MODEL: _PartRule(
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"), MAX_NAME_PART_CHARS, "A-Z a-z 0-9 _ . -"
    ),
    PartKind.TAG: _PartRule(
        re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*"), MAX_NAME_PART_CHARS, "A-Z a-z 0-9 _ . -"
    ),
}
_START_RE = re.compile(r"[A-Za-z0-9_]")


def _shown(text: object, limit: int = MAX_SHOWN_NAME_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters, for error messages."""
    if not isinstance(text, str):
        text = repr(text)
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else repr(ch)[1:-1]
        out.append(piece)
        size += len(piece)
        if size > limit:
            break
    shown = "".join(out)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _non_ascii_why(text: str) -> str:
    bad = next(ch for ch in text if not ch.isascii())
    return f"model names are ASCII only; found U+{ord(bad):04X}"


def _part_problem(kind: PartKind, text: object, label: str | None = None) -> str | None:
    """Why ``text`` is not a valid ``kind`` part (called ``label`` in the message), or None."""
    label = label or kind.value
    if not isinstance(text, str):
        return f"the {label} must be a string, not {type(text).__name__}"
    if not text:
        return f"the {label} part is empty"
    if not text.isascii():
        return _non_ascii_why(text)
    rule = _RULES[kind]
    if len(text) > rule.max_chars:
        return f"the {label} is longer than {rule.max_chars} characters"
    if rule.pattern.fullmatch(text):
        return None
    quoted = _shown(text, MAX_SHOWN_PART_CHARS)
    if not _START_RE.match(text):
        return f'the {label} "{quoted}" must start with {_START}'
    return f'the {label} "{quoted}" has a character outside {rule.allowed}'


def check_part(kind: PartKind, text: str) -> str:
    """``text`` if it is a valid ``kind`` part; otherwise raise ``NameInvalid`` saying why."""
    why = _part_problem(kind, text)
    if why is not None:
        raise NameInvalid(_shown(text), why)
    return text


@dataclass(frozen=True)
class Name:
    """A complete, valid model name. Fields keep the typed casing; ``key`` is for comparison.

    Every instance is validated on construction, so a ``Name`` held anywhere is safe to turn
    into a URL or a path.
    """

    host: str
    namespace: str
    model: str
    tag: str
    digest: Digest | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        for kind, text in zip(
            PartKind, (self.host, self.namespace, self.model, self.tag), strict=True
        ):
            why = _part_problem(kind, text)
            if why is not None:
                raise NameInvalid(self._shown_parts(), why)
        if self.digest is not None and not isinstance(self.digest, Digest):
            raise NameInvalid(self._shown_parts(), "the digest must be a Digest")
        if self.scheme is not None and self.scheme not in SCHEMES:
            raise NameInvalid(
                self._shown_parts(), f'the scheme "{_shown(self.scheme)}" is not http or https'
            )

    def _shown_parts(self) -> str:
        # Used before the fields are known to be strings: never let the message itself fail.
        return _shown(
            "/".join(_shown(p) for p in (self.host, self.namespace, self.model, self.tag))
        )

    def __str__(self) -> str:
        text = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        return f"{text}@{self.digest}" if self.digest is not None else text

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(host, namespace, model, tag) lowercased: the identity for dicts and comparison."""
        # Parts are ASCII, so lower() is exactly Go's strings.EqualFold.
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def equal_fold(self, other: Name) -> bool:
        """Same model, ignoring case; a digest pin must match too (scheme does not count)."""
        return self.key == other.key and self.digest == other.digest

    @property
    def repository_key(self) -> tuple[str, str, str]:
        """(host, namespace, model) lowercased: the repository, for dicts and comparison."""
        return self.key[:3]

    @property
    def repository(self) -> str:
        """``namespace/model`` lowercased: the stock Docker registry accepts only lowercase."""
        return f"{self.namespace}/{self.model}".lower()

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def display_shortest(self) -> str:
        """The shortest text that parses back to this name, the way Ollama shows names."""
        text = self.model
        if self.host.lower() != DEFAULT_HOST:
            text = f"{self.host}/{self.namespace}/{text}"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            text = f"{self.namespace}/{text}"
        if self.tag.lower() != DEFAULT_TAG:
            text = f"{text}:{self.tag}"
        return f"{text}@{self.digest}" if self.digest is not None else text

    def with_tag(self, tag: str) -> Name:
        """This model with another tag; a digest pin belongs to the old tag and is dropped."""
        check_part(PartKind.TAG, tag)
        return replace(self, tag=tag, digest=None)


def parse_name(text: str) -> Name:
    """Parse ``[scheme://][[host/]namespace/]model[:tag][@sha256:<hex>]``, filling defaults.

    Raises ``NameInvalid`` with the specific reason; never any other exception.
    """
    if not isinstance(text, str):
        raise NameInvalid(_shown(text), f"a model name must be a string, not {type(text).__name__}")
    shown = _shown(text)
    if not text:
        raise NameInvalid(shown, "the name is empty")
    if not text.isascii():
        raise NameInvalid(shown, _non_ascii_why(text))

    # "@" is in no part's alphabet, so everything after the first one is the digest.
    body, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        if not digest_text:
            raise NameInvalid(shown, "the digest part is empty")
        try:
            digest = Digest.parse(digest_text)
        except DigestInvalid:
            raise NameInvalid(
                shown,
                f'the digest "{_shown(digest_text, MAX_SHOWN_PART_CHARS)}" '
                "is not sha256:<64 lowercase hex>",
            ) from None

    scheme: str | None = None
    scheme_text, sep, rest = body.partition("://")
    if sep:
        if not scheme_text:
            raise NameInvalid(shown, 'the scheme part before "://" is empty')
        if scheme_text.lower() not in SCHEMES:
            raise NameInvalid(
                shown,
                f'the scheme "{_shown(scheme_text, MAX_SHOWN_PART_CHARS)}" is not http or https',
            )
        scheme, body = scheme_text.lower(), rest

    # As Ollama's ParseNameBare: "/" is not a tag character, so a ":" after the last "/"
    # starts the tag; anything before it that has a ":" is a host with a port.
    tag: str | None = None
    if body.rfind(":") > body.rfind("/"):
        body, _, tag = body.rpartition(":")
    host: str | None = None
    namespace: str | None = None
    if "/" in body:
        body, _, model = body.rpartition("/")
        if "/" in body:
            host, _, namespace = body.rpartition("/")
        else:
            namespace = body
    else:
        model = body

    if scheme is not None and host is None:
        raise NameInvalid(shown, "a name with a scheme must spell out host/namespace/model")
    if host is not None and "/" in host:
        raise NameInvalid(shown, "a name has at most 4 parts: host/namespace/model:tag")

    for kind, part in (
        (PartKind.HOST, host),
        (PartKind.NAMESPACE, namespace),
        (PartKind.MODEL, model),
        (PartKind.TAG, tag),
    ):
        if part is None:
            continue
        why = _part_problem(kind, part)
        if why is not None:
            if kind is PartKind.NAMESPACE and host is None and any(c in part for c in ".:"):
                # "localhost:5000/model" reads as namespace/model; say how to name a host.
                why += "; a registry host must be followed by namespace/model"
            raise NameInvalid(shown, why)

    return Name(
        host=DEFAULT_HOST if host is None else host,
        namespace=DEFAULT_NAMESPACE if namespace is None else namespace,
        model=model,
        tag=DEFAULT_TAG if tag is None else tag,
        digest=digest,
        scheme=scheme,
    )


def from_parts(host: str, namespace: str, model: str, tag: str) -> Name:
    """A ``Name`` from parts already split (a FUSE path); each part is validated."""
    return Name(host=host, namespace=namespace, model=model, tag=tag)


# The widest part alphabet (host's): every name part fits it, and it excludes "/", NUL, "."
# and ".." as whole parts (they cannot start a part), and anything non-ASCII.
_PATH_PART_KIND = PartKind.HOST


def safe_join(root: str | os.PathLike[str], *parts: str) -> pathlib.Path:
    """``root/part/...`` for already-split name parts; ``NameInvalid`` if it could escape ``root``.

    Purely lexical: the cache's own symlinks are not resolved, and the filesystem is not touched.
    """
    for part in parts:
        why = _part_problem(_PATH_PART_KIND, part, "path part")
        if why is not None:
            raise NameInvalid(_shown("/".join(_shown(p) for p in parts)), why)
    path = pathlib.Path(root, *parts)
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([base, joined]) != base:
        raise NameInvalid(_shown("/".join(parts)), "the path would leave its root directory")
    return path


def _split_host_port(host: str) -> tuple[str, str | None]:
    """("host", "port") from "host:port", "[v6]:port" or "host"; port None if absent."""
    if host.startswith("["):
        inside, bracket, after = host[1:].partition("]")
        if bracket and (not after or after.startswith(":")):
            return inside, after[1:] or None
        return host, None
    if host.count(":") == 1:
        hostname, _, port = host.partition(":")
        return hostname, port
    return host, None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (optionally with ``:port``) is localhost, 127.0.0.0/8 or ::1."""
    if not isinstance(host, str):
        return False
    hostname, port = _split_host_port(host.strip())
    if port is not None and not port.isdigit():
        return False
    hostname = hostname.lower().rstrip(".")
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _matches_insecure(host: str, entry: str) -> bool:
    entry = entry.strip().lower()
    if not entry:
        return False
    host = host.lower()
    if entry == host:
        return True
    entry_name, entry_port = _split_host_port(entry)
    # An entry without a port trusts every port of that host.
    return entry_port is None and _split_host_port(host)[0] == entry_name


def scheme_for(name_or_host: Name | str, insecure_hosts: Iterable[str]) -> str:
    """The URL scheme for a registry: the one the name spelled, else http for loopback and
    hosts listed as insecure, else https."""
    if isinstance(name_or_host, Name):
        if name_or_host.scheme is not None:
            return name_or_host.scheme
        host = name_or_host.host
    else:
        host = name_or_host
    if is_loopback_host(host):
        return "http"
    if any(_matches_insecure(host, entry) for entry in insecure_hosts):
        return "http"
    return "https"
