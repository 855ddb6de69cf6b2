"""The pure decisions about where a credential may go: origins (redirects) and token realms."""

from __future__ import annotations

import pytest

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
