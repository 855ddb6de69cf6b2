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
import select
import socket
import threading
import urllib.parse
from typing import NamedTuple

from support.httpserver import QuietHandler, StoppableServer, request_body

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


class _Handler(QuietHandler):
    @property
    def proxy(self) -> ForwardProxy:
        return self.server.owner  # type: ignore[return-value]

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
        self.server.track(upstream)
        try:
            self.send_response_only(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            self._pump(self.connection, upstream)
        finally:
            self.server.untrack(upstream)
            upstream.close()
        self.close_connection = True

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- pieces

    def _admit(self) -> bool:
        """Record the request; answer 407 unless it carries the right proxy credentials."""
        proxy = self.proxy
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
        body = request_body(self, PIECE_BYTES)
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if body is not None and not chunked:
            headers["Content-Length"] = self.headers["Content-Length"]
        up = http.client.HTTPConnection(url.hostname, port, timeout=UPSTREAM_SECONDS)
        try:
            try:
                up.connect()
                assert up.sock is not None
                self.server.track(up.sock)
                up.request(self.command, target, body=body, headers=headers, encode_chunked=chunked)
                resp = up.getresponse()
            except (OSError, http.client.HTTPException):
                self._plain(502, b"upstream failed\n", close=True)
                return
            self._relay(resp)
        finally:
            if up.sock is not None:
                self.server.untrack(up.sock)
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
        stopping = self.server.stopping
        peer = {a: b, b: a}
        open_ = {a, b}
        for s in open_:
            s.settimeout(None)
        while open_ and not stopping.is_set():
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
        self._server: StoppableServer | None = None

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
        self._server = StoppableServer(_Handler, self)
        self._server.start(f"forward-proxy-{self.port}", POLL_SECONDS)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

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
