"""Answers to a registry's 401 challenges: Ollama key signatures, Docker tokens, Basic.

What this module owns:
- parsing ``WWW-Authenticate`` challenges;
- the Ollama key (``~/.ollama/id_ed25519``, OpenSSH ed25519, created 0600 with its ``.pub``
  the way Ollama creates it) and the signed token request Ollama's registry expects;
- credentials from ``~/.docker/config.json`` (``auths``: base64 ``auth`` or
  ``username``/``password``), written back by ``modelfs login``;
- a token cache per (registry, scope) until ``expires_in``.

It makes no HTTP requests itself: the registry client hands it a ``TokenFetch`` so that
HTTP-library errors stay translated in one place (``registry``).

Where credentials go: Basic credentials for a registry go to that registry and to the
token realm it names itself (as ``docker login`` credentials do), never over plain http when
they were given for https. A realm named by anyone else (a mirror passing the registry's
challenges through, ``credentials = "origin"``) gets them only on the registry's own host.
An Ollama key signature goes only to a realm on the registry's own host; a realm elsewhere
gets an anonymous request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfs.errors import ModelfsError, Unauthorized, registry_words
from modelfs.registry.origins import origin_of, same_origin

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

# Docker's token spec: a token without expires_in lives 60 s.
DEFAULT_TOKEN_SECONDS = 60.0
# Renew a little before the registry would refuse the token.
TOKEN_MARGIN_SECONDS = 5.0
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = ("docker.io", "registry-1.docker.io", "index.docker.io")

# (url, headers) -> (status, body); raises ModelfsError on network failure.
TokenFetch = Callable[[str, dict[str, str]], Awaitable[tuple[int, bytes]]]


# -- challenges -------------------------------------------------------------------------------

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lowercased
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(s for s in self.params.get("scope", "").split(" ") if s)


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` header, or None if there is none."""
    if not header:
        return None
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    if not scheme or "=" in scheme:
        return None
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            break
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme.lower(), params)


def merge_scopes(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """One ``repository:NAME:a,b`` scope per resource, with the union of the actions asked."""
    merged: dict[str, list[str]] = {}
    for group in groups:
        for scope in group:
            resource, _, actions = scope.rpartition(":")
            if not resource:
                merged.setdefault(scope, [])
                continue
            have = merged.setdefault(resource, [])
            have += [a for a in actions.split(",") if a and a not in have]
    return tuple(f"{r}:{','.join(sorted(a))}" if a else r for r, a in merged.items())


# -- the Ollama key -----------------------------------------------------------------------------


def default_key_path() -> Path:
    env = os.environ.get("MODELFS_KEY")
    if env:
        return Path(env)
    return Path.home() / ".ollama" / "id_ed25519"


class OllamaKey:
    """An ed25519 key in OpenSSH format; created (0600, with ``.pub``) on first use.
    cryptography is imported only then: a registry that is not Ollama's never needs it, and
    the import costs every command that speaks to a registry ~10 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: Ed25519PrivateKey | None = None

    def _load(self) -> Ed25519PrivateKey:
        if self._key is not None:
            return self._key
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._key = self._create()
            return self._key
        except OSError as e:
            raise Unauthorized(f"cannot read the key {self.path}: {e.strerror}") from None
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise Unauthorized(
                f"the key {self.path} is not an unencrypted OpenSSH ed25519 key ({e})"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise Unauthorized(f"the key {self.path} is not an ed25519 key")
        self._key = key
        return key

    def _create(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private)
            pub = self.path.with_name(self.path.name + ".pub")
            pub.write_text(_public_line(key) + "\n")
        except FileExistsError:
            # Another process created it first: use theirs.
            return self._load_existing()
        except OSError as e:
            raise Unauthorized(f"cannot create the key {self.path}: {e.strerror}") from None
        log.info("created the key %s", self.path)
        return key

    def _load_existing(self) -> Ed25519PrivateKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = None
        key = serialization.load_ssh_private_key(self.path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise Unauthorized(f"the key {self.path} is not an ed25519 key")
        return key

    @property
    def public_line(self) -> str:
        """``ssh-ed25519 AAAA…``, the line to add to an account on the registry."""
        return _public_line(self._load())

    def sign(self, data: bytes) -> str:
        """``<public key wire form, base64>:<signature, base64>`` — Ollama's Authorization value."""
        key = self._load()
        wire = _public_line(key).split(" ")[1]
        return f"{wire}:{base64.b64encode(key.sign(data)).decode()}"


def _public_line(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def ollama_token_url(
    challenge: Challenge, nonce: str | None = None, now: float | None = None
) -> str:
    """The realm with service, scope, ts and nonce — the URL Ollama signs and requests."""
    parts = urllib.parse.urlsplit(challenge.realm)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query.append(("service", challenge.params.get("service", "")))
    query += [("scope", s) for s in challenge.params.get("scope", "").split(" ")]
    query.append(("ts", str(int(now if now is not None else time.time()))))
    query.append(("nonce", nonce or base64.urlsafe_b64encode(secrets.token_bytes(16)).decode()))
    # Go's url.Values.Encode: keys sorted, values in the order added.
    query.sort(key=lambda kv: kv[0])
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def ollama_signed_data(url: str) -> bytes:
    empty = hashlib.sha256(b"").hexdigest().encode()
    return f"GET,{url},{base64.b64encode(empty).decode()}".encode()


# -- Docker credentials ---------------------------------------------------------------------------


def docker_config_path() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    base = Path(env) if env else Path.home() / ".docker"
    return base / "config.json"


def _auth_keys(host: str) -> list[str]:
    """The ``auths`` keys that may hold ``host``'s credentials, the one login writes first."""
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host in DOCKER_HUB_HOSTS:
        keys.insert(0, DOCKER_HUB_KEY)
    return keys


def _auth_key_form(key: str) -> str:
    return key.lower().rstrip("/")


def docker_credentials(host: str, path: Path | None = None) -> tuple[str, str] | None:
    """(username, password) for ``host`` from the Docker config, if it has them."""
    path = path or docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = [_auth_key_form(k) for k in _auth_keys(host.lower())]
    # The key login writes wins over older forms of the same host, whatever the file's order.
    matching = sorted(
        (kv for kv in auths.items() if _auth_key_form(kv[0]) in wanted),
        key=lambda kv: wanted.index(_auth_key_form(kv[0])),
    )
    for key, entry in matching:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring the credentials for %s in %s: not base64", key, path)
                continue
            if sep:
                return user, password
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def store_docker_credentials(host: str, user: str, password: str, path: Path | None = None) -> Path:
    """Write credentials for ``host`` the way ``docker login`` does: base64 ``auth``, file 0600."""
    path = path or docker_config_path()
    doc, auths = _docker_config_for_update(path)
    key = DOCKER_HUB_KEY if host.lower() in DOCKER_HUB_HOSTS else host
    auths[key] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write_docker_config(path, doc)
    return path


def remove_docker_credentials(host: str, path: Path | None = None) -> bool:
    """Remove every ``auths`` entry that holds ``host``'s credentials, the way ``docker
    logout`` does; the rest of the file is kept. False if there were none."""
    path = path or docker_config_path()
    if not path.exists():
        return False
    doc, auths = _docker_config_for_update(path)
    wanted = {_auth_key_form(k) for k in _auth_keys(host.lower())}
    keys = [k for k in auths if _auth_key_form(k) in wanted]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write_docker_config(path, doc)
    return True


def _docker_config_for_update(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        doc = {}
    except (OSError, ValueError) as e:
        raise ModelfsError(f"cannot update {path}: {e}") from None
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise ModelfsError(f"cannot update {path}: 'auths' is not an object")
    return doc, auths


def _write_docker_config(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent="\t")
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def over_what_it_was_given_for(given_for: str, to: str) -> bool:
    """Whether a secret given for ``given_for`` (a password, a key signature) may travel to
    ``to``: not over plain http when it was given for https."""
    return origin_of(given_for)[0] != "https" or origin_of(to)[0] == "https"


def in_clear_on_its_host(given_for: str, to: str) -> bool:
    """Whether ``to`` is the host of ``given_for`` reached over plain http although its
    credentials are for https (an upload ``Location`` from a registry behind a TLS proxy that
    forgot ``X-Forwarded-Proto``): nothing of them goes there, not even a token."""
    return (
        not over_what_it_was_given_for(given_for, to)
        and origin_of(given_for)[1] == origin_of(to)[1]
    )


def password_may_go(realm: str, given_for: str, asked_by: str) -> bool:
    """Whether a password given for ``given_for`` (a registry's base URL) may go with a token
    request to ``realm``, named in a 401 from ``asked_by`` (a base URL).

    The registry itself names its token service, which may be on another host (Docker Hub's
    is auth.docker.io): the password goes there, as ``docker login`` credentials do. A realm
    named by anyone else (a mirror passing challenges through, which modelfs trusts with
    tokens but not to say where passwords go) must be on the registry's own host name. And a
    password given for https never travels over plain http."""
    if not over_what_it_was_given_for(given_for, realm):
        return False
    if same_origin(asked_by, given_for):
        return True
    return origin_of(realm)[1] == origin_of(given_for)[1]


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the authenticator ----------------------------------------------------------------------------


@dataclass
class _Token:
    header: str
    expires_monotonic: float


@dataclass
class AuthConfig:
    key_path: Path | None = None
    docker_config: Path | None = None
    # Never send stored credentials or sign with the Ollama key (other users' requests).
    anonymous: bool = False


class Authenticator:
    """Authorization headers per registry host and scope; one per Registry client."""

    def __init__(self, fetch: TokenFetch, config: AuthConfig | None = None) -> None:
        self._fetch = fetch
        self.config = config or AuthConfig()
        self.key = OllamaKey(self.config.key_path or default_key_path())
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        self._basic: dict[str, str] = {}
        # Credentials given directly (``modelfs login`` checks them before storing them).
        self.credentials: dict[str, tuple[str, str]] = {}
        # Hosts whose tokens came from a signature with the Ollama key (for the push hint).
        self.signed_hosts: set[str] = set()

    def header(
        self,
        host: str,
        scopes: tuple[str, ...],
        *,
        given_for: str | None = None,
        to: str | None = None,
    ) -> str | None:
        """The Authorization value to send now to ``to`` (a base URL; default ``given_for``,
        that of ``host``'s credentials), if any: a cached token, or Basic credentials where
        they may travel (a mirror lending the origin's gets them over https only if the
        origin is https)."""
        token = self._tokens.get((host, scopes))
        if token is not None:
            if time.monotonic() < token.expires_monotonic:
                return token.header
            del self._tokens[(host, scopes)]
        given_for = given_for or f"https://{host}"
        if not over_what_it_was_given_for(given_for, to or given_for):
            return None
        return self._basic.get(host)

    def _credentials(self, host: str) -> tuple[str, str] | None:
        if self.config.anonymous:
            return None
        return self.credentials.get(host.lower()) or docker_credentials(
            host, self.config.docker_config
        )

    def refused(self, host: str, sent: str | None) -> str | None:
        """What to say when the registry refused ``sent`` credentials after answering a challenge."""
        if sent and sent.startswith("Basic "):
            creds = self._credentials(host)
            who = f"{creds[0]!r}" if creds else "the stored user"
            where = self.config.docker_config or docker_config_path()
            return (
                f"registry {host} refused the password of {who} (from {where}); "
                f"run `modelfs login {host}`"
            )
        return None

    def forget(self, host: str, scopes: tuple[str, ...]) -> None:
        self._tokens.pop((host, scopes), None)

    async def answer(
        self,
        host: str,
        scopes: tuple[str, ...],
        www_authenticate: str | None,
        *,
        given_for: str | None = None,
        asked_by: str | None = None,
    ) -> str:
        """Get an Authorization value for a 401 with this challenge; raise Unauthorized if none.

        ``given_for``: the base URL ``host``'s credentials are for (default ``https://host``);
        ``asked_by``: the base URL whose 401 this is, when not ``given_for`` itself (a mirror
        sent the origin's credentials). They decide where a password may go (``password_may_go``).
        """
        given_for = given_for or f"https://{host}"
        asked_by = asked_by or given_for
        challenge = parse_challenge(www_authenticate)
        if challenge is None:
            raise Unauthorized(f"registry {host} refused access (401) without saying how to log in")
        if challenge.scheme == "basic":
            creds = self._credentials(host)
            if creds is None:
                raise Unauthorized(
                    f"registry {host} needs a username and password: run `modelfs login {host}`"
                )
            if not over_what_it_was_given_for(given_for, asked_by):
                raise Unauthorized(
                    f"{asked_by} asks for the password of {creds[0]!r} for {given_for}: "
                    "not sent over plain http"
                )
            value = basic_header(*creds)
            if self._basic.get(host) == value:
                raise Unauthorized(
                    f"registry {host} refused the password of {creds[0]!r} "
                    f"(from {self.config.docker_config or docker_config_path()})"
                )
            self._basic[host] = value
            return value
        if challenge.scheme == "bearer" and not challenge.realm:
            raise Unauthorized(f"registry {host} asks for a token without naming where to get it")
        if challenge.scheme != "bearer":
            raise Unauthorized(
                f"registry {host} asks for {challenge.scheme!r} authentication, "
                "which modelfs does not speak"
            )
        wanted = merge_scopes(challenge.scopes, scopes)
        value, seconds = await self._token(host, challenge, wanted, given_for, asked_by)
        self._tokens[(host, scopes)] = _Token(
            value, time.monotonic() + max(1.0, seconds - TOKEN_MARGIN_SECONDS)
        )
        return value

    async def _token(
        self,
        host: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        given_for: str,
        asked_by: str,
    ) -> tuple[str, float]:
        realm = urllib.parse.urlsplit(challenge.realm)
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise Unauthorized(f"registry {host} named an unusable token realm {challenge.realm!r}")
        creds = self._credentials(host)
        withheld = creds is not None and not password_may_go(challenge.realm, given_for, asked_by)
        if withheld:
            creds = None
        query = [("service", challenge.params.get("service", ""))]
        query += [("scope", s) for s in scopes]
        url = _with_query(challenge.realm, query)
        headers: dict[str, str] = {}
        if creds is not None:
            headers["Authorization"] = basic_header(*creds)
            how = f"the credentials of {creds[0]!r}"
        elif withheld:
            how = (
                f"no credentials (the password for {given_for} does not go to "
                f"{realm.scheme}://{realm.netloc}, named by {asked_by})"
            )
        elif (
            realm.netloc.lower() == host.lower()
            and over_what_it_was_given_for(given_for, challenge.realm)
            and not self.config.anonymous
        ):
            url = ollama_token_url(
                Challenge(challenge.scheme, {**challenge.params, "scope": " ".join(scopes)})
            )
            headers["Authorization"] = self.key.sign(ollama_signed_data(url))
            how = f"the key {self.key.path}"
            self.signed_hosts.add(host)
        elif self.config.anonymous:
            how = "no credentials (a request for another user of the mount)"
        else:
            how = f"no credentials (the token realm is on {realm.netloc}, not {host})"
        status, body = await self._fetch(url, headers)
        if status != 200:
            said = registry_words(body)
            raise Unauthorized(
                f"registry {host} refused a token for {' '.join(scopes) or 'access'} "
                f"with {how} ({status}{': ' + said if said else ''})"
                + (
                    f"; to log in: modelfs login {host}"
                    if creds is None and not headers and not withheld
                    else ""
                )
            )
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unauthorized(f"registry {host}: the token realm answered without a token")
        seconds = DEFAULT_TOKEN_SECONDS
        if isinstance(doc.get("expires_in"), int | float) and doc["expires_in"] > 0:
            seconds = float(doc["expires_in"])
        log.info("token for %s %s (%s), %.0fs", host, " ".join(scopes), how, seconds)
        return f"Bearer {token}", seconds

    def push_hint(self, host: str, namespace: str) -> str:
        """What to tell a user whose push to ``namespace`` was refused."""
        if host in self.signed_hosts:
            try:
                line = self.key.public_line
            except ModelfsError:
                line = f"the public key in {self.key.path}.pub"
            return (
                f"you are not allowed to push to {namespace!r} on {host}: "
                f"add your public key to your account there: {line}"
            )
        return f"you are not allowed to push to {namespace!r} on {host}"


def _with_query(url: str, extra: list[tuple[str, str]]) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + extra
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
