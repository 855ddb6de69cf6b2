"""Whose credentials a URL a registry hands out (an upload session's ``Location``) carries:
the registry's own on its host and port, whatever way the URL spells them; none of them
elsewhere (``Endpoints.handed_out_given_for``, then the sender's plain-http rule). And where
a redirect of a control request keeps its Authorization (``origins.kept_on_redirect``)."""

from __future__ import annotations

import urllib.parse

import pytest

from modelfs.errors import UsageError
from modelfs.formats.names import parse_name
from modelfs.registry.auth import in_clear_on_its_host
from modelfs.registry.config import load_config
from modelfs.registry.documents import _page_elsewhere
from modelfs.registry.mirrors import Endpoints
from modelfs.registry.origins import kept_on_redirect
from modelfs.registry.settings import RegistryConfig

HTTPS = Endpoints(RegistryConfig(tls_hosts=("registry.example",)))
NAME = parse_name("registry.example/library/weights:latest")


@pytest.mark.parametrize(
    "url",
    [
        "https://registry.example/v2/library/weights/blobs/uploads/1",
        "https://REGISTRY.example/v2/library/weights/blobs/uploads/1",
        # The default port spelled out is the same port (some proxies write it).
        "https://registry.example:443/v2/library/weights/blobs/uploads/1",
    ],
)
def test_a_session_on_the_registrys_own_origin_carries_its_credentials(url: str) -> None:
    given_for = HTTPS.handed_out_given_for(NAME, url)
    assert given_for == "https://registry.example"
    assert not in_clear_on_its_host(given_for, url)


@pytest.mark.parametrize(
    "url",
    [
        "http://registry.example/v2/library/weights/blobs/uploads/1",
        "http://registry.example:443/v2/library/weights/blobs/uploads/1",
    ],
)
def test_a_session_over_plain_http_on_its_host_carries_nothing(url: str) -> None:
    """The registry's host and port (or its host and http's port) over plain http: its
    credentials are for https, so nothing of them goes there, not even a token."""
    given_for = HTTPS.handed_out_given_for(NAME, url)
    assert given_for is not None and in_clear_on_its_host(given_for, url)


@pytest.mark.parametrize(
    "url",
    [
        "https://registry.example:5000/v2/library/weights/blobs/uploads/1",
        "https://storage.example/v2/library/weights/blobs/uploads/1",
        "https://alice@registry.example.evil/upload",
    ],
)
def test_a_session_on_another_port_or_host_carries_none_of_the_registrys(url: str) -> None:
    assert HTTPS.handed_out_given_for(NAME, url) is None


@pytest.mark.parametrize(
    ("url", "to", "kept"),
    [
        ("https://r.example/v2/x", "https://r.example:443/v2/y", True),
        ("http://r.example/v2/x", "https://r.example/v2/x", True),  # :80 to :443
        ("http://r.example:5000/v2/x", "https://r.example:5000/v2/x", False),
        ("https://r.example/v2/x", "http://r.example/v2/x", False),
        ("https://r.example/v2/x", "https://r.example:5000/v2/x", False),
        ("https://r.example/v2/x", "https://cdn.example/v2/x", False),
    ],
)
def test_a_redirect_keeps_the_authorization_on_its_origin_or_an_upgrade_to_443(
    url: str, to: str, kept: bool
) -> None:
    assert kept_on_redirect(url, to) is kept


def test_a_mirror_url_with_a_password_in_it_is_refused_without_repeating_it(tmp_path) -> None:
    """A mirror endpoint written ``https://user:password@mirror``: modelfs would print and log
    that URL (a mirror that fails is named in the log), password and all, and send it by rules
    of its own; the configuration is refused, saying where credentials go instead."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[[mirror]]\nhost = "registry.example"\n'
        'endpoints = ["https://mia:m-s3cret@mirror.example"]\n'
    )
    with pytest.raises(UsageError) as refused:
        load_config(path)
    assert "m-s3cret" not in str(refused.value)
    assert "modelfs login mirror.example" in str(refused.value), refused.value


@pytest.mark.parametrize(
    ("next_url", "why"),
    [
        ("/v2/r/tags/list?last=a", None),
        ("https://registry.example:443/v2/r/tags/list?last=a", None),
        ("http://registry.example:443/v2/r/tags/list?last=a", "over http, not https"),
        ("http://registry.example/v2/r/tags/list?last=a", "another host or port"),
        ("https://registry.example:5000/v2/r/tags/list?last=a", "another host or port"),
        ("https://elsewhere.example/v2/r/tags/list?last=a", "another host or port"),
    ],
)
def test_a_tag_lists_next_page_is_followed_only_on_the_registrys_origin(
    next_url: str, why: str | None
) -> None:
    url = "https://registry.example/v2/r/tags/list"
    said = _page_elsewhere(url, urllib.parse.urljoin(url, next_url), NAME)
    assert said is None if why is None else why in (said or ""), said
