"""The bulk path: blob range bodies read with ``http.client`` in worker threads.

Chosen by measurement (docs/architecture.md): httpx's async client reads 64 KiB at a
time and tops out near 0.7 GB/s here; ``readinto`` into a reused buffer keeps up with
curl. This module owns, for that path:
- keep-alive connections (``Pool``), through ``HTTP(S)_PROXY`` unless ``NO_PROXY`` says not;
- following redirects, never sending the registry's Authorization to another host;
- reusing the final URL of a redirected blob (a presigned CDN URL) for every later range
  until it is refused (401/403/404/410) or ``REDIRECT_REUSE_SECONDS`` pass, then resolving
  it again once; one thread resolves a blob while the others wait for its answer;
- stall detection and delivering the body in pieces.

Errors leave as ``NeedsAuth`` (a 401 from the registry itself, for ``registry`` to answer)
or as raw ``OSError``/``http.client`` exceptions and status answers that ``registry``
translates into the modelfs error tree.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
ERROR_BODY_BYTES = 16 << 10
# Presigned URLs live for hours (registry.ollama.ai: ~24 h); re-resolve well within that.
REDIRECT_REUSE_SECONDS = 3600.0
REDIRECTS_KEPT = 4096
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# A redirect target answering one of these has expired (S3/CDN presigned URLs say 403).
EXPIRED_STATUSES = (401, 403, 404, 410)

# One piece callback per chunk-sized piece of a range body, called in the worker thread.
PieceSink = Callable[[int, memoryview], None]

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class NeedsAuth(Exception):
    """The registry answered 401; ``challenge`` is its WWW-Authenticate header."""

    def __init__(self, challenge: str | None) -> None:
        super().__init__("401")
        self.challenge = challenge


class StatusError(Exception):
    """An error status with the first bytes of its body, for ``registry`` to translate."""

    def __init__(self, status: int, body: bytes, retry_after: str | None, url: str) -> None:
        super().__init__(f"status {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.url = url


class BodyError(Exception):
    """The body did not match the request (short, stalled, wrong range): worth a retry."""


class RedirectError(Exception):
    """A redirect without a location, or too many of them."""


@dataclass(frozen=True)
class BulkSettings:
    connect_seconds: float
    stall_seconds: float
    stall_min_bytes: int
    user_agent: str
    ssl_context_factory: Callable[[], ssl.SSLContext]


def _proxy_for(scheme: str, host: str, port: int) -> urllib.parse.SplitResult | None:
    """The proxy from the environment for this origin, unless NO_PROXY exempts it."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme)
    # With the port, as httpx does: NO_PROXY entries may be host or host:port.
    if not proxy or urllib.request.proxy_bypass(f"{host}:{port}"):
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    return urllib.parse.urlsplit(proxy)


def _proxy_authorization(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    user = urllib.parse.unquote(proxy.username)
    password = urllib.parse.unquote(proxy.password or "")
    return {
        "Proxy-Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    }


@dataclass
class _Conn:
    key: tuple[str, str, int]
    conn: http.client.HTTPConnection
    reused: bool
    # Through a forwarding (not tunnelling) proxy the request line carries the whole URL.
    absolute: bool
    extra_headers: dict[str, str]


@dataclass
class Pool:
    """Idle keep-alive connections, shared by worker threads."""

    settings: BulkSettings
    lock: threading.Lock = field(default_factory=threading.Lock)
    idle: dict[tuple[str, str, int], list[_Conn]] = field(default_factory=dict)
    _ssl: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = self.settings.ssl_context_factory()
        return self._ssl

    def get(self, scheme: str, host: str, port: int) -> _Conn:
        key = (scheme, host, port)
        with self.lock:
            conns = self.idle.get(key)
            if conns:
                c = conns.pop()
                c.reused = True
                return c
        timeout = self.settings.connect_seconds
        proxy = _proxy_for(scheme, host, port)
        if proxy is None:
            if scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=self._context()
                )
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            return _Conn(key, conn, False, False, {})
        proxy_port = proxy.port or (443 if proxy.scheme == "https" else 80)
        proxy_host = proxy.hostname or ""
        auth = _proxy_authorization(proxy)
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                proxy_host, proxy_port, timeout=timeout, context=self._context()
            )
            conn.set_tunnel(host, port, headers=auth or None)
            return _Conn(key, conn, False, False, {})
        conn = http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeout)
        return _Conn(key, conn, False, True, auth)

    def put(self, c: _Conn) -> None:
        with self.lock:
            self.idle.setdefault(c.key, []).append(c)

    def close(self) -> None:
        with self.lock:
            conns = [c for cs in self.idle.values() for c in cs]
            self.idle.clear()
        for c in conns:
            c.conn.close()


class _Progress:
    """Stall detection for one body: enough bytes in every window of ``stall_seconds``."""

    def __init__(self, settings: BulkSettings, what: str) -> None:
        self.window_seconds = settings.stall_seconds
        self.min_bytes = settings.stall_min_bytes
        self.what = what
        self.window_start = time.monotonic()
        self.window_bytes = 0

    def add(self, n: int) -> None:
        self.window_bytes += n
        now = time.monotonic()
        if now - self.window_start >= self.window_seconds:
            if self.window_bytes < self.min_bytes:
                raise BodyError(
                    f"stalled ({self.window_bytes} bytes in {now - self.window_start:.0f}s); "
                    "retrying on a fresh connection"
                )
            self.window_start = now
            self.window_bytes = 0


class Redirects:
    """Where each blob URL last led: its final URL, until refused or too old."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._final: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._resolving: dict[str, threading.Lock] = {}
        # How many times each blob URL was resolved at the registry (for logs and tests).
        self.resolved: dict[str, int] = {}

    def get(self, url: str) -> str | None:
        with self._lock:
            hit = self._final.get(url)
            if hit is None:
                return None
            if time.monotonic() > hit[1]:
                del self._final[url]
                return None
            return hit[0]

    def put(self, url: str, final: str) -> None:
        with self._lock:
            self._final[url] = (final, time.monotonic() + REDIRECT_REUSE_SECONDS)
            self._final.move_to_end(url)
            while len(self._final) > REDIRECTS_KEPT:
                self._final.popitem(last=False)
            self.resolved[url] = self.resolved.get(url, 0) + 1

    def drop(self, url: str, final: str) -> None:
        with self._lock:
            hit = self._final.get(url)
            if hit is not None and hit[0] == final:
                del self._final[url]

    def resolving(self, url: str) -> threading.Lock:
        with self._lock:
            lock = self._resolving.get(url)
            if lock is None:
                if len(self._resolving) > REDIRECTS_KEPT:
                    self._resolving = {k: v for k, v in self._resolving.items() if v.locked()}
                lock = self._resolving[url] = threading.Lock()
            return lock


class BulkClient:
    """Range reads of blob URLs (see the module docstring)."""

    def __init__(self, settings: BulkSettings) -> None:
        self.settings = settings
        self.pool = Pool(settings)
        self.redirects = Redirects()

    def close(self) -> None:
        self.pool.close()

    def _open(self, url: str, headers: dict[str, str]) -> tuple[_Conn, http.client.HTTPResponse]:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        c = self.pool.get(parts.scheme, parts.hostname or "", port)
        target = url if c.absolute else parts.path + (f"?{parts.query}" if parts.query else "")
        hdrs = {**headers, **c.extra_headers}
        try:
            c.conn.request("GET", target, headers=hdrs)
            resp = c.conn.getresponse()
        except (OSError, http.client.HTTPException):
            c.conn.close()
            if not c.reused:
                raise
            # A kept-alive connection the server already closed: one fresh try, not a failure.
            try:
                c.conn.request("GET", target, headers=hdrs)
                resp = c.conn.getresponse()
            except BaseException:
                c.conn.close()
                raise
        except BaseException:
            c.conn.close()
            raise
        if c.conn.sock is not None:
            c.conn.sock.settimeout(self.settings.stall_seconds)
        return c, resp

    def _release(self, c: _Conn, resp: http.client.HTTPResponse, reusable: bool) -> None:
        if reusable and not resp.will_close:
            self.pool.put(c)
        else:
            c.conn.close()

    def _follow(
        self, url: str, headers: dict[str, str]
    ) -> tuple[str, _Conn, http.client.HTTPResponse]:
        """GET ``url``, following redirects; the final URL with its response (headers read)."""
        origin = urllib.parse.urlsplit(url).netloc
        headers = dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            c, resp = self._open(url, headers)
            if resp.status not in REDIRECT_STATUSES:
                return url, c, resp
            location = resp.getheader("Location")
            try:
                resp.read(ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                c.conn.close()
                raise
            self._release(c, resp, True)
            if not location:
                raise RedirectError(f"redirect ({resp.status}) without a location")
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).netloc != origin:
                # Credentials are for the registry, never for the host it sends us to.
                headers.pop("Authorization", None)
        raise RedirectError(f"more than {MAX_REDIRECTS} redirects")

    def read_range(
        self,
        url: str,
        authorization: str | None,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
    ) -> None:
        """Stream bytes ``[start, end)`` of the blob at ``url`` to ``on_piece``."""
        headers = {
            "User-Agent": self.settings.user_agent,
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
        }
        with_auth = dict(headers)
        if authorization:
            with_auth["Authorization"] = authorization
        origin = urllib.parse.urlsplit(url).netloc
        refreshed = False
        while True:
            final = self.redirects.get(url)
            if final is None:
                lock = self.redirects.resolving(url)
                with lock:
                    final = self.redirects.get(url)
                    if final is None:
                        target, c, resp = self._follow(url, with_auth)
                        if resp.status < 400:
                            self.redirects.put(url, target)
                if final is None:
                    # This thread resolved it: its response is the one to read.
                    self._consume(c, resp, target, origin, start, end, piece_bytes, on_piece)
                    return
            same_host = urllib.parse.urlsplit(final).netloc == origin
            target, c, resp = self._follow(final, with_auth if same_host else headers)
            if not same_host and resp.status in EXPIRED_STATUSES and not refreshed:
                # The presigned URL expired: resolve the blob at the registry once more.
                with contextlib.suppress(OSError, http.client.HTTPException):
                    resp.read(ERROR_BODY_BYTES)
                self._release(c, resp, False)
                self.redirects.drop(url, final)
                log.info("%s: the redirect target answered %d; resolving again", url, resp.status)
                refreshed = True
                continue
            if target != final and resp.status < 400:
                # The registry redirects now where it did not before: remember where to.
                self.redirects.put(url, target)
            self._consume(c, resp, target, origin, start, end, piece_bytes, on_piece)
            return

    def _consume(
        self,
        c: _Conn,
        resp: http.client.HTTPResponse,
        url: str,
        origin: str,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
    ) -> None:
        reusable = False
        try:
            reusable = self._read_body(resp, url, origin, start, end, piece_bytes, on_piece)
        finally:
            self._release(c, resp, reusable)

    def _read_body(
        self,
        resp: http.client.HTTPResponse,
        url: str,
        origin: str,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
    ) -> bool:
        """Deliver the body; return True if the connection can be reused."""
        if resp.status >= 400:
            try:
                body = resp.read(ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                body = b""
            if resp.status == 401 and urllib.parse.urlsplit(url).netloc == origin:
                raise NeedsAuth(resp.getheader("WWW-Authenticate"))
            raise StatusError(resp.status, body, resp.getheader("Retry-After"), url)
        if resp.status == 206:
            m = _CONTENT_RANGE_RE.fullmatch((resp.getheader("Content-Range") or "").strip())
            if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
                raise BodyError(
                    f"asked for bytes {start}-{end - 1}, got {resp.getheader('Content-Range')!r}"
                )
            skip = 0
        elif resp.status == 200:
            # The server ignored Range and sends the whole blob: skip to our start.
            skip = start
        else:
            raise StatusError(resp.status, b"", None, url)
        length = end - start
        buf = bytearray(min(piece_bytes, max(length, 1)))
        view = memoryview(buf)
        progress = _Progress(self.settings, url)
        while skip:
            got = resp.readinto(view[: min(len(buf), skip)])
            if not got:
                raise BodyError(f"body ended before byte {start}")
            skip -= got
            progress.add(got)
        offset = start
        while offset < end:
            want = min(piece_bytes, end - offset)
            filled = 0
            while filled < want:
                got = resp.readinto(view[filled:want])
                if not got:
                    raise BodyError(f"body ended at byte {offset + filled} of {start}-{end - 1}")
                filled += got
                progress.add(got)
            on_piece(offset, view[:want])
            offset += want
        # Whatever is left (a server sending more than asked) is not ours to read.
        return resp.status == 206 and resp.length == 0
