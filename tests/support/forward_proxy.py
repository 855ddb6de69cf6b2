"""A forward HTTP proxy for tests: what ``HTTP_PROXY``/``HTTPS_PROXY`` point a client at.

Unlike ``support.proxy`` (a reverse proxy in front of one registry), this one is what a
corporate proxy is: it takes absolute-form requests (``GET http://host:port/path HTTP/1.1``)
and forwards them to whatever origin they name, and it opens ``CONNECT host:port`` tunnels
for https. Status, headers and body pass through unchanged (redirects are not followed).

    proxy = ForwardProxy(credentials=("user", "pw")).start()   # credentials: optional
    ... HTTP_PROXY=proxy.url (or proxy.url_with_credentials) ...
    proxy.requests   # [ProxyRequest(method, target, had_proxy_authorization), ...]
    proxy.stop()

It runs in the test's own process (a thread per connection), so it is not for tests that
page-fault on a mount from the test process (see ``support.proxy`` for why).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import select
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import NamedTuple

PIECE_BYTES = 64 << 10
UPSTREAM_SECONDS = 30.0
# How often a tunnel looks up from its sockets to see whether the proxy is stopping.
POLL_SECONDS = 0.2
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class ProxyRequest(NamedTuple):
    method: str
    # The request target as sent: an absolute URL, or host:port for CONNECT.
    target: str
    had_proxy_authorization: bool


def _hop_by_hop(headers: http.client.HTTPMessage | list[tuple[str, str]]) -> set[str]:
    items = headers.items() if isinstance(headers, http.client.HTTPMessage) else headers
    names = set(HOP_BY_HOP)
    for k, v in items:
        if k.lower() == "connection":
            names.update(t.strip().lower() for t in v.split(",") if t.strip())
    return names


class _Server(http.server.ThreadingHTTPServer):
    # Handler threads are joined by server_close (block_on_close), after stop() has shut
    # every socket they could be blocked on.
    daemon_threads = False
    block_on_close = True

    def __init__(self, proxy: ForwardProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self.proxy._track(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.proxy._untrack(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up mid-body and stop() shuts sockets under live handlers: not news.
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    # -- entry points

    def do_CONNECT(self) -> None:
        if not self._admit():
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection(
                (host.strip("[]"), int(port)), timeout=UPSTREAM_SECONDS
            )
        except (OSError, ValueError):
            self._plain(502, b"cannot connect upstream\n", close=True)
            return
        proxy = self.server.proxy
        proxy._track(upstream)
        try:
            self.send_response_only(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            self._pump(self.connection, upstream)
        finally:
            proxy._untrack(upstream)
            upstream.close()
        self.close_connection = True

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- pieces

    def _admit(self) -> bool:
        """Record the request; answer 407 unless it carries the right proxy credentials."""
        proxy = self.server.proxy
        given = self.headers.get("Proxy-Authorization")
        proxy._record(ProxyRequest(self.command, self.path, given is not None))
        if proxy.credentials is None or given == proxy.expected_authorization:
            return True
        self._plain(
            407,
            b"proxy authentication required\n",
            close=True,
            headers={"Proxy-Authenticate": 'Basic realm="modelfs-test-proxy"'},
        )
        return False

    def _plain(
        self, status: int, body: bytes, *, close: bool, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response_only(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if close:
            # The request body (if any) was not read: this connection cannot carry another.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _request_body(self) -> Iterator[bytes] | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        return self._counted_body(length)

    def _counted_body(self, length: int) -> Iterator[bytes]:
        left = length
        while left:
            piece = self.rfile.read(min(PIECE_BYTES, left))
            if not piece:
                raise ConnectionError("the client's request body ended early")
            left -= len(piece)
            yield piece

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                piece = self.rfile.read(min(PIECE_BYTES, left))
                if not piece:
                    raise ConnectionError("the client's request body ended early")
                left -= len(piece)
                yield piece
            self.rfile.readline()

    def _forward(self) -> None:
        if not self._admit():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            self._plain(400, b"a forward proxy wants absolute-form http:// targets\n", close=True)
            return
        port = url.port or 80
        target = url.path or "/"
        if url.query:
            target += f"?{url.query}"
        drop = _hop_by_hop(self.headers) | {"content-length"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
        body = self._request_body()
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if body is not None and not chunked:
            headers["Content-Length"] = self.headers["Content-Length"]
        proxy = self.server.proxy
        up = http.client.HTTPConnection(url.hostname, port, timeout=UPSTREAM_SECONDS)
        try:
            try:
                up.connect()
                assert up.sock is not None
                proxy._track(up.sock)
                up.request(self.command, target, body=body, headers=headers, encode_chunked=chunked)
                resp = up.getresponse()
            except (OSError, http.client.HTTPException):
                self._plain(502, b"upstream failed\n", close=True)
                return
            self._relay(resp)
        finally:
            if up.sock is not None:
                proxy._untrack(up.sock)
            up.close()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Send the upstream answer on: same status, headers and body bytes."""
        raw = resp.getheaders()
        drop = _hop_by_hop(raw)
        bodiless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = resp.getheader("Content-Length")
        chunk_out = not bodiless and length is None and resp.chunked
        until_close = not bodiless and length is None and not resp.chunked
        self.send_response_only(resp.status, resp.reason)
        for k, v in raw:
            if k.lower() not in drop:
                self.send_header(k, v)
        if chunk_out:
            self.send_header("Transfer-Encoding", "chunked")
        if until_close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if bodiless:
            self.wfile.flush()
            return
        while piece := resp.read1(PIECE_BYTES):
            if chunk_out:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
        if chunk_out:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copy bytes both ways until both sides have finished sending (or the proxy stops)."""
        proxy = self.server.proxy
        peer = {a: b, b: a}
        open_ = {a, b}
        for s in open_:
            s.settimeout(None)
        while open_ and not proxy._stopping.is_set():
            readable, _, _ = select.select(list(open_), [], [], POLL_SECONDS)
            for s in readable:
                try:
                    data = s.recv(PIECE_BYTES)
                except OSError:
                    data = b""
                if data:
                    try:
                        peer[s].sendall(data)
                    except OSError:
                        return
                    continue
                open_.discard(s)
                with contextlib.suppress(OSError):
                    peer[s].shutdown(socket.SHUT_WR)


class ForwardProxy:
    """The proxy, serving from a thread of the test process; ``stop`` closes everything."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.requests: list[ProxyRequest] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def expected_authorization(self) -> str | None:
        if self.credentials is None:
            return None
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        return f"Basic {token}"

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        assert self.credentials is not None
        user, password = (urllib.parse.quote(c, safe="") for c in self.credentials)
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"forward-proxy-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        assert self._thread is not None
        self._thread.join()
        with self._lock:
            live = list(self._sockets)
        for s in live:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        # Closes the listening socket and joins every handler thread.
        self._server.server_close()
        self._server = None
        self._thread = None

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- for the handlers

    def _record(self, r: ProxyRequest) -> None:
        with self._lock:
            self.requests.append(r)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
