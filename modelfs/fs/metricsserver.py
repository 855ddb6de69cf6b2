"""The HTTP server behind ``-o metrics``: a thread per connection, with a bound on both.

Whoever can reach the port can connect (there is no authentication), so nothing a client
does may cost the daemon more than a few threads for a few seconds:

- at most ``MAX_CONNECTIONS`` are served at once; one more is closed as soon as it is
  accepted (a scraper retries at its next interval);
- a connection that sends nothing for ``IDLE_SECONDS`` is closed, and every connection is
  shut down ``CONNECTION_SECONDS`` after it was accepted, whatever it does (a client that
  sends a byte at a time, or does not read the answer): the server's own loop looks every
  ``POLL_SECONDS``;
- one request per connection (HTTP/1.0, as wsgiref answers).

A client's failure is logged at DEBUG only: it is the client's, not the daemon's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
IDLE_SECONDS = 5.0
CONNECTION_SECONDS = 15.0
POLL_SECONDS = 0.5


class _DebugLog:
    """wsgiref writes a failed answer's traceback (a client gone quiet mid-answer) to stderr,
    the daemon's log: it is the client's failure, worth a DEBUG line only."""

    def write(self, text: str) -> None:
        if text.strip():
            log.debug("metrics: %s", text.rstrip())

    def flush(self) -> None:
        pass


class _Handler(WSGIRequestHandler):
    timeout = IDLE_SECONDS  # on each receive and send of the connection

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the daemon's log

    def get_stderr(self) -> Any:
        return _DebugLog()


class BoundedServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server that serves at most ``max_connections`` at once, each for at
    most ``connection_seconds``."""

    daemon_threads = True
    # A burst of connections is taken in and answered (or closed) at once, not left to the
    # clients' SYN retries.
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        *,
        max_connections: int = MAX_CONNECTIONS,
        connection_seconds: float = CONNECTION_SECONDS,
    ) -> None:
        self.address_family = family
        self.max_connections = max_connections
        self.connection_seconds = connection_seconds
        self.refused = 0  # connections closed at once: all slots were taken
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = len(self._deadlines) >= self.max_connections
            if not full:
                self._deadlines[request] = time.monotonic() + self.connection_seconds
        if full:
            self.refused += 1
            log.debug(
                "metrics: %s connections open, closing one from %s",
                len(self._deadlines),
                client_address,
            )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
            super().shutdown_request(request)

    def service_actions(self) -> None:
        """Shut down the connections past their deadline (their threads then return)."""
        now = time.monotonic()
        with self._lock:
            for request, deadline in self._deadlines.items():
                if deadline <= now:
                    with contextlib.suppress(OSError):
                        request.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: a request from %s failed", client_address, exc_info=True)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._deadlines)


def start(host: str, port: int, app: Callable[..., Any]) -> tuple[BoundedServer, threading.Thread]:
    """Serve the WSGI ``app`` at ``host:port`` from a daemon thread (OSError if it cannot bind)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server = BoundedServer((sockaddr[0], port), family)
    server.set_app(app)
    thread = threading.Thread(
        target=server.serve_forever, args=(POLL_SECONDS,), name="metrics", daemon=True
    )
    thread.start()
    return server, thread
