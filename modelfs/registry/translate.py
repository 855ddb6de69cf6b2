"""The one place where what HTTP libraries raise, and what registries answer with an error
status, becomes the modelfs error tree (``modelfs.errors``): a TLS certificate nobody vouches
for, a proxy or host that cannot be reached, a timeout, a stall, a status with the registry's
own words and its ``Retry-After``, and the typed errors of the bulk path (``bulk``).

The control path (httpx) catches ``HTTP_ERRORS`` around each request and translates here.
The bulk path (``bulk``, ``http.client`` in worker threads) catches library exceptions only to
close its connection and say why a socket failed (stalled, aborted), and re-raises them; the
blob reader (``blobreads``) translates them here, with bulk's own errors.
"""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime

import httpx

from modelfs.errors import (
    ModelfsError,
    ModelNotFound,
    RegistryError,
    ShuttingDown,
    Transient,
    Unauthorized,
    registry_words,
)
from modelfs.registry.bulk import Aborted, BodyError, RedirectError, StatusError
from modelfs.registry.origins import netloc

# What a control request through httpx can raise that is the network's doing.
# StreamConsumed: a redirect (or a second request) of a request whose body was streamed.
HTTP_ERRORS = (httpx.HTTPError, httpx.StreamConsumed, OSError, ssl.SSLError)


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def status_error(
    status: int, what: str, body: bytes, retry_after_header: str | None
) -> ModelfsError:
    """The modelfs error an error status means (``retry_after_header``: its Retry-After)."""
    said = registry_words(body)
    detail = f": {said}" if said else ""
    if status in (401, 403):
        return Unauthorized(f"{what}: registry refused access ({status}){detail}", status)
    if status == 407:
        return RegistryError(
            f"{what}: the proxy asks for credentials (407): give them in the proxy URL "
            "(http://user:password@proxy:port)",
            status,
        )
    if status == 412:
        return RegistryError(f"{what}: the registry refused this client (412){detail}", status)
    if status == 429 or status >= 500:
        return Transient(
            f"{what}: registry answered {status}{detail}", retry_after(retry_after_header)
        )
    return RegistryError(f"{what}: registry answered {status}{detail}", status)


def _cert_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def translate(exc: BaseException, what: str, host: str = "") -> ModelfsError:
    """The modelfs error an exception of httpx, http.client, ssl or the socket means, for
    ``what`` ("manifest of NAME") at ``host``."""
    cert = _cert_failure(exc)
    if cert is not None or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = cert.verify_message if cert is not None else "certificate verify failed"
        return RegistryError(
            f"{what}: cannot verify the TLS certificate of {host or 'the registry'} ({reason}); "
            "give its CA with --ca-file or SSL_CERT_FILE"
        )
    if isinstance(exc, ssl.SSLError):
        return RegistryError(f"{what}: TLS with {host or 'the registry'} failed ({_reason(exc)})")
    if isinstance(exc, httpx.TimeoutException):
        return Transient(f"{what}: timed out")
    if isinstance(exc, httpx.ConnectError):
        via = _proxy_of(host)
        target = f"the proxy {via} for {host}" if via else (host or "the registry")
        return Transient(f"{what}: cannot connect to {target} ({_reason(exc)})")
    if isinstance(exc, httpx.UnsupportedProtocol):
        # A redirect to file:, gopher: …: not a network blob, and no retry will make it one.
        return RegistryError(f"{what}: redirected to an unsupported URL scheme ({_reason(exc)})")
    if isinstance(exc, httpx.StreamConsumed):
        # The body went to the first URL already; no retry will send it to the second.
        where = f"{host} " if host else ""
        return RegistryError(
            f"{what}: {where}redirected a request whose body was already sent; "
            "modelfs does not send an upload twice"
        )
    if isinstance(exc, httpx.TooManyRedirects):
        # A loop, or a chain no registry needs: no retry will end it.
        where = f" by {host}" if host else ""
        return RegistryError(f"{what}: redirected too many times{where} (a redirect loop?)")
    if isinstance(exc, httpx.TransportError):
        return Transient(f"{what}: connection failed ({_reason(exc)})")
    if isinstance(exc, TimeoutError):
        return Transient(f"{what}: stalled (no data for the stall timeout)")
    if isinstance(exc, OSError | http.client.HTTPException):
        return Transient(f"{what}: connection failed ({_reason(exc)})")
    return RegistryError(f"{what}: {type(exc).__name__}")


def _proxy_of(host: str) -> str | None:
    """The proxy (from the environment) that requests to ``host`` go through, if any."""
    if not host:
        return None
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if urllib.request.proxy_bypass(host) or urllib.request.proxy_bypass(bare):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("http") or proxies.get("all")
    if not proxy:
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}").netloc.rsplit(
        "@", 1
    )[-1]


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:160]


def bulk_error(exc: BaseException, what: str, host: str) -> ModelfsError:
    """The modelfs error a failed range read of the bulk path means: its typed errors (an
    error status, a cut or stalled body, a refused redirect, an abort at shutdown) and the
    ``OSError``/``http.client`` exceptions it re-raises. ``host``: the host asked."""
    if isinstance(exc, StatusError):
        if exc.status == 404:
            return ModelNotFound(f"{what}: not found on {host}")
        where = "" if netloc(exc.url) == host else f" (at {netloc(exc.url)})"
        return status_error(exc.status, what + where, exc.body, exc.retry_after)
    if isinstance(exc, Aborted):
        return ShuttingDown(f"{what}: {exc}")
    if isinstance(exc, BodyError):
        return Transient(f"{what}: {exc}")
    if isinstance(exc, RedirectError):
        return RegistryError(f"{what}: {exc}")
    return translate(exc, what, host)
