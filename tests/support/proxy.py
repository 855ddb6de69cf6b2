"""An HTTP proxy between modelfs and the real registry: counts what is served, injects faults.

Runs in a thread of the test process; modelfs (in its own process) is pointed at
``proxy.host`` as if it were the registry. ``proxy.fault`` may be set to a
function of the request that returns a ``Fault`` (flip a byte, cut the body,
answer a status) for that request.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

PIECE_BYTES = 1 << 20


@dataclass
class Record:
    method: str
    path: str
    range: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class Fault:
    flip_at: int | None = None  # flip one byte at this offset of the response body
    status: int | None = None  # answer this status instead of forwarding
    cut_after: int | None = None  # close the connection after this many body bytes
    headers: dict[str, str] = field(default_factory=dict)


class Proxy:
    def __init__(self, upstream_host: str) -> None:
        self.upstream_host, _, port = upstream_host.partition(":")
        self.upstream_port = int(port or 80)
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.fault: Callable[[Record], Fault | None] | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self, "GET")

            def do_HEAD(self) -> None:
                proxy._forward(self, "HEAD")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Proxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.records.clear()

    def blob_records(self) -> list[Record]:
        with self.lock:
            return [r for r in self.records if "/blobs/" in r.path and r.method == "GET"]

    def blob_bytes(self) -> int:
        return sum(r.body_bytes for r in self.blob_records())

    def _forward(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        record = Record(method, h.path, h.headers.get("Range"))
        with self.lock:
            self.records.append(record)
        fault = self.fault(record) if self.fault else None
        if fault is not None and fault.status is not None:
            body = b'{"errors":[{"code":"INJECTED","message":"injected fault"}]}'
            h.send_response(fault.status)
            for k, v in fault.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(body)
            record.status = fault.status
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
        up = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            up.request(method, h.path, headers=headers)
            resp = up.getresponse()
        except OSError:
            h.send_error(502)
            record.status = 502
            return
        record.status = resp.status
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                h.send_header(k, v)
        length = resp.getheader("Content-Length")
        if length is None and method != "HEAD":
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if method == "HEAD":
            up.close()
            return
        sent = 0
        try:
            while True:
                piece = resp.read(PIECE_BYTES)
                if not piece:
                    break
                if fault is not None and fault.flip_at is not None:
                    k = fault.flip_at - sent
                    if 0 <= k < len(piece):
                        piece = piece[:k] + bytes([piece[k] ^ 0xFF]) + piece[k + 1 :]
                cut = fault.cut_after if fault is not None else None
                if cut is not None and sent + len(piece) > cut:
                    piece = piece[: max(0, cut - sent)]
                    h.wfile.write(piece)
                    sent += len(piece)
                    h.close_connection = True
                    break
                h.wfile.write(piece)
                sent += len(piece)
        except OSError:
            h.close_connection = True
        finally:
            record.body_bytes = sent
            up.close()
