"""A loopback HTTP(S) server that records the headers of every request and answers from a script.

    def answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != basic("alice", "secret"):
            return Reply(401, {"WWW-Authenticate": 'Basic realm="r"'})
        return Reply(307, {"Location": f"{cdn.url}/blob"})

    with Recorder(answer, address="127.0.0.3", tls=tls_material) as reg:   # https://127.0.0.3:PORT
        ... point modelfs at reg.host ...
        assert reg.authorizations() == [None, basic("alice", "secret")]

For "where did a credential go" tests: anything that reaches the server is recorded, before
it is answered, with the scheme it came over. Any 127.0.0.0/8 address is this machine, so
``address`` stands for another host. With ``tls`` the port also answers plain http (a
connection whose first byte is not a TLS handshake): what ``http://host:port`` reaches when a
redirect drops the ``s`` of ``https://host:port``, as ``:80`` beside ``:443`` does in the wild.
``ranged(data, req)`` answers a ``Range`` request the way a registry does (206).
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from support.hostile import _Unsatisfiable, parse_range
from support.httpserver import QuietHandler, StoppableServer, request_body
from support.ollama_front import Headers
from support.tls import TLSMaterial


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # as sent, query included
    headers: Headers  # looked up case-insensitively
    scheme: str = "http"  # "https": it came over TLS


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Answer = Callable[[Recorded], Reply]


def basic(user: str, password: str) -> str:
    """The ``Authorization`` value Basic credentials travel as."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def ranged(data: bytes, req: Recorded) -> Reply:
    """``data`` as a registry serves a blob: the asked range with 206, else all of it."""
    try:
        span = parse_range(req.headers.get("Range", ""), len(data))
    except _Unsatisfiable:
        return Reply(416, {"Content-Range": f"bytes */{len(data)}"})
    if span is None:
        return Reply(200, {}, data)
    start, end = span
    return Reply(206, {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}, data[start:end])


class Recorder:
    def __init__(
        self, answer: Answer, *, address: str = "127.0.0.1", tls: TLSMaterial | None = None
    ) -> None:
        self.answer = answer
        self.address = address
        self.tls = tls
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._server: StoppableServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.port

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> Self:
        server = _Server(_Handler, self, address=self.address)
        server.tls = self.tls.server_context() if self.tls is not None else None
        self._server = server.start(f"recorder-{self.address}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def authorizations(self, scheme: str | None = None) -> list[str | None]:
        """The ``Authorization`` of every request (over ``scheme`` only, if given), in order
        (None: it had none)."""
        return [
            r.headers.get("Authorization")
            for r in self.requests
            if scheme is None or r.scheme == scheme
        ]

    def _record(self, req: Recorded) -> None:
        with self._lock:
            self._requests.append(req)


TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


class _Server(StoppableServer):
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # In the connection's own thread: a client that never speaks holds up no one else.
        if self.tls is None:
            return super().finish_request(request, client_address)
        first = request.recv(1, socket.MSG_PEEK)
        if not first or first[0] != TLS_HANDSHAKE:
            return super().finish_request(request, client_address)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return None
        # The plain socket is detached now: stop() must hang up on this one.
        self.track(conn)
        try:
            return super().finish_request(conn, client_address)
        finally:
            self.untrack(conn)
            conn.close()


class _Handler(QuietHandler):
    def _serve(self) -> None:
        owner: Recorder = self.server.owner  # type: ignore[assignment]
        body = request_body(self)
        for _ in body or ():
            pass
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        req = Recorded(self.command, self.path, Headers(self.headers.items()), scheme)
        owner._record(req)
        reply = owner.answer(req)
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
