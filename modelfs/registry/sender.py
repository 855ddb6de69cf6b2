"""Sending a control request to a registry with its credentials (httpx).

``Sender`` owns the httpx client (and the ones a reconfiguration retired, closed with it),
the TLS context, and the ``Authenticator``: every request carries the Authorization it holds
for the host and scopes; a 401 is answered once (a token, a signature, Basic credentials:
one answer for all the requests that met it) and the request sent again. Failures become the
modelfs error tree through ``translate``. ``read_body`` is the one bounded reader of an
answer's body: documents, tokens and error bodies are all read through it.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import trio

from modelfs.errors import RegistryError, ShuttingDown, Transient, Unauthorized
from modelfs.flight import KeyedLock
from modelfs.formats.names import Name
from modelfs.registry.auth import AuthConfig, Authenticator, in_clear_on_its_host
from modelfs.registry.origins import base_of, kept_on_redirect, netloc
from modelfs.registry.settings import RegistryConfig
from modelfs.registry.translate import HTTP_ERRORS, status_error, translate

ERROR_BODY_BYTES = 16 << 10
TOKEN_BODY_BYTES = 64 << 10


def pull_scopes(name: Name) -> tuple[str, ...]:
    return (f"repository:{name.repository}:pull",)


def push_scopes(name: Name, source: Name | None = None) -> tuple[str, ...]:
    scopes = [f"repository:{name.repository}:pull,push"]
    if source is not None and source.repository != name.repository:
        scopes.append(f"repository:{source.repository}:pull")
    return tuple(scopes)


def delete_scopes(name: Name) -> tuple[str, ...]:
    return (f"repository:{name.repository}:delete",)


async def read_body(
    r: httpx.Response, enough: int, *, raw: bool = False, into: bytearray | None = None
) -> bytes:
    """``r``'s body, read until it ends or at least ``enough`` bytes are in (the rest is left
    unread: ask for one byte more than a document may have to tell a document that has too
    many). ``raw``: the bytes as sent, without undoing a Content-Encoding. ``into``: where the
    bytes collect, which keeps those that arrived when the read fails."""
    body = bytearray() if into is None else into
    parts = r.aiter_raw() if raw else r.aiter_bytes()
    async with contextlib.aclosing(parts):  # closed now, also when left before the end
        async for part in parts:
            body += part
            if len(body) >= enough:
                break
    return bytes(body)


def ssl_context(config: RegistryConfig) -> ssl.SSLContext:
    """The TLS context of ``config``'s registries. ``ca_file`` is read now, so a file that
    does not read fails at start or at a reload, not at the first request; the system's
    trust store only at the first TLS connection (``SystemTrustContext``)."""
    if not config.ca_file:
        return SystemTrustContext()
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise RegistryError(f"cannot use the CA file {config.ca_file}: {e}") from None


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps none. A registry's API needs no cookies (docker's and
    containerd's clients keep none), and a session cookie is a credential that the cookie
    rules send to its host on any port and, without ``Secure``, over plain http: where a
    redirect already leaves the Authorization behind."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class SystemTrustContext(ssl.SSLContext):
    """``ssl.create_default_context()``, whose trust store (the system's, or SSL_CERT_FILE's
    or SSL_CERT_DIR's) is read when the first TLS connection is wrapped: reading it costs a
    command tens of milliseconds, which one that speaks only plain http (a loopback registry)
    need not spend. Wrapped from worker threads too (blob transfers): read once, under a lock."""

    def __new__(cls) -> SystemTrustContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        super().__init__()
        # PROTOCOL_TLS_CLIENT already requires a certificate that matches the host name;
        # the rest create_default_context sets (tests/unit/test_startup.py compares them).
        if sys.version_info >= (3, 13):
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        self._trust_lock = threading.Lock()
        self._trusted = False
        keylog = os.environ.get("SSLKEYLOGFILE")  # as create_default_context honours it
        if keylog and not sys.flags.ignore_environment:
            self.keylog_filename = keylog

    def _trust(self) -> None:
        with self._trust_lock:
            if not self._trusted:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._trusted = True

    def wrap_socket(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._trust()
        return super().wrap_bio(*args, **kwargs)


class Sender:
    """Control requests (manifests, HEAD, uploads, deletes, tokens) with auth, for one
    registry client; ``aclose`` it."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self.ssl = ssl_context(config)
        self.client = self._new_client()
        self._retired: list[httpx.AsyncClient] = []
        self.auth = self._new_auth()
        self._auth_locks: KeyedLock[tuple[str, tuple[str, ...]]] = KeyedLock()
        # Control requests in flight (``abortable``), and whether ``abort`` ended them all.
        self._in_flight: set[trio.CancelScope] = set()
        self._aborted = False

    @contextlib.contextmanager
    def abortable(self, what: str) -> Iterator[None]:
        """A control request (and its body) that ``abort`` ends: it raises ``ShuttingDown``,
        never a failure of the registry, and the cancellation goes no further."""
        if self._aborted:
            raise ShuttingDown(f"{what}: not asked: modelfs is shutting down")
        scope = trio.CancelScope()
        self._in_flight.add(scope)
        try:
            with scope:
                yield
        finally:
            self._in_flight.discard(scope)
        if scope.cancelled_caught:
            raise ShuttingDown(f"{what}: ended: modelfs is shutting down")

    def abort(self) -> None:
        """End every control request in flight, and refuse new ones (shutdown): a lookup
        waiting on a registry that does not answer answers now, not at its deadline."""
        self._aborted = True
        for scope in self._in_flight:
            scope.cancel()

    async def aclose(self) -> None:
        for client in (*self._retired, self.client):
            await client.aclose()

    def reconfigure(self, config: RegistryConfig) -> None:
        """New TLS settings, a new httpx client and a new authenticator (cached tokens
        dropped, stored credentials read again at the next challenge); requests in flight
        finish on the old client, closed with this sender."""
        self.config = config
        self.ssl = ssl_context(config)
        self._retired.append(self.client)
        self.client = self._new_client()
        self.auth = self._new_auth()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={"User-Agent": self.config.user_agent},
            timeout=httpx.Timeout(self.config.stall_seconds, connect=self.config.connect_seconds),
            follow_redirects=True,
            verify=self.ssl,
            trust_env=True,
            cookies=no_cookies(),
        )

    def _new_auth(self) -> Authenticator:
        return Authenticator(
            self._fetch_token,
            AuthConfig(
                key_path=self.config.key_path,
                docker_config=self.config.docker_config,
                anonymous=self.config.anonymous,
            ),
        )

    # -- authentication ---------------------------------------------------------------------

    async def _fetch_token(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        what = f"token from {netloc(url)}"
        with self.abortable(what), trio.move_on_after(self.config.control_seconds):
            return await self._fetch_token_once(url, headers, what)
        raise Transient(f"{what}: no whole answer in {self.config.control_seconds:.0f}s")

    async def _fetch_token_once(
        self, url: str, headers: dict[str, str], what: str
    ) -> tuple[int, bytes]:
        try:
            async with self.client.stream("GET", url, headers=headers) as r:
                body = await read_body(r, TOKEN_BODY_BYTES + 1)
                if len(body) > TOKEN_BODY_BYTES:
                    raise Unauthorized(f"{what}: the answer is too large")
                return r.status_code, body
        except HTTP_ERRORS as e:
            raise translate(e, what, netloc(url)) from None

    async def answer(
        self,
        host: str,
        scopes: tuple[str, ...],
        sent: str | None,
        challenge: str | None,
        *,
        given_for: str,
        asked_by: str,
    ) -> None:
        """Get credentials for a 401 (from ``asked_by``, for credentials given for
        ``given_for``: see ``Authenticator.answer``); concurrent requests that met it share
        one answer."""
        async with self._auth_locks.hold((host, scopes)):
            now = self.auth.header(host, scopes, given_for=given_for, to=asked_by)
            if now is not None and now != sent:
                return  # another task already answered this challenge
            await self.auth.answer(host, scopes, challenge, given_for=given_for, asked_by=asked_by)

    # -- requests -------------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        what: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        given_for: str | None = None,
    ) -> httpx.Response:
        """One control request with auth, answering one 401. The response is streamed:
        the caller reads or closes it. ``given_for``: the base URL whose credentials it
        carries (by default that of ``url``)."""
        given_for = given_for or base_of(url)
        host = netloc(given_for)
        in_clear = in_clear_on_its_host(given_for, url)
        for attempt in range(2):
            sent = (
                None
                if in_clear
                else self.auth.header(host, scopes, given_for=given_for, to=base_of(url))
            )
            hdrs = dict(headers or {})
            if sent:
                hdrs["Authorization"] = sent
            request = self.client.build_request(method, url, headers=hdrs, content=content)
            try:
                r = await self.client.send(request, stream=True)
            except HTTP_ERRORS as e:
                raise translate(e, what, host) from None
            if r.status_code != 401:
                return r
            if in_clear:
                await r.aclose()
                raise Unauthorized(
                    f"{what}: {base_of(url)} asks for credentials over plain http; those of "
                    f"{host} are for {given_for}, and are not sent there",
                    401,
                )
            if attempt:
                answered_by = base_of(str(r.url))
                if sent and not kept_on_redirect(url, answered_by):
                    # What was sent stayed behind at the redirect: no answer can reach there.
                    await r.aclose()
                    raise Unauthorized(
                        f"{what}: {netloc(url)} redirected the request to {answered_by}, which "
                        f"asks for credentials; those for {given_for} are not sent there",
                        401,
                    )
                refused = self.auth.refused(host, sent)
                if refused is None:
                    return r
                await r.aclose()
                raise Unauthorized(f"{what}: {refused}", 401)
            challenge = r.headers.get("WWW-Authenticate")
            await r.aclose()
            # Who asked: the server that answered 401, which a redirect may have made another.
            await self.answer(
                host, scopes, sent, challenge, given_for=given_for, asked_by=base_of(str(r.url))
            )
            if content is not None and not isinstance(content, bytes):
                # A streamed body cannot be sent twice: the caller starts over with the new token.
                raise Transient(f"{what}: the registry asked for credentials again; retrying")
        raise AssertionError("unreachable")

    async def raise_for(self, r: httpx.Response, what: str) -> None:
        """Raise the error an error status of ``r`` means, with the registry's own words
        from the start of its body; nothing for a success."""
        if r.status_code < 400:
            return
        body = bytearray()
        try:
            await read_body(r, ERROR_BODY_BYTES, into=body)
        except (httpx.HTTPError, OSError):
            pass  # the words that arrived are enough
        finally:
            await r.aclose()
        raise status_error(r.status_code, what, bytes(body), r.headers.get("Retry-After"))

    async def closed(self, r: httpx.Response) -> httpx.Response:
        """``r`` read to its end and closed (an answer whose status and headers are all)."""
        await r.aread()
        await r.aclose()
        return r
