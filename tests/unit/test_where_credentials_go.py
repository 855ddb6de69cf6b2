"""The pure decisions about where a credential may go: origins (redirects), whose credentials
a mirror gets, token realms."""

from __future__ import annotations

import pytest

from modelfs.formats.names import parse_name
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
