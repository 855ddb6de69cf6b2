"""The HTTP server machinery the test servers share: stoppable with nothing left behind.

    server = StoppableServer(Handler, owner).start("fake-thing")   # on 127.0.0.1, a free port
    # StoppableServer(Handler, owner, address="127.0.0.3"): loopback standing for another host
    ... Handler reads self.server.owner; request_body(self) for the body, de-chunked ...
    server.stop()   # no serving thread, handler thread or socket is left

Handler threads are tracked and joined by ``stop``, after it has shut every socket they
could be blocked on: the client connections, and whatever else a handler ``track``-ed (an
upstream connection, a tunnel's far end).
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from typing import BinaryIO, Self

PIECE_BYTES = 1 << 20
POLL_SECONDS = 0.05
JOIN_SECONDS = 10.0


class StoppableServer(http.server.ThreadingHTTPServer):
    """A threading server on loopback that can be stopped with no thread or socket left behind."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        handler: type[http.server.BaseHTTPRequestHandler],
        owner: object = None,
        address: str = "127.0.0.1",
    ) -> None:
        self.owner = owner
        # Set when stopping begins, for handlers that loop on their own (tunnels).
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._conns_lock = threading.Lock()
        self._serving: threading.Thread | None = None
        # Any 127.0.0.0/8 address is this machine: another one stands for another host.
        super().__init__((address, 0), handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self, name: str, poll_interval: float = POLL_SECONDS) -> Self:
        """Serve from a daemon thread called ``name``."""
        self._serving = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": poll_interval},
            name=name,
            daemon=True,
        )
        self._serving.start()
        return self

    def stop(self) -> None:
        """``close_all``, and wait for the serving thread."""
        self.close_all()
        if self._serving is not None:
            self._serving.join(JOIN_SECONDS)
            self._serving = None

    def close_all(self) -> None:
        """Stop serving, hang up on every open connection and wait for its thread."""
        self.stopping.set()
        if self._serving is not None:
            self.shutdown()
        self.server_close()
        with self._conns_lock:
            conns, workers = list(self._conns), list(self._workers)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in workers:
            t.join(JOIN_SECONDS)

    def track(self, s: socket.socket) -> None:
        """Hang up on ``s`` too when stopping (until ``untrack``)."""
        with self._conns_lock:
            self._conns.add(s)

    def untrack(self, s: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(s)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        t = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._conns_lock:
            self._conns.add(request)
            self._workers.add(t)
        t.start()

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)
                self._workers.discard(threading.current_thread())

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up mid-body and stop() shuts sockets under live handlers: not news.
        pass


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1, no Nagle, no logging."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, delayed ACKs cost 40 ms each.
    disable_nagle_algorithm = True
    server: StoppableServer

    def log_message(self, format: str, *args: object) -> None:
        pass


# -- request bodies ------------------------------------------------------------------------


def counted_body(rfile: BinaryIO, length: int, piece_bytes: int = PIECE_BYTES) -> Iterator[bytes]:
    """``length`` bytes of ``rfile``, in pieces of at most ``piece_bytes``."""
    left = length
    while left:
        piece = rfile.read(min(piece_bytes, left))
        if not piece:
            raise ConnectionError("the client's request body ended early")
        left -= len(piece)
        yield piece


def chunked_body(rfile: BinaryIO, piece_bytes: int = PIECE_BYTES) -> Iterator[bytes]:
    """A ``Transfer-Encoding: chunked`` body, de-chunked (trailers are read and dropped)."""
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        yield from counted_body(rfile, size, piece_bytes)
        rfile.readline()


def request_body(
    handler: http.server.BaseHTTPRequestHandler, piece_bytes: int = PIECE_BYTES
) -> Iterator[bytes] | None:
    """The request body, de-chunked if need be, in pieces; None if there is none."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return chunked_body(handler.rfile, piece_bytes)
    length = int(handler.headers.get("Content-Length") or 0)
    if not length:
        return None
    return counted_body(handler.rfile, length, piece_bytes)


class Served:
    """Addresses and start/stop of one of these servers, run from a thread of the test process."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], thread_name: str) -> None:
        self._handler = handler
        self._thread_name = thread_name
        self._server: StoppableServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Self:
        self._server = StoppableServer(self._handler, self).start(self._thread_name)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
