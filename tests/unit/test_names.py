"""modelfs.formats.names: Ollama's name rules, defaults, case folding, safe paths, http-vs-https."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs.errors import NameInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    Name,
    PartKind,
    check_part,
    from_parts,
    is_loopback_host,
    parse_name,
    safe_join,
    scheme_for,
)

# Never created: safe_join is lexical, so a made-up root is enough.
ROOT = "/nonexistent/modelfs-test-root/manifests"
HEX = "0123456789abcdef" * 4


def inside(path: pathlib.Path, root: str) -> bool:
    base = os.path.normpath(root)
    return os.path.commonpath([base, os.path.normpath(path)]) == base


# -- defaults and splitting -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("smollm2", (DEFAULT_HOST, "library", "smollm2", "latest")),
        ("smollm2:135m", (DEFAULT_HOST, "library", "smollm2", "135m")),
        ("jmorganca/foo", (DEFAULT_HOST, "jmorganca", "foo", "latest")),
        ("127.0.0.1:5000/library/smollm2:135m", ("127.0.0.1:5000", "library", "smollm2", "135m")),
        ("localhost:5000/a/b", ("localhost:5000", "a", "b", "latest")),
        ("h/a/b:t", ("h", "a", "b", "t")),
        ("Example.COM/Eva/Mistral:7B", ("Example.COM", "Eva", "Mistral", "7B")),
        ("_/_/_:_", ("_", "_", "_", "_")),
        ("m.v1-2_x", (DEFAULT_HOST, "library", "m.v1-2_x", "latest")),
    ],
)
def test_parse_fills_defaults_and_keeps_casing(text: str, parts: tuple[str, ...]) -> None:
    name = parse_name(text)
    assert name.parts == parts
    assert name.digest is None
    assert name.scheme is None


def test_short_and_full_forms_are_the_same_name() -> None:
    assert parse_name("smollm2") == parse_name("registry.ollama.ai/library/smollm2:latest")
    assert str(parse_name("smollm2")) == "registry.ollama.ai/library/smollm2:latest"
    assert (DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG) == (
        "registry.ollama.ai",
        "library",
        "latest",
    )


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("http://127.0.0.1:5000/library/x:y", "http"),
        ("https://example.com/a/b", "https"),
        ("HTTP://example.com/a/b", "http"),
    ],
)
def test_scheme_is_kept_but_not_printed(text: str, scheme: str) -> None:
    name = parse_name(text)
    assert name.scheme == scheme
    assert "://" not in str(name)
    assert parse_name(str(name)).parts == name.parts


def test_http_scheme_parts() -> None:
    name = parse_name("http://127.0.0.1:5000/library/x:y")
    assert name.parts == ("127.0.0.1:5000", "library", "x", "y")


# -- invalid names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the name is empty"),
        ("model:", "the tag part is empty"),
        (":tag", "the model part is empty"),
        ("ns/", "the model part is empty"),
        ("a//b", "the namespace part is empty"),
        ("/model", "the namespace part is empty"),
        ("/a/b", "the host part is empty"),
        ("@", "the digest part is empty"),
        ("m@", "the digest part is empty"),
        ("m@sha256:xyz", "is not sha256:<64 lowercase hex>"),
        ("m@md5:" + HEX, "is not sha256:<64 lowercase hex>"),
        ("m@sha256:" + HEX.upper(), "is not sha256:<64 lowercase hex>"),
        ("a/b/c/d", "a name has at most 4 parts: host/namespace/model:tag"),
        ("a/b/c/d:e", "a name has at most 4 parts: host/namespace/model:tag"),
        ("x:x y", 'the tag "x y" has a character outside A-Z a-z 0-9 _ . -'),
        ("x:a/b:c", "has a character outside"),
        ("n" * 81 + "/m", "the namespace is longer than 80 characters"),
        ("m" * 81, "the model is longer than 80 characters"),
        ("m:" + "t" * 81, "the tag is longer than 80 characters"),
        ("h" * 351 + "/n/m", "the host is longer than 350 characters"),
        ("m" * 1000, "the model is longer than 80 characters"),
        ("ｍｉｓｔｒａｌ", "model names are ASCII only"),
        ("mistral\u200b", "model names are ASCII only"),
        ("a.b/m", 'the namespace "a.b" has a character outside A-Z a-z 0-9 _ -'),
        ("localhost:5000/m", "a registry host must be followed by namespace/model"),
        ("..", 'the model ".." must start with A-Z a-z 0-9 or _'),
        (".", 'the model "." must start with A-Z a-z 0-9 or _'),
        ("../../etc/passwd", "a name has at most 4 parts"),
        ("../etc/passwd", 'the host ".." must start with A-Z a-z 0-9 or _'),
        ("h/../m", 'the namespace ".." must start with'),
        ("m:..", 'the tag ".." must start with'),
        ("-m", 'the model "-m" must start with'),
        ("m\x00", 'the model "m\\x00" has a character outside'),
        ("m\n", 'the model "m\\n" has a character outside'),
        (" m", "must start with"),
        ("ftp://h/n/m", 'the scheme "ftp" is not http or https'),
        ("://h/n/m", 'the scheme part before "://" is empty'),
        ("http://n/m", "a name with a scheme must spell out host/namespace/model"),
        ("http://m", "a name with a scheme must spell out host/namespace/model"),
        ("ns_ok/mo+del", 'the model "mo+del" has a character outside'),
    ],
)
def test_invalid_names_say_why(text: str, why: str) -> None:
    with pytest.raises(NameInvalid) as info:
        parse_name(text)
    assert why in info.value.why
    assert "\n" not in str(info.value)
    assert str(info.value).isprintable()


@pytest.mark.parametrize("value", [None, 1, b"mistral", ["mistral"], object()])
def test_non_string_is_name_invalid(value: object) -> None:
    with pytest.raises(NameInvalid, match="must be a string"):
        parse_name(value)  # type: ignore[arg-type]


def test_message_name_is_one_short_printable_line() -> None:
    with pytest.raises(NameInvalid) as info:
        parse_name("a\nb\x00c\u2028" + "x" * 5000)
    assert info.value.name.isprintable()
    assert len(info.value.name) <= 200
    assert "\\n" in info.value.name
    assert "\\x00" in info.value.name


# -- comparison, display, digests -----------------------------------------------------------


def test_equal_fold_and_key_ignore_case_but_fields_keep_it() -> None:
    a = parse_name("Registry.Ollama.AI/Library/Mistral:Latest")
    b = parse_name("mistral")
    assert a != b
    assert a.equal_fold(b)
    assert b.equal_fold(a)
    assert a.key == b.key == ("registry.ollama.ai", "library", "mistral", "latest")
    assert a.model == "Mistral"
    assert str(a) == "Registry.Ollama.AI/Library/Mistral:Latest"
    assert not a.equal_fold(parse_name("mistral:7b"))
    assert {a.key: 1}[b.key] == 1


def test_repository_is_lowercase() -> None:
    assert parse_name("Host:5000/JMorganca/Foo:Bar").repository == "jmorganca/foo"
    assert parse_name("smollm2").repository == "library/smollm2"


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("registry.ollama.ai/library/mistral:latest", "mistral"),
        ("REGISTRY.ollama.ai/LIBRARY/mistral:LATEST", "mistral"),
        ("registry.ollama.ai/jmorganca/foo:latest", "jmorganca/foo"),
        ("registry.ollama.ai/library/mistral:7b", "mistral:7b"),
        ("127.0.0.1:5000/library/smollm2:135m", "127.0.0.1:5000/library/smollm2:135m"),
        ("127.0.0.1:5000/library/smollm2", "127.0.0.1:5000/library/smollm2"),
        ("mistral@sha256:" + HEX, "mistral@sha256:" + HEX),
    ],
)
def test_display_shortest(text: str, short: str) -> None:
    assert parse_name(text).display_shortest() == short


def test_digest_pin() -> None:
    name = parse_name("h:5000/ns/m:t@sha256:" + HEX)
    assert name.parts == ("h:5000", "ns", "m", "t")
    assert name.digest == Digest(HEX)
    assert str(name) == "h:5000/ns/m:t@sha256:" + HEX
    assert parse_name(str(name)) == name
    pinned = parse_name("mistral@sha256:" + HEX)
    assert pinned.tag == "latest"
    assert pinned.digest == Digest(HEX)
    # The file-name spelling is accepted and printed in registry form.
    assert parse_name("mistral@sha256-" + HEX) == pinned
    assert not pinned.equal_fold(parse_name("mistral"))


def test_with_tag_validates_and_drops_the_pin() -> None:
    pinned = parse_name("http://h/ns/m:t@sha256:" + HEX)
    retagged = pinned.with_tag("v2")
    assert retagged.parts == ("h", "ns", "m", "v2")
    assert retagged.digest is None
    assert retagged.scheme == "http"
    with pytest.raises(NameInvalid, match="tag"):
        pinned.with_tag("../x")


# -- parts ----------------------------------------------------------------------------------


def is_valid_part(kind: PartKind, text: str) -> bool:
    try:
        check_part(kind, text)
    except NameInvalid:
        return False
    return True


def test_part_checks() -> None:
    assert is_valid_part(PartKind.HOST, "127.0.0.1:5000")
    assert not is_valid_part(PartKind.NAMESPACE, "127.0.0.1:5000")
    assert is_valid_part(PartKind.MODEL, "smollm2.v1")
    assert not is_valid_part(PartKind.NAMESPACE, "a.b")
    assert is_valid_part(PartKind.TAG, "135m")
    for kind in PartKind:
        for bad in ("", ".", "..", "a/b", "a\x00", "a\n", "ａ", "x" * 400, None):
            assert not is_valid_part(kind, bad)  # type: ignore[arg-type]
    assert check_part(PartKind.TAG, "latest") == "latest"
    with pytest.raises(NameInvalid, match="the tag part is empty"):
        check_part(PartKind.TAG, "")
    with pytest.raises(NameInvalid, match="must be a string"):
        check_part(PartKind.MODEL, 3)  # type: ignore[arg-type]


def test_from_parts_validates_each_part() -> None:
    name = from_parts("127.0.0.1:5000", "Library", "SmolLM2", "135m")
    assert name.parts == ("127.0.0.1:5000", "Library", "SmolLM2", "135m")
    assert name == parse_name("127.0.0.1:5000/Library/SmolLM2:135m")
    for parts, why in [
        (("h", "..", "m", "t"), "namespace"),
        (("h", "n", "m/x", "t"), "model"),
        (("h/x", "n", "m", "t"), "host"),
        (("h", "n", "m", ""), "tag part is empty"),
        (("h", "n", "m", "t\x00"), "tag"),
    ]:
        with pytest.raises(NameInvalid, match=why):
            from_parts(*parts)
    with pytest.raises(NameInvalid, match="scheme"):
        Name("h", "n", "m", "t", scheme="ftp")
    with pytest.raises(NameInvalid, match="digest"):
        Name("h", "n", "m", "t", digest="sha256:" + HEX)  # type: ignore[arg-type]


def test_a_manifest_is_kept_under_the_name_as_typed(tmp_path: pathlib.Path) -> None:
    # Ollama's layout: manifests/host/namespace/model/tag, in the casing the name was given.
    from modelfs.blobs.blobcache import BlobCache

    cache = BlobCache(tmp_path)
    cache.prepare()
    cache.write_manifest(parse_name("127.0.0.1:5000/Library/SmolLM2:135M"), b"{}")
    cache.write_manifest(parse_name("mistral"), b"{}")
    base = tmp_path / "manifests"
    kept = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    assert kept == [
        "127.0.0.1:5000/Library/SmolLM2/135M",
        "registry.ollama.ai/library/mistral/latest",
    ]


def test_safe_join() -> None:
    path = safe_join(ROOT, "registry.ollama.ai", "library", "mistral", "latest")
    assert path == pathlib.Path(ROOT, "registry.ollama.ai/library/mistral/latest")
    assert safe_join(pathlib.Path(ROOT)) == pathlib.Path(ROOT)
    for bad in ("..", ".", "", "a/b", "/etc", "a\x00", "ü", "..."):
        with pytest.raises(NameInvalid, match=r"path part|ASCII only"):
            safe_join(ROOT, "h", bad)
    with pytest.raises(NameInvalid):
        safe_join(ROOT, None)  # type: ignore[arg-type]


# -- http or https --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.255.3.4:1", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("128.0.0.1", False),
        ("127.0.0.1:port", False),
        ("127.0.0.1.example.com", False),
        ("localhost.example.com", False),
        ("registry.ollama.ai", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("name_or_host", "insecure", "scheme"),
    [
        ("registry.ollama.ai", [], "https"),
        (parse_name("mistral"), [], "https"),
        (parse_name("127.0.0.1:5000/library/x"), [], "http"),
        (parse_name("localhost/library/x"), [], "http"),
        ("reg.lan:5000", ["reg.lan"], "http"),
        ("reg.lan", ["reg.lan"], "http"),
        ("REG.lan:5000", ["reg.LAN:5000"], "http"),
        ("reg.lan:5001", ["reg.lan:5000"], "https"),
        ("reg.lan", ["reg.lan:5000"], "https"),
        ("other.lan", ["reg.lan"], "https"),
        ("reg.lan.evil.com", ["reg.lan"], "https"),
        (parse_name("http://reg.lan/a/b"), [], "http"),
        (parse_name("https://reg.lan/a/b"), ["reg.lan"], "https"),
        (parse_name("https://127.0.0.1:5000/a/b"), [], "https"),
    ],
)
def test_scheme_for(name_or_host: Name | str, insecure: list[str], scheme: str) -> None:
    assert scheme_for(name_or_host, insecure) == scheme


# -- properties -----------------------------------------------------------------------------

hosts = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}", fullmatch=True)
namespaces = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}", fullmatch=True)
models = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}", fullmatch=True)
tags = models
digests = st.none() | st.text("0123456789abcdef", min_size=64, max_size=64).map(Digest)
names = st.builds(Name, hosts, namespaces, models, tags, digests)

# Short and long spellings a user might type, without digest (so upper-casing stays valid).
typed = st.one_of(
    models,
    st.tuples(models, tags).map(":".join),
    st.tuples(namespaces, models).map("/".join),
    st.tuples(hosts, namespaces, models, tags).map(lambda p: f"{p[0]}/{p[1]}/{p[2]}:{p[3]}"),
    st.tuples(st.sampled_from(["http", "https"]), hosts, namespaces, models).map(
        lambda p: f"{p[0]}://{p[1]}/{p[2]}/{p[3]}"
    ),
)

# Arbitrary text, plus text made mostly of the characters the parser cuts on.
hostile = st.text() | st.lists(
    st.sampled_from([*"ab._-:/@\\\x00\n ", "..", "://", "sha256:", "ａ", "İ"]), max_size=20
).map("".join)


@given(names)
def test_round_trip(name: Name) -> None:
    parsed = parse_name(str(name))
    assert parsed.parts == name.parts
    assert parsed.digest == name.digest
    assert parsed == name


@given(names)
def test_display_shortest_parses_back(name: Name) -> None:
    assert parse_name(name.display_shortest()).equal_fold(name)


@given(typed)
def test_upper_case_is_the_same_name(text: str) -> None:
    assert parse_name(text.upper()).equal_fold(parse_name(text))
    assert parse_name(text.upper()).key == parse_name(text.lower()).key


@given(hostile)
def test_arbitrary_text_is_a_name_or_name_invalid(text: str) -> None:
    try:
        name = parse_name(text)
    except NameInvalid as e:
        assert str(e).isprintable()
        assert len(e.name) <= 200
        return
    assert inside(safe_join(ROOT, *name.parts), ROOT)
    assert str(name).isascii()


@given(st.lists(hostile | st.sampled_from(["..", ".", "/", "", "a", "/etc/passwd"]), max_size=6))
def test_safe_join_never_escapes(parts: list[str]) -> None:
    try:
        path = safe_join(ROOT, *parts)
    except NameInvalid:
        return
    assert inside(path, ROOT)
