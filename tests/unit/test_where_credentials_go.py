"""The pure decisions about where a credential may go: origins (redirects), whose credentials
a mirror gets, token realms."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from modelfs.errors import Unauthorized
from modelfs.formats.names import parse_name
from modelfs.registry.auth import (
    AuthConfig,
    Authenticator,
    in_clear_on_its_host,
    password_may_go,
)
from modelfs.registry.client import Registry, RegistryConfig
from modelfs.registry.config import load_config
from modelfs.registry.origins import origin_of, same_origin


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://r.example/v2/x", "https://r.example:443/other"),
        ("http://r.example/v2/x", "http://R.Example:80/"),
        ("https://127.0.0.1:5443/a", "https://127.0.0.1:5443/b?q=1"),
    ],
)
def test_same_scheme_host_and_port_is_one_origin(a: str, b: str) -> None:
    assert same_origin(a, b)


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("https://r.example/v2/x", "http://r.example/v2/x", "https to http on the same host"),
        ("https://127.0.0.1/blob", "http://127.0.0.1/blob", "https to http on loopback"),
        ("http://r.example/v2/x", "https://r.example/v2/x", "another scheme, even upgraded"),
        ("https://r.example/", "https://r.example:8443/", "another port"),
        ("https://r.example/", "https://cdn.example/", "another host"),
        ("https://r.example/", "https://r.example.evil.example/", "a longer host name"),
        ("https://user@r.example/", "https://r.example@evil.example/", "user info is not a host"),
    ],
)
def test_another_scheme_host_or_port_is_another_origin(a: str, b: str, why: str) -> None:
    assert not same_origin(a, b), why


def test_origin_fills_in_the_default_port() -> None:
    assert origin_of("https://R.example/x") == ("https", "r.example", 443)
    assert origin_of("http://r.example:8080") == ("http", "r.example", 8080)


# -- credentials = "origin": per (host, mirror endpoint) -------------------------------------


async def test_origin_credentials_are_for_the_host_whose_entry_asks_for_them(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        """
[[mirror]]
host = "a.example"
endpoints = ["http://mirror.lan:5000/"]
credentials = "origin"
[[mirror]]
host = "b.example"
endpoints = ["http://mirror.lan:5000"]
"""
    )
    file = load_config(path)
    client = Registry(
        RegistryConfig(mirrors=file.mirrors, origin_credentials=file.origin_credentials)
    )
    try:
        mirror = "http://mirror.lan:5000"
        assert client.auth_host(mirror, parse_name("a.example/x/y:1")) == "a.example"
        assert client.auth_host(mirror, parse_name("b.example/x/y:1")) == "mirror.lan:5000", (
            "a read of b.example sends the mirror b.example's credentials, which only "
            "a.example's entry asked for"
        )
        assert client.auth_host("https://b.example", parse_name("b.example/x/y:1")) == "b.example"
    finally:
        await client.aclose()


# -- token realms: where a password may go with a token request -------------------------------

ORIGIN = "https://registry.example:5000"
MIRROR = "http://mirror.lan:8080"


@pytest.mark.parametrize(
    ("realm", "given_for", "asked_by", "may", "why"),
    [
        ("https://auth.example/token", ORIGIN, ORIGIN, True, "the registry names its realm"),
        ("https://registry.example/token", ORIGIN, ORIGIN, True, "its own host, another port"),
        ("http://auth.example/token", ORIGIN, ORIGIN, False, "https password over http"),
        ("http://registry.example:5000/t", ORIGIN, ORIGIN, False, "even on its own host"),
        ("http://auth.lan/token", "http://registry.lan", "http://registry.lan", True, "http"),
        ("https://registry.example/token", ORIGIN, MIRROR, True, "a mirror, the origin's host"),
        ("https://registry.example:5001/t", ORIGIN, MIRROR, True, "its token port, by a mirror"),
        ("https://auth.example/token", ORIGIN, MIRROR, False, "a third host, named by a mirror"),
        ("https://mirror.lan/token", ORIGIN, MIRROR, False, "the mirror's own host"),
        ("https://registry.example.evil/t", ORIGIN, MIRROR, False, "a longer host name"),
        ("http://registry.example/token", ORIGIN, MIRROR, False, "by a mirror, over http"),
        ("https://auth.example/token", ORIGIN, "https://cdn.example", False, "a redirect's host"),
    ],
)
def test_where_a_password_may_go_with_a_token_request(
    realm: str, given_for: str, asked_by: str, may: bool, why: str
) -> None:
    assert password_may_go(realm, given_for, asked_by) is may, why


class RecordingRealm:
    """A token endpoint for the Authenticator: records what it was sent, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.calls.append((url, dict(headers)))
        body = {"token": "T"} if self.status == 200 else {"details": "no"}
        return self.status, json.dumps(body).encode()


def authenticator(tmp_path: Path, realm: RecordingRealm) -> Authenticator:
    docker = tmp_path / "docker.json"
    login = base64.b64encode(b"alice:pw").decode()
    docker.write_text(json.dumps({"auths": {"registry.example:5000": {"auth": login}}}))
    return Authenticator(realm, AuthConfig(key_path=tmp_path / "key", docker_config=docker))


CHALLENGE = 'Bearer realm="https://auth.example/token",service="s",scope="repository:a/b:pull"'


async def test_a_realm_a_mirror_names_elsewhere_gets_an_anonymous_request(tmp_path) -> None:
    realm = RecordingRealm()
    a = authenticator(tmp_path, realm)
    scopes = ("repository:a/b:pull",)
    value = await a.answer(
        "registry.example:5000", scopes, CHALLENGE, given_for=ORIGIN, asked_by=MIRROR
    )
    assert value == "Bearer T"
    [(url, headers)] = realm.calls
    assert headers == {}, "the origin's password went to a realm a mirror named"
    assert url.startswith("https://auth.example/token?")
    assert not (tmp_path / "key").exists(), "no signature either"


async def test_a_realm_the_registry_names_itself_gets_its_password(tmp_path) -> None:
    realm = RecordingRealm()
    a = authenticator(tmp_path, realm)
    await a.answer("registry.example:5000", ("repository:a/b:pull",), CHALLENGE, given_for=ORIGIN)
    [(_, headers)] = realm.calls
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}


async def test_a_refusal_after_withholding_the_password_says_why_not_to_log_in(tmp_path) -> None:
    a = authenticator(tmp_path, RecordingRealm(401))
    with pytest.raises(Unauthorized) as e:
        await a.answer(
            "registry.example:5000",
            ("repository:a/b:pull",),
            CHALLENGE,
            given_for=ORIGIN,
            asked_by=MIRROR,
        )
    message = str(e.value)
    assert "does not go to https://auth.example" in message and MIRROR in message
    assert "modelfs login" not in message, "logging in again would change nothing"


async def test_a_key_signature_for_an_https_registry_never_goes_over_http(tmp_path) -> None:
    realm = RecordingRealm()
    a = Authenticator(realm, AuthConfig(key_path=tmp_path / "key"))
    challenge = 'Bearer realm="http://registry.ollama.ai/v2/token",service="ollama.com"'
    await a.answer(
        "registry.ollama.ai",
        ("repository:library/m:pull",),
        challenge,
        given_for="https://registry.ollama.ai",
    )
    [(_, headers)] = realm.calls
    assert headers == {}, "a signature with the Ollama key went over plain http"
    assert not (tmp_path / "key").exists()


def test_basic_credentials_of_an_https_registry_are_not_offered_to_http(tmp_path) -> None:
    a = authenticator(tmp_path, RecordingRealm())
    a._basic["registry.example:5000"] = "Basic x"
    scopes = ("repository:a/b:pull",)
    assert a.header("registry.example:5000", scopes, given_for=ORIGIN) == "Basic x"
    assert a.header("registry.example:5000", scopes, given_for=ORIGIN, to=MIRROR) is None
    https_mirror = "https://mirror.lan"
    assert a.header("registry.example:5000", scopes, given_for=ORIGIN, to=https_mirror)


@pytest.mark.parametrize(
    ("given_for", "to", "in_clear"),
    [
        ("https://r.example", "http://r.example", True),
        ("https://r.example:5000", "http://r.example:5000", True),
        ("https://r.example", "http://r.example:8080", True),
        ("https://r.example", "https://r.example", False),
        ("http://r.lan", "http://r.lan", False),
        ("https://r.example", "http://mirror.lan", False),  # a mirror: its own rule
    ],
)
def test_the_registrys_own_host_in_clear(given_for: str, to: str, in_clear: bool) -> None:
    assert in_clear_on_its_host(given_for, to) is in_clear
