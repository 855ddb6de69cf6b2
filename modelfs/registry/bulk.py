"""The bulk path: blob range bodies read with ``http.client`` in worker threads.

Chosen by measurement (docs/architecture.md): httpx's async client reads 64 KiB at a
time and tops out near 0.7 GB/s here; ``readinto`` into a reused buffer keeps up with
curl. This module owns, for that path:
- keep-alive connections (``Pool``), through ``HTTP(S)_PROXY`` unless ``NO_PROXY`` says not;
- following redirects, never sending the registry's Authorization to another origin (scheme,
  host and port: not to another host, not to another port, not from https to http);
- reusing the final URL of a redirected blob (a presigned CDN URL) for every later range
  until it is refused (401/403/404/410) or ``REDIRECT_REUSE_SECONDS`` pass, then resolving
  it again once; one thread resolves a blob while the others wait for its answer;
- stall detection: a watchdog thread sees every request from before it is sent to the end
  of its body, and shuts down the socket of one that delivers less than the minimum rate
  over a window (silence, a trickle, headers that never end), so the worker thread blocked
  in it returns; ``abort`` does the same for every transfer at shutdown;
- redirects only to http and https;
- delivering the body in pieces.

Errors leave as ``NeedsAuth`` (a 401 from the registry itself, for ``blobreads`` to answer),
as the typed errors below, or as the ``OSError``/``http.client`` exceptions of a request: this
module catches those only to close the connection and say why a socket failed (stalled,
aborted), then re-raises them (or, reading an error status's body, goes on without it);
``translate.bulk_error`` turns the others into the modelfs error tree.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from modelfs.registry.origins import same_origin
from modelfs.registry.ranges import ArrivalSink, BlobRange, PieceSink, WholeSink

__all__ = ["ArrivalSink", "BlobRange", "PieceSink", "WholeSink"]

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
ERROR_BODY_BYTES = 16 << 10
# Presigned URLs live for hours (registry.ollama.ai: ~24 h); re-resolve well within that.
REDIRECT_REUSE_SECONDS = 3600.0
REDIRECTS_KEPT = 4096
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# A redirect target answering one of these has expired (S3/CDN presigned URLs say 403).
EXPIRED_STATUSES = (401, 403, 404, 410)
REDIRECT_SCHEMES = ("http", "https")
# Bodies are read this much at a time, so the watchdog sees progress as it happens.
READ_SLICE_BYTES = 256 << 10


_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class NeedsAuth(Exception):
    """The registry answered 401; ``challenge`` is its WWW-Authenticate header."""

    def __init__(self, challenge: str | None) -> None:
        super().__init__("401")
        self.challenge = challenge


class StatusError(Exception):
    """An error status with the first bytes of its body, for ``translate`` to translate."""

    def __init__(self, status: int, body: bytes, retry_after: str | None, url: str) -> None:
        super().__init__(f"status {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.url = url


class BodyError(Exception):
    """The body did not match the request (short, stalled, wrong range): worth a retry."""


class Aborted(BodyError):
    """Transfers were ended for shutdown: not worth a retry."""


class RedirectError(Exception):
    """A redirect without a location, or too many of them."""


@dataclass(frozen=True)
class BulkSettings:
    connect_seconds: float
    # A request that delivers less than min_bytes_per_second over stall_seconds is stalled.
    stall_seconds: float
    min_bytes_per_second: int
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


class _Transfer:
    """One request being served, as the watchdog sees it."""

    __slots__ = ("aborted", "conn", "mark", "on_bytes", "stalled", "total", "window_start")

    def __init__(self) -> None:
        self.conn: http.client.HTTPConnection | None = None
        self.total = 0  # bytes of body received (written by the worker thread only)
        self.on_bytes: ArrivalSink | None = None
        self.mark = 0  # ``total`` when the current window started (watchdog only)
        self.window_start = time.monotonic()
        self.stalled: str | None = None
        self.aborted = False

    def received(self, n: int) -> None:
        """``n`` more bytes of body arrived (worker thread)."""
        self.total += n
        if self.on_bytes is not None:
            self.on_bytes(n)

    def check(self) -> None:
        """Raise if the watchdog ended this transfer (called by the worker thread)."""
        if self.aborted:
            raise Aborted("transfer aborted: modelfs is shutting down")
        if self.stalled is not None:
            raise BodyError(f"{self.stalled}; retrying on a fresh connection")


class Watchdog:
    """Ends transfers that fall below the minimum rate, from a thread of its own.

    A worker thread blocked in ``recv`` cannot be interrupted any other way:
    ``readinto`` on a buffered response waits until its buffer is full, and a
    socket timeout never fires while a trickle sends a byte now and then.
    """

    def __init__(self, stall_seconds: float, min_bytes_per_second: int) -> None:
        self.stall_seconds = stall_seconds
        self.min_bytes = int(min_bytes_per_second * stall_seconds)
        self._lock = threading.Lock()
        self._active: set[_Transfer] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._aborted = False
        self.stalls = 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[_Transfer]:
        t = _Transfer()
        with self._lock:
            if self._stop.is_set() or self._aborted:
                raise Aborted("transfer aborted: modelfs is shutting down")
            self._active.add(t)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="modelfs-bulk-watchdog", daemon=True
                )
                self._thread.start()
        try:
            yield t
        finally:
            with self._lock:
                self._active.discard(t)

    def attach(self, t: _Transfer, conn: http.client.HTTPConnection | None) -> None:
        """The connection ``t`` now uses (None once it is closed or back in the pool)."""
        with self._lock:
            t.conn = conn
            t.mark = t.total
            t.window_start = time.monotonic()
            if t.aborted and conn is not None:
                # Aborted between taking a connection and using it: ``abort`` found none to
                # end, so this one ends now, before its request waits on a slow body.
                _shut(conn)

    def _run(self) -> None:
        tick = max(0.05, min(1.0, self.stall_seconds / 4))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                for t in self._active:
                    elapsed = now - t.window_start
                    if elapsed < self.stall_seconds or t.conn is None:
                        continue
                    got = t.total - t.mark
                    if got < self.min_bytes and t.stalled is None:
                        t.stalled = (
                            f"stalled: {got} bytes in {elapsed:.0f}s, below the minimum of "
                            f"{self.min_bytes / self.stall_seconds / 1024:.0f} KiB/s"
                        )
                        self.stalls += 1
                        _shut(t.conn)
                    t.mark = t.total
                    t.window_start = now

    def abort(self) -> None:
        """End every transfer now, and refuse new ones (shutdown): worker threads return at once."""
        with self._lock:
            self._aborted = True
            for t in self._active:
                t.aborted = True
                if t.conn is not None:
                    _shut(t.conn)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        self.abort()


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


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
        self.watchdog = Watchdog(settings.stall_seconds, settings.min_bytes_per_second)

    def close(self) -> None:
        self.watchdog.close()
        self.pool.close()

    def abort(self) -> None:
        """End every transfer in progress (their threads return with an error)."""
        self.watchdog.abort()

    def _open(
        self, url: str, headers: dict[str, str], t: _Transfer
    ) -> tuple[_Conn, http.client.HTTPResponse]:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        c = self.pool.get(parts.scheme, parts.hostname or "", port)
        target = url if c.absolute else parts.path + (f"?{parts.query}" if parts.query else "")
        hdrs = {**headers, **c.extra_headers}
        self.watchdog.attach(t, c.conn)
        try:
            try:
                c.conn.request("GET", target, headers=hdrs)
                resp = c.conn.getresponse()
            except (OSError, http.client.HTTPException):
                c.conn.close()
                t.check()
                if not c.reused:
                    raise
                # A kept-alive connection the server already closed: one fresh try, not a failure.
                c.conn.request("GET", target, headers=hdrs)
                resp = c.conn.getresponse()
        except BaseException:
            self._close(c, t)
            t.check()
            raise
        if c.conn.sock is not None:
            c.conn.sock.settimeout(self.settings.stall_seconds)
        return c, resp

    def _close(self, c: _Conn, t: _Transfer) -> None:
        # Detach first: the watchdog must never shut down a socket number reused elsewhere.
        self.watchdog.attach(t, None)
        c.conn.close()

    def _release(
        self, c: _Conn, resp: http.client.HTTPResponse, reusable: bool, t: _Transfer
    ) -> None:
        if reusable and not resp.will_close and t.stalled is None and not t.aborted:
            self.watchdog.attach(t, None)
            self.pool.put(c)
        else:
            self._close(c, t)

    def _follow(
        self, url: str, headers: dict[str, str], t: _Transfer
    ) -> tuple[str, _Conn, http.client.HTTPResponse]:
        """GET ``url``, following redirects; the final URL with its response (headers read)."""
        origin = url
        headers = dict(headers)
        for _hop in range(MAX_REDIRECTS + 1):
            c, resp = self._open(url, headers, t)
            if resp.status not in REDIRECT_STATUSES:
                return url, c, resp
            location = resp.getheader("Location")
            try:
                resp.read(ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                self._close(c, t)
                t.check()
                raise
            self._release(c, resp, True, t)
            if not location:
                raise RedirectError(f"redirect ({resp.status}) without a location")
            url = urllib.parse.urljoin(url, location)
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            if scheme not in REDIRECT_SCHEMES:
                # Not a network blob: a registry sending us to file:, gopher: … is refused.
                raise RedirectError(f"redirect to a {scheme or 'schemeless'} URL refused")
            if not same_origin(url, origin):
                # Credentials are for the registry, never for the host it sends us to, nor for
                # its plain-http side or another of its ports.
                headers.pop("Authorization", None)
        raise RedirectError(f"more than {MAX_REDIRECTS} redirects")

    def get_range(self, url: str, authorization: str | None, rng: BlobRange) -> None:
        """One HTTP request: stream bytes ``[rng.start, rng.end)`` of the blob at ``url`` to
        ``rng.on_piece`` (``rng.name`` and ``rng.digest`` are what ``url`` names).

        A server that answers the range with the whole blob (200: a pull-through mirror that
        has not stored it yet copies it from its origin for every such request) is asked
        through ``on_whole(length)`` whether the whole body is wanted; if so, every byte of
        it goes to ``on_piece`` from offset 0, else only ``[start, end)``. ``on_bytes(n)`` is
        told of body bytes as they arrive, a piece being up to ``piece_bytes`` long.
        """
        with self.watchdog.watching() as t:
            t.on_bytes = rng.on_bytes
            try:
                self._get_range(t, url, authorization, rng)
            except (OSError, http.client.HTTPException):
                # A socket the watchdog shut down fails in whatever way it fails: say why.
                t.check()
                raise
            except (StatusError, BodyError, RedirectError, NeedsAuth):
                # Met as the transfer was ended for shutdown (an error status whose body was
                # cut short, say): the shutdown is why, not the server, so no mirror is
                # blamed for it and nothing is tried again.
                if t.aborted:
                    raise Aborted("transfer aborted: modelfs is shutting down") from None
                raise

    def _get_range(self, t: _Transfer, url: str, authorization: str | None, rng: BlobRange) -> None:
        headers = {
            "User-Agent": self.settings.user_agent,
            "Range": f"bytes={rng.start}-{rng.end - 1}",
            "Accept-Encoding": "identity",
        }
        with_auth = dict(headers)
        if authorization:
            with_auth["Authorization"] = authorization
        origin = url  # the registry's blob URL: its origin is what the Authorization is for
        refreshed = False
        while True:
            final = self.redirects.get(url)
            if final is None:
                lock = self.redirects.resolving(url)
                with lock:
                    final = self.redirects.get(url)
                    if final is None:
                        target, c, resp = self._follow(url, with_auth, t)
                        if resp.status < 400:
                            self.redirects.put(url, target)
                if final is None:
                    # This thread resolved it: its response is the one to read.
                    self._consume(c, resp, target, origin, rng, t)
                    return
            same = same_origin(final, origin)
            target, c, resp = self._follow(final, with_auth if same else headers, t)
            if not same and resp.status in EXPIRED_STATUSES and not refreshed:
                # The presigned URL expired: resolve the blob at the registry once more.
                with contextlib.suppress(OSError, http.client.HTTPException):
                    resp.read(ERROR_BODY_BYTES)
                self._release(c, resp, False, t)
                self.redirects.drop(url, final)
                log.info("%s: the redirect target answered %d; resolving again", url, resp.status)
                refreshed = True
                continue
            if target != final and resp.status < 400:
                # The registry redirects now where it did not before: remember where to.
                self.redirects.put(url, target)
            self._consume(c, resp, target, origin, rng, t)
            return

    def _consume(
        self,
        c: _Conn,
        resp: http.client.HTTPResponse,
        url: str,
        origin: str,
        rng: BlobRange,
        t: _Transfer,
    ) -> None:
        reusable = False
        try:
            reusable = self._read_body(resp, url, origin, rng, t)
        finally:
            self._release(c, resp, reusable, t)

    def _read_whole(
        self, resp: http.client.HTTPResponse, piece_bytes: int, on_piece: PieceSink, t: _Transfer
    ) -> None:
        """Deliver a whole-blob body from offset 0 to its end, in pieces of ``piece_bytes``."""
        buf = bytearray(piece_bytes)
        view = memoryview(buf)
        offset = 0
        while True:
            filled = 0
            while filled < piece_bytes:
                got = resp.readinto(view[filled : min(piece_bytes, filled + READ_SLICE_BYTES)])
                if not got:
                    break
                filled += got
                t.received(got)
            if filled:
                on_piece(offset, view[:filled])
                offset += filled
            if filled < piece_bytes:
                break
        if resp.length:  # Content-Length said more than came
            t.check()
            raise BodyError(f"whole body ended at byte {offset}, {resp.length} short")

    def _read_body(
        self,
        resp: http.client.HTTPResponse,
        url: str,
        origin: str,
        rng: BlobRange,
        t: _Transfer,
    ) -> bool:
        """Deliver the body; return True if the connection can be reused."""
        start, end, piece_bytes, on_piece = rng.start, rng.end, rng.piece_bytes, rng.on_piece
        if resp.status >= 400:
            try:
                body = resp.read(ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                body = b""
            if resp.status == 401 and same_origin(url, origin):
                raise NeedsAuth(resp.getheader("WWW-Authenticate"))
            raise StatusError(resp.status, body, resp.getheader("Retry-After"), url)
        # A 200 that says which range it carries is a 206 by another name (old Dragonfly
        # daemons answered ranges that way): never mistake it for the whole blob.
        if resp.status == 206 or (resp.status == 200 and resp.getheader("Content-Range")):
            m = _CONTENT_RANGE_RE.fullmatch((resp.getheader("Content-Range") or "").strip())
            if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
                raise BodyError(
                    f"asked for bytes {start}-{end - 1}, got {resp.getheader('Content-Range')!r}"
                )
            skip = 0
        elif resp.status == 200:
            # The server ignored Range and sends the whole blob: all of it, if it is wanted
            # (a mirror filling its cache costs its origin a whole copy for each request).
            if rng.on_whole is not None and rng.on_whole(resp.length):
                self._read_whole(resp, piece_bytes, on_piece, t)
                return resp.length == 0
            skip = start
        else:
            raise StatusError(resp.status, b"", None, url)
        length = end - start
        buf = bytearray(min(piece_bytes, max(length, 1)))
        view = memoryview(buf)
        while skip:
            got = resp.readinto(view[: min(len(buf), skip, READ_SLICE_BYTES)])
            if not got:
                t.check()
                raise BodyError(f"body ended before byte {start}")
            skip -= got
            t.received(got)
        offset = start
        while offset < end:
            want = min(piece_bytes, end - offset)
            filled = 0
            while filled < want:
                got = resp.readinto(view[filled : min(want, filled + READ_SLICE_BYTES)])
                if not got:
                    t.check()
                    raise BodyError(f"body ended at byte {offset + filled} of {start}-{end - 1}")
                filled += got
                t.received(got)
            on_piece(offset, view[:want])
            offset += want
        # Whatever is left (a server sending more than asked) is not ours to read.
        return resp.status in (200, 206) and resp.length == 0 and skip == 0
