"""Origins: the (scheme, host, port) a credential is given for, and where it may go.

A password or token given for ``https://registry:443`` belongs to that origin: not to
``http://registry:80`` (the same host name, read by anyone on the path), nor to another port
of it, nor to a host a redirect names. The same host name is not the same origin; comparing
netloc text misses all of that (``https://h`` and ``http://h`` have the same netloc).
"""

from __future__ import annotations

import urllib.parse

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    """``(scheme, host, port)`` of ``url``, lowercased, with the scheme's default port filled in."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


def same_origin(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` have the same scheme, host and port."""
    return origin_of(a) == origin_of(b)


def netloc(url: str) -> str:
    """``host[:port]`` of ``url``, lowercased: whose credentials a request carries."""
    return urllib.parse.urlsplit(url).netloc.lower()


def base_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what a credential is given for, or a 401 came from."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def kept_on_redirect(url: str, to: str) -> bool:
    """Whether the control client (httpx) keeps a request's Authorization when ``url``
    redirects it to ``to``: on the same origin, and on the upgrade of a host from http's
    default port to https's; anywhere else it is dropped."""
    if same_origin(url, to):
        return True
    (scheme, host, port), (to_scheme, to_host, to_port) = origin_of(url), origin_of(to)
    return host == to_host and (scheme, port, to_scheme, to_port) == ("http", 80, "https", 443)
