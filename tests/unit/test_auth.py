"""modelfs.registry.auth: challenges, scopes, the Ollama key and signature, Docker credentials, tokens.

Pure: no network, no registry. The token realm is a recording coroutine; every file lives
under tmp_path (HOME, DOCKER_CONFIG and MODELFS_KEY point there).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import stat
import struct
import urllib.parse
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelfs.errors import Unauthorized
from modelfs.registry import auth
from modelfs.registry.auth import (
    DOCKER_HUB_KEY,
    AuthConfig,
    Authenticator,
    Challenge,
    OllamaKey,
    docker_credentials,
    merge_scopes,
    ollama_signed_data,
    ollama_token_url,
    parse_challenge,
    store_docker_credentials,
)

HOST = "registry.example:5000"
OLLAMA_HOST = "registry.ollama.ai"


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing here may read or write the real ~/.docker or ~/.ollama."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("MODELFS_KEY", str(home / ".ollama" / "id_ed25519"))
    return home


# -- helpers ------------------------------------------------------------------------------------


def public_key_from_wire(wire_b64: str) -> Ed25519PublicKey:
    """OpenSSH wire form: uint32-length-prefixed "ssh-ed25519", then the 32-byte key."""
    wire = base64.b64decode(wire_b64, validate=True)
    (n,) = struct.unpack(">I", wire[:4])
    assert wire[4 : 4 + n] == b"ssh-ed25519"
    rest = wire[4 + n :]
    (m,) = struct.unpack(">I", rest[:4])
    assert m == 32
    assert len(rest) == 4 + 32, "trailing bytes after the key in the wire form"
    return Ed25519PublicKey.from_public_bytes(rest[4:])


def verify_ollama_authorization(value: str, data: bytes) -> str:
    """Check ``<wire>:<sig>`` signs ``data``; return the wire form."""
    wire, sep, sig = value.partition(":")
    assert sep, f"no ':' in Ollama Authorization {value!r}"
    public_key_from_wire(wire).verify(base64.b64decode(sig, validate=True), data)
    return wire


def write_docker_config(path: Path, auths: dict[str, object], **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths, **extra}))
    return path


def b64auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def query_of(url: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True)


class FakeRealm:
    """A token endpoint: records each (url, headers) and answers (status, body)."""

    def __init__(self, status: int = 200, body: object = None) -> None:
        self.status = status
        self.body = body if body is not None else {"token": "tok-1", "expires_in": 300}
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.calls.append((url, dict(headers)))
        body = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return self.status, body


class FakeTime:
    """Stands in for the ``time`` module inside modelfs.registry.auth only (trio keeps its own clock)."""

    def __init__(self) -> None:
        self.now_monotonic = 1000.0
        self.now_unix = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.now_monotonic

    def time(self) -> float:
        return self.now_unix


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(auth, "time", fake)
    return fake


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    return tmp_path / "docker" / "config.json"


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "id_ed25519"


def make_auth(realm: FakeRealm, key_path: Path, docker_config: Path) -> Authenticator:
    return Authenticator(realm, AuthConfig(key_path=key_path, docker_config=docker_config))


# -- parse_challenge ------------------------------------------------------------------------------


def test_bearer_challenge_with_quoted_scope_containing_commas():
    c = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert c == Challenge(
        "bearer",
        {
            "realm": "https://auth.example/token",
            "service": "registry.example",
            "scope": "repository:a/b:pull,push",
        },
    )
    assert c.realm == "https://auth.example/token"
    assert c.scopes == ("repository:a/b:pull,push",)


def test_bearer_challenge_spaces_around_params_and_unquoted_values():
    c = parse_challenge('  Bearer realm = "https://a/t" ,  service=reg.example , error=x  ')
    assert c is not None
    assert c.params == {"realm": "https://a/t", "service": "reg.example", "error": "x"}


def test_basic_challenge():
    c = parse_challenge('Basic realm="Registry Realm"')
    assert c == Challenge("basic", {"realm": "Registry Realm"})


@pytest.mark.parametrize("scheme", ["BEARER", "bearer", "BeArEr"])
def test_scheme_and_param_names_are_case_insensitive(scheme):
    c = parse_challenge(f'{scheme} Realm="https://a/t",SERVICE="s"')
    assert c is not None
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://a/t", "service": "s"}


def test_param_value_case_is_kept():
    c = parse_challenge('Bearer realm="https://Auth.Example/Token"')
    assert c is not None and c.realm == "https://Auth.Example/Token"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_challenge(header):
    assert parse_challenge(header) is None


def test_params_without_a_scheme_are_not_a_challenge():
    assert parse_challenge('realm="https://a/t",service="s"') is None


def test_garbage_after_the_scheme_stops_the_parse_without_raising():
    c = parse_challenge('Bearer realm="https://a/t", !!! garbage "unterminated')
    assert c is not None
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://a/t"}


def test_scheme_alone():
    assert parse_challenge("Negotiate") == Challenge("negotiate", {})


def test_escaped_quotes_are_unescaped():
    c = parse_challenge(r'Basic realm="say \"hi\" \\ there",charset="UTF-8"')
    assert c is not None
    assert c.params == {"realm": 'say "hi" \\ there', "charset": "UTF-8"}


def test_scopes_split_on_spaces():
    c = parse_challenge('Bearer realm="r",scope="repository:a:pull  repository:b:pull,push "')
    assert c is not None
    assert c.scopes == ("repository:a:pull", "repository:b:pull,push")
    assert Challenge("bearer", {}).scopes == ()


# -- merge_scopes ---------------------------------------------------------------------------------


def test_merge_scopes_unions_actions_per_resource():
    merged = merge_scopes(
        ("repository:lib/a:pull",),
        ("repository:lib/a:push", "repository:lib/b:pull"),
        ("repository:lib/a:pull,push",),
    )
    assert merged == ("repository:lib/a:pull,push", "repository:lib/b:pull")


def test_merge_scopes_actions_do_not_depend_on_order():
    a = merge_scopes(("repository:x:push",), ("repository:x:pull",))
    b = merge_scopes(("repository:x:pull",), ("repository:x:push",))
    assert a == b == ("repository:x:pull,push",)


def test_merge_scopes_keeps_non_repository_scopes():
    merged = merge_scopes(("registry:catalog:*", "openid"), ("openid", "registry:catalog:*"))
    assert merged == ("registry:catalog:*", "openid")


def test_merge_scopes_of_nothing():
    assert merge_scopes() == ()
    assert merge_scopes((), ()) == ()


# -- the Ollama token URL and signed bytes ----------------------------------------------------------


def test_ollama_token_url_sorts_keys_like_go():
    c = Challenge(
        "bearer",
        {
            "realm": "https://registry.ollama.ai/v2/token",
            "service": "ollama.com",
            "scope": "repository:library/smollm2:pull",
        },
    )
    url = ollama_token_url(c, nonce="N0nce", now=1700000000.9)
    assert url == (
        "https://registry.ollama.ai/v2/token?nonce=N0nce"
        "&scope=repository%3Alibrary%2Fsmollm2%3Apull&service=ollama.com&ts=1700000000"
    )


def test_ollama_token_url_keeps_the_realms_query_and_every_scope():
    c = Challenge(
        "bearer",
        {
            "realm": "https://reg.example/token?zeta=1&alpha=2",
            "service": "svc",
            "scope": "repository:a:pull repository:b:pull,push",
        },
    )
    url = ollama_token_url(c, nonce="n", now=5)
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "reg.example", "/token")
    keys = [k for k, _ in urllib.parse.parse_qsl(parts.query)]
    assert keys == ["alpha", "nonce", "scope", "scope", "service", "ts", "zeta"]
    q = query_of(url)
    assert q["scope"] == ["repository:a:pull", "repository:b:pull,push"]
    assert q["alpha"] == ["2"] and q["zeta"] == ["1"] and q["ts"] == ["5"]


def test_ollama_token_url_makes_a_fresh_nonce_and_uses_now(clock):
    c = Challenge("bearer", {"realm": "https://r/t", "service": "s", "scope": "x"})
    first, second = ollama_token_url(c), ollama_token_url(c)
    assert query_of(first)["nonce"] != query_of(second)["nonce"]
    assert query_of(first)["nonce"][0]
    assert query_of(first)["ts"] == [str(int(clock.now_unix))]


def test_ollama_signed_data_exact_bytes():
    url = "https://registry.ollama.ai/v2/token?nonce=n&scope=s&service=x&ts=1"
    empty_hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert hashlib.sha256(b"").hexdigest() == empty_hex
    expected = b"GET," + url.encode() + b"," + base64.b64encode(empty_hex.encode())
    assert ollama_signed_data(url) == expected
    assert expected.endswith(
        b",ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="
    )


# -- the Ollama key ---------------------------------------------------------------------------------


def test_key_is_created_0600_with_pub_and_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "id_ed25519"
    key = OllamaKey(path)
    line = key.public_line
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    pub = path.with_name("id_ed25519.pub").read_text()
    assert pub == line + "\n"
    kind, wire = line.split(" ")[:2]
    assert kind == "ssh-ed25519"
    assert wire.startswith("AAAA")
    public_key_from_wire(wire)


def test_key_is_loaded_when_present(tmp_path):
    path = tmp_path / "id_ed25519"
    line = OllamaKey(path).public_line
    before = path.read_bytes()
    again = OllamaKey(path)
    assert again.public_line == line
    assert path.read_bytes() == before


def test_sign_verifies_against_the_wire_form(tmp_path):
    key = OllamaKey(tmp_path / "id_ed25519")
    data = b"GET,https://r/t?x=1,abc"
    value = key.sign(data)
    wire = verify_ollama_authorization(value, data)
    assert wire == key.public_line.split(" ")[1]
    with pytest.raises(InvalidSignature):
        verify_ollama_authorization(value, data + b"x")


def test_default_key_path_honours_modelfs_key(private_home, monkeypatch):
    assert auth.default_key_path() == private_home / ".ollama" / "id_ed25519"
    monkeypatch.delenv("MODELFS_KEY")
    assert auth.default_key_path() == private_home / ".ollama" / "id_ed25519"
    monkeypatch.setenv("MODELFS_KEY", "/elsewhere/k")
    assert auth.default_key_path() == Path("/elsewhere/k")


def assert_one_line_naming(err: BaseException, path: Path) -> None:
    msg = str(err)
    assert str(path) in msg
    assert "\n" not in msg
    assert "Traceback" not in msg


def test_garbage_key_file_is_unauthorized(tmp_path):
    path = tmp_path / "id_ed25519"
    path.write_bytes(b"this is not a key\n")
    with pytest.raises(Unauthorized) as e:
        OllamaKey(path).sign(b"x")
    assert_one_line_naming(e.value, path)


def test_rsa_key_file_is_unauthorized(tmp_path):
    path = tmp_path / "id_ed25519"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(Unauthorized) as e:
        _ = OllamaKey(path).public_line
    assert_one_line_naming(e.value, path)
    assert "ed25519" in str(e.value)


def test_unreadable_key_path_is_unauthorized(tmp_path):
    # A directory where the key should be: unreadable even as root.
    path = tmp_path / "id_ed25519"
    path.mkdir()
    with pytest.raises(Unauthorized) as e:
        OllamaKey(path).sign(b"x")
    assert_one_line_naming(e.value, path)


def test_uncreatable_key_is_unauthorized(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "id_ed25519"  # parent is a regular file
    with pytest.raises(Unauthorized) as e:
        OllamaKey(path).sign(b"x")
    assert_one_line_naming(e.value, path)


# -- Docker credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        HOST,
        f"https://{HOST}",
        f"https://{HOST}/",
        f"https://{HOST}/v1/",
        f"http://{HOST}",
        f"https://{HOST.upper()}/v2/",
    ],
)
def test_docker_credentials_key_forms(docker_config, key):
    write_docker_config(docker_config, {key: {"auth": b64auth("ann", "pa:ss")}})
    assert docker_credentials(HOST, docker_config) == ("ann", "pa:ss")


def test_docker_credentials_username_password(docker_config):
    write_docker_config(docker_config, {HOST: {"username": "bob", "password": "pw"}})
    assert docker_credentials(HOST, docker_config) == ("bob", "pw")


def test_docker_credentials_auth_without_colon_falls_back_to_username(docker_config):
    write_docker_config(
        docker_config,
        {HOST: {"auth": base64.b64encode(b"nocolon").decode(), "username": "u", "password": "p"}},
    )
    assert docker_credentials(HOST, docker_config) == ("u", "p")


@pytest.mark.parametrize("host", ["docker.io", "registry-1.docker.io", "index.docker.io"])
def test_docker_hub_key(docker_config, host):
    write_docker_config(docker_config, {DOCKER_HUB_KEY: {"auth": b64auth("hub", "h")}})
    assert docker_credentials(host, docker_config) == ("hub", "h")


def test_docker_hub_key_is_not_used_for_other_hosts(docker_config):
    write_docker_config(docker_config, {DOCKER_HUB_KEY: {"auth": b64auth("hub", "h")}})
    assert docker_credentials(HOST, docker_config) is None


def test_docker_config_env_selects_the_file(tmp_path, monkeypatch):
    where = tmp_path / "elsewhere"
    write_docker_config(where / "config.json", {HOST: {"auth": b64auth("env", "e")}})
    monkeypatch.setenv("DOCKER_CONFIG", str(where))
    assert auth.docker_config_path() == where / "config.json"
    assert docker_credentials(HOST) == ("env", "e")


def test_docker_config_defaults_to_home(private_home, monkeypatch):
    monkeypatch.delenv("DOCKER_CONFIG")
    assert auth.docker_config_path() == private_home / ".docker" / "config.json"


def test_missing_docker_config_is_none(docker_config, caplog):
    with caplog.at_level(logging.WARNING):
        assert docker_credentials(HOST, docker_config) is None
    assert not caplog.records


def test_broken_docker_config_is_none_with_a_warning(docker_config, caplog):
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="modelfs.registry.auth"):
        assert docker_credentials(HOST, docker_config) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(docker_config) in warnings[0].getMessage()


@pytest.mark.parametrize(
    "doc",
    [
        {"auths": {"other.example": {"auth": b64auth("o", "o")}}},
        {"auths": {f"https://{HOST}.evil.example": {"auth": b64auth("o", "o")}}},
        {"auths": {HOST: "not an object"}},
        {"auths": {HOST: {}}},
        {"auths": []},
        {"credsStore": "desktop"},
        ["not", "an", "object"],
    ],
)
def test_docker_credentials_that_do_not_match(docker_config, doc):
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps(doc))
    assert docker_credentials(HOST, docker_config) is None


def test_store_creates_0600_file_in_0700_dir(tmp_path):
    path = tmp_path / "new" / "docker" / "config.json"
    assert store_docker_credentials(HOST, "ann", "pw", path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"auths": {HOST: {"auth": b64auth("ann", "pw")}}}
    assert docker_credentials(HOST, path) == ("ann", "pw")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"], "temp file left behind"


def test_store_keeps_other_entries_and_settings(docker_config):
    write_docker_config(
        docker_config,
        {"other.example": {"auth": b64auth("o", "op")}},
        credHelpers={"gcr.io": "gcloud"},
    )
    store_docker_credentials(HOST, "ann", "pw", docker_config)
    doc = json.loads(docker_config.read_text())
    assert doc["credHelpers"] == {"gcr.io": "gcloud"}
    assert docker_credentials("other.example", docker_config) == ("o", "op")
    assert docker_credentials(HOST, docker_config) == ("ann", "pw")


def test_store_overwrites_the_hosts_entry(docker_config):
    write_docker_config(docker_config, {HOST: {"username": "old", "password": "stale"}})
    store_docker_credentials(HOST, "new", "fresh", docker_config)
    assert docker_credentials(HOST, docker_config) == ("new", "fresh")
    assert json.loads(docker_config.read_text())["auths"] == {
        HOST: {"auth": b64auth("new", "fresh")}
    }


@pytest.mark.parametrize("old_key", [f"https://{HOST}", f"https://{HOST}/v1/"])
def test_login_wins_over_an_older_entry_in_another_key_form(docker_config, old_key):
    write_docker_config(docker_config, {old_key: {"auth": b64auth("old", "stale")}})
    store_docker_credentials(HOST, "new", "fresh", docker_config)
    assert docker_credentials(HOST, docker_config) == ("new", "fresh"), (
        "after `modelfs login` the stale password of an older entry was still used"
    )


def test_login_to_docker_hub_wins_over_docker_logins_entry(docker_config):
    write_docker_config(docker_config, {DOCKER_HUB_KEY: {"auth": b64auth("old", "stale")}})
    store_docker_credentials("docker.io", "new", "fresh", docker_config)
    assert docker_credentials("docker.io", docker_config) == ("new", "fresh")


def test_store_for_docker_hub_uses_docker_logins_key(docker_config):
    store_docker_credentials("docker.io", "hub", "h", docker_config)
    assert json.loads(docker_config.read_text())["auths"] == {
        DOCKER_HUB_KEY: {"auth": b64auth("hub", "h")}
    }
    assert docker_credentials("registry-1.docker.io", docker_config) == ("hub", "h")


def test_store_refuses_a_config_that_is_not_an_object(docker_config):
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text("[]")
    with pytest.raises(auth.ModelfsError) as e:
        store_docker_credentials(HOST, "a", "b", docker_config)
    assert str(docker_config) in str(e.value)
    assert docker_config.read_text() == "[]"


# -- the authenticator: Docker tokens ---------------------------------------------------------------

DOCKER_CHALLENGE = (
    'Bearer realm="https://auth.example/token",service="registry.example",'
    'scope="repository:lib/a:pull"'
)


async def test_bearer_with_docker_credentials(docker_config, key_path, clock):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    realm = FakeRealm(body={"token": "T", "expires_in": 300})
    a = make_auth(realm, key_path, docker_config)
    scopes = ("repository:lib/a:pull",)
    assert a.header(HOST, scopes) is None

    value = await a.answer(HOST, scopes, DOCKER_CHALLENGE)

    assert value == "Bearer T"
    [(url, headers)] = realm.calls
    assert url.startswith("https://auth.example/token?")
    assert query_of(url) == {"service": ["registry.example"], "scope": ["repository:lib/a:pull"]}
    assert headers == {"Authorization": "Basic " + b64auth("ann", "pw")}
    assert not key_path.exists(), "the Ollama key was created although Basic credentials exist"
    assert a.signed_hosts == set()

    # Cached per (host, scopes) until expires_in (less the margin).
    assert a.header(HOST, scopes) == "Bearer T"
    assert a.header(HOST, ("repository:lib/b:pull",)) is None
    assert a.header("other.example", scopes) is None
    clock.now_monotonic += 300 - auth.TOKEN_MARGIN_SECONDS - 1
    assert a.header(HOST, scopes) == "Bearer T"
    clock.now_monotonic += 2
    assert a.header(HOST, scopes) is None
    assert len(realm.calls) == 1


async def test_token_scopes_merge_the_challenge_and_the_request(docker_config, key_path, clock):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    realm = FakeRealm()
    a = make_auth(realm, key_path, docker_config)
    await a.answer(HOST, ("repository:lib/a:push",), DOCKER_CHALLENGE)
    [(url, _)] = realm.calls
    assert query_of(url)["scope"] == ["repository:lib/a:pull,push"]


async def test_access_token_and_default_lifetime(docker_config, key_path, clock):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    realm = FakeRealm(body={"access_token": "AT"})
    a = make_auth(realm, key_path, docker_config)
    scopes = ("repository:lib/a:pull",)
    assert await a.answer(HOST, scopes, DOCKER_CHALLENGE) == "Bearer AT"
    lifetime = auth.DEFAULT_TOKEN_SECONDS - auth.TOKEN_MARGIN_SECONDS
    assert auth.DEFAULT_TOKEN_SECONDS == 60.0
    clock.now_monotonic += lifetime - 0.5
    assert a.header(HOST, scopes) == "Bearer AT"
    clock.now_monotonic += 1
    assert a.header(HOST, scopes) is None


async def test_forget_drops_the_token(docker_config, key_path, clock):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    a = make_auth(FakeRealm(), key_path, docker_config)
    scopes = ("repository:lib/a:pull",)
    await a.answer(HOST, scopes, DOCKER_CHALLENGE)
    a.forget(HOST, scopes)
    assert a.header(HOST, scopes) is None


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]}, "bad creds"),
        (403, {"error": "denied"}, "denied"),
        (500, b"<html>\n  oops\n</html>", "<html> oops </html>"),
    ],
)
async def test_token_refused(docker_config, key_path, clock, status, body, said):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    a = make_auth(FakeRealm(status, body), key_path, docker_config)
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, ("repository:lib/a:pull",), DOCKER_CHALLENGE)
    msg = str(e.value)
    assert "\n" not in msg
    assert HOST in msg
    assert str(status) in msg
    assert said in msg
    assert "'ann'" in msg


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 5}, b"not json", b"[1]", b'"s"'])
async def test_token_answer_without_a_token(docker_config, key_path, clock, body):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    a = make_auth(FakeRealm(200, body), key_path, docker_config)
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, ("repository:lib/a:pull",), DOCKER_CHALLENGE)
    assert HOST in str(e.value)
    assert "without a token" in str(e.value)


async def test_credentials_given_directly_win(docker_config, key_path, clock):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("file", "f")}})
    realm = FakeRealm()
    a = make_auth(realm, key_path, docker_config)
    a.credentials[HOST] = ("direct", "d")
    await a.answer(HOST, ("repository:lib/a:pull",), DOCKER_CHALLENGE)
    assert realm.calls[0][1]["Authorization"] == "Basic " + b64auth("direct", "d")


# -- the authenticator: Ollama signatures -----------------------------------------------------------

OLLAMA_CHALLENGE = (
    'Bearer realm="https://registry.ollama.ai/v2/token",service="ollama.com",'
    'scope="repository:library/smollm2:pull"'
)


async def test_realm_on_the_registry_host_gets_a_signed_request(docker_config, key_path, clock):
    realm = FakeRealm(body={"token": "OT"})
    a = make_auth(realm, key_path, docker_config)
    scopes = ("repository:library/smollm2:pull",)

    assert await a.answer(OLLAMA_HOST, scopes, OLLAMA_CHALLENGE) == "Bearer OT"

    [(url, headers)] = realm.calls
    assert list(headers) == ["Authorization"]
    wire = verify_ollama_authorization(headers["Authorization"], ollama_signed_data(url))
    assert key_path.is_file(), "the key was not created under the configured path"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert wire == OllamaKey(key_path).public_line.split(" ")[1]
    q = query_of(url)
    assert sorted(q) == ["nonce", "scope", "service", "ts"]
    assert q["scope"] == ["repository:library/smollm2:pull"]
    assert q["service"] == ["ollama.com"]
    assert q["ts"] == [str(int(clock.now_unix))]
    assert url.startswith("https://registry.ollama.ai/v2/token?nonce=")
    assert a.signed_hosts == {OLLAMA_HOST}
    assert a.header(OLLAMA_HOST, scopes) == "Bearer OT"


async def test_realm_host_comparison_ignores_case(docker_config, key_path, clock):
    realm = FakeRealm()
    a = make_auth(realm, key_path, docker_config)
    await a.answer(
        "Registry.Ollama.AI",
        ("repository:x:pull",),
        OLLAMA_CHALLENGE.replace("registry", "REGISTRY"),
    )
    [(url, headers)] = realm.calls
    verify_ollama_authorization(headers["Authorization"], ollama_signed_data(url))


@pytest.mark.parametrize(
    "realm_url",
    [
        "https://auth.elsewhere.example/token",
        "https://registry.ollama.ai.evil.example/token",
        "https://registry.ollama.ai:8443/token",
    ],
)
async def test_realm_on_another_host_gets_no_signature(docker_config, key_path, clock, realm_url):
    realm = FakeRealm()
    a = make_auth(realm, key_path, docker_config)
    challenge = f'Bearer realm="{realm_url}",service="svc",scope="repository:lib/a:pull"'
    assert await a.answer(OLLAMA_HOST, ("repository:lib/a:pull",), challenge) == "Bearer tok-1"
    [(url, headers)] = realm.calls
    assert headers == {}, "an Ollama signature (or credentials) went to another host"
    assert url.startswith(realm_url + "?")
    assert query_of(url) == {"service": ["svc"], "scope": ["repository:lib/a:pull"]}
    assert not key_path.exists()
    assert a.signed_hosts == set()


async def test_anonymous_refusal_suggests_login(docker_config, key_path, clock):
    a = make_auth(FakeRealm(401, {"details": "nope"}), key_path, docker_config)
    challenge = 'Bearer realm="https://auth.elsewhere.example/token",service="s"'
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, ("repository:lib/a:pull",), challenge)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"modelfs login {HOST}" in msg
    assert "nope" in msg


async def test_signed_refusal_names_the_key(docker_config, key_path, clock):
    a = make_auth(FakeRealm(401, {"error": "unknown key"}), key_path, docker_config)
    with pytest.raises(Unauthorized) as e:
        await a.answer(OLLAMA_HOST, ("repository:library/smollm2:pull",), OLLAMA_CHALLENGE)
    assert str(key_path) in str(e.value)
    assert OLLAMA_HOST in str(e.value)


async def test_push_hint_shows_the_public_key_only_after_a_signed_token(
    docker_config, key_path, clock
):
    a = make_auth(FakeRealm(), key_path, docker_config)
    before = a.push_hint(OLLAMA_HOST, "me")
    assert "ssh-ed25519" not in before
    assert "'me'" in before and OLLAMA_HOST in before
    assert not key_path.exists(), "push_hint created a key"

    await a.answer(OLLAMA_HOST, ("repository:me/m:push",), OLLAMA_CHALLENGE)

    after = a.push_hint(OLLAMA_HOST, "me")
    assert OllamaKey(key_path).public_line in after
    assert "ssh-ed25519" not in a.push_hint("other.example", "me")


# -- the authenticator: Basic and the rest ----------------------------------------------------------


async def test_basic_with_credentials_then_wrong_password(docker_config, key_path):
    write_docker_config(docker_config, {HOST: {"auth": b64auth("ann", "pw")}})
    realm = FakeRealm()
    a = make_auth(realm, key_path, docker_config)
    value = await a.answer(HOST, (), 'Basic realm="Registry"')
    assert value == "Basic " + b64auth("ann", "pw")
    assert a.header(HOST, ("repository:any:pull",)) == value
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, (), 'Basic realm="Registry"')
    msg = str(e.value)
    assert HOST in msg and "'ann'" in msg and "\n" not in msg
    assert str(docker_config) in msg
    assert realm.calls == []


async def test_basic_without_credentials(docker_config, key_path):
    a = make_auth(FakeRealm(), key_path, docker_config)
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, (), 'Basic realm="Registry"')
    assert f"modelfs login {HOST}" in str(e.value)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ('Negotiate realm="x"', "'negotiate' authentication, which modelfs does not speak"),
        ('Digest realm="x",nonce="y"', "'digest' authentication, which modelfs does not speak"),
        ('Bearer service="no realm"', "without naming where to get it"),
        ('Bearer realm="ftp://auth.example/token"', "unusable token realm"),
        ('Bearer realm="/relative/token"', "unusable token realm"),
    ],
)
async def test_challenges_modelfs_cannot_answer(docker_config, key_path, header, why):
    realm = FakeRealm()
    a = make_auth(realm, key_path, docker_config)
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, (), header)
    assert HOST in str(e.value)
    assert why in str(e.value)
    assert realm.calls == []


@pytest.mark.parametrize("header", [None, ""])
async def test_401_without_a_challenge(docker_config, key_path, header):
    a = make_auth(FakeRealm(), key_path, docker_config)
    with pytest.raises(Unauthorized) as e:
        await a.answer(HOST, (), header)
    assert HOST in str(e.value)
