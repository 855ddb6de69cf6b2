"""An HTTP proxy between modelfs and the real registry: counts what is served, injects faults.

The proxy runs in its own process (``python proxy.py --upstream HOST:PORT``):
a test that page-faults on an mmap of the mount holds its GIL while the kernel
waits for the daemon, so a proxy sharing the test's process could never answer.
Tests drive it through ``Proxy``: ``records()`` of what was asked and served (``done`` is False while a
request is being answered: what is in flight), and
``set_faults([...])`` with declarative rules:

    {"path": "/blobs/",        # substring of the request path (default: any)
     "method": "GET",          # default: any
     "times": 1,               # how many matching requests it applies to (default: all)
     "every": 10,              # only every 10th matching request
     "status": 503, "headers": {"Retry-After": "2"},   # answer this instead of forwarding
     "flip_at": 123456,        # flip the byte at this absolute blob offset, if the body has it
     "replace_hex": "3031",    #   with flip_at: put these bytes there instead (a lie that
                               #   still parses: a header's digit or name, a tar checksum)
     "cut_after": 1000,        # close the connection after this many body bytes
     "stall_after": 1000,      # after this many body bytes send nothing for stall_seconds
     "stall_seconds": 30,      #   (default 30), then close
     "trickle_bps": 1024,      # send the body at this many bytes per second
     "full_body": True,        # drop the Range header: the registry answers 200, whole blob
     "content_range": "bytes 0-9/10",   # answer with this Content-Range instead
     "hang_seconds": 60}       # answer nothing for this long, then close
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PIECE_BYTES = 1 << 20
CONTROL = "/_proxy/"


@dataclass
class Record:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    request_bytes: int = 0  # of the request's body (a push's PATCH carries the blob)
    done: bool = True  # False while the proxy is still answering it (a body still moving)

    @property
    def span(self) -> tuple[int, int] | None:
        if not self.range:
            return None
        a, _, b = self.range.removeprefix("bytes=").partition("-")
        return int(a), int(b) + 1


def tampered(piece: bytes, at: int, lie: bytes | None) -> bytes:
    """``piece`` with the byte at ``at`` (relative, may lie outside it) flipped, or with
    ``lie`` written from ``at`` on (the part of it that falls inside ``piece``)."""
    if lie is None:
        lie = bytes([piece[at] ^ 0xFF]) if 0 <= at < len(piece) else b""
    a, b = max(at, 0), min(at + len(lie), len(piece))
    if a >= b:
        return piece
    return piece[:a] + lie[a - at : b - at] + piece[b:]


class Proxy:
    """The test side: start the proxy process, read its records, set its faults."""

    def __init__(self, upstream_host: str) -> None:
        self.upstream_host = upstream_host
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--upstream", self.upstream_host],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(line.strip())
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def _call(self, what: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.host}{CONTROL}{what}",
            data=data,
            method="POST" if data is not None else "GET",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def records(self) -> list[Record]:
        return [Record(**r) for r in self._call("records")]  # type: ignore[union-attr]

    def reset(self) -> None:
        self._call("reset", {})

    def set_faults(self, rules: list[dict[str, object]]) -> None:
        self._call("faults", rules)

    def clear_faults(self) -> None:
        self.set_faults([])

    def blob_records(self) -> list[Record]:
        return [r for r in self.records() if "/blobs/" in r.path and r.method == "GET"]

    def upload_bytes(self) -> int:
        """Request body bytes sent to blob uploads (what a push sent of its blobs)."""
        return sum(r.request_bytes for r in self.records() if "/blobs/uploads/" in r.path)

    def blob_bytes(self, digest_hex: str | None = None) -> int:
        """Body bytes of blob requests (of one blob, with ``digest_hex``)."""
        return sum(
            r.body_bytes for r in self.blob_records() if digest_hex is None or digest_hex in r.path
        )


# -- the proxy process ---------------------------------------------------------------------


class _State:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.partition(":")
        self.upstream = (host, int(port or 80))
        self.lock = threading.Lock()
        self.records: list[dict[str, object]] = []
        self.rules: list[dict[str, object]] = []

    def match(self, method: str, path: str, span: tuple[int, int] | None) -> dict | None:
        with self.lock:
            for rule in self.rules:
                if rule.get("method") not in (None, method):
                    continue
                if str(rule.get("path", "")) not in path:
                    continue
                flip = rule.get("flip_at")
                if flip is not None and not (span and span[0] <= int(flip) < span[1]):  # type: ignore[arg-type]
                    continue
                every = rule.get("every")
                if every is not None:
                    rule["_seen"] = int(rule.get("_seen", 0)) + 1  # type: ignore[call-overload]
                    if int(rule["_seen"]) % int(every) != 0:  # type: ignore[call-overload]
                        continue
                times = rule.get("times")
                if times is not None:
                    if int(times) <= 0:  # type: ignore[arg-type]
                        continue
                    rule["times"] = int(times) - 1  # type: ignore[arg-type]
                return dict(rule)
        return None


def _serve(upstream: str) -> None:
    state = _State(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _control(self) -> None:
            what = self.path[len(CONTROL) :]
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with state.lock:
                if what == "records":
                    return self._json(list(state.records))
                if what == "reset":
                    state.records.clear()
                elif what == "faults":
                    state.rules = list(body or [])
            self._json({})

        def do_GET(self) -> None:
            if self.path.startswith(CONTROL):
                return self._control()
            self._forward("GET")

        def do_POST(self) -> None:
            if self.path.startswith(CONTROL):
                return self._control()
            self._forward("POST")

        def do_PUT(self) -> None:
            self._forward("PUT")

        def do_PATCH(self) -> None:
            self._forward("PATCH")

        def do_DELETE(self) -> None:
            self._forward("DELETE")

        def _request_body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def _forward(self, method: str) -> None:
            record: dict[str, object] = {
                "method": method,
                "path": self.path,
                "range": self.headers.get("Range"),
                "status": 0,
                "body_bytes": 0,
                # Every key from the start: a record is read (json) while its request goes on.
                "request_bytes": 0,
                "done": False,
            }
            with state.lock:
                state.records.append(record)
            try:
                self._answer(method, record)
            finally:
                record["done"] = True

        def _answer(self, method: str, record: dict[str, object]) -> None:
            rng = self.headers.get("Range")
            span = Record(method, self.path, rng, 0, 0).span
            rule = state.match(method, self.path, span)
            if rule is not None and rule.get("hang_seconds") is not None:
                time.sleep(float(rule["hang_seconds"]))  # type: ignore[arg-type]
                self.close_connection = True
                return
            if rule is not None and rule.get("status") is not None:
                body = b'{"errors":[{"code":"INJECTED","message":"injected fault"}]}'
                self.send_response(int(rule["status"]))  # type: ignore[arg-type]
                for k, v in dict(rule.get("headers") or {}).items():  # type: ignore[call-overload]
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)
                record["status"] = rule["status"]
                return
            body = self._request_body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            record["request_bytes"] = len(body or b"")
            headers: dict[str, str] = {}
            for k, v in self.headers.items():
                if k.lower() in ("host", "connection", "transfer-encoding", "content-length"):
                    continue
                # A header sent several times (Go's registry clients send one Accept per
                # media type) is one comma-separated header, as HTTP allows: not the last only.
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            if body is not None:
                headers["Content-Length"] = str(len(body))
            if rule and rule.get("full_body"):
                headers = {k: v for k, v in headers.items() if k.lower() != "range"}
            up = http.client.HTTPConnection(*state.upstream, timeout=30)
            try:
                up.request(method, self.path, body=body, headers=headers)
                resp = up.getresponse()
            except OSError:
                self.send_error(502)
                record["status"] = 502
                return
            record["status"] = resp.status
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding"):
                    if k.lower() == "content-range" and rule and rule.get("content_range"):
                        v = str(rule["content_range"])
                    if k.lower() == "location":
                        # docker-registry's upload sessions are absolute URLs to itself: point
                        # them here, so a push's PATCH and PUT are seen (and counted) too.
                        upstream = "http://{}:{}".format(*state.upstream)
                        if v.startswith(upstream + "/") and self.headers.get("Host"):
                            v = f"http://{self.headers['Host']}{v[len(upstream) :]}"
                    self.send_header(k, v)
            if resp.getheader("Content-Length") is None and method != "HEAD":
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if method == "HEAD":
                up.close()
                return
            flip = (
                int(rule["flip_at"]) - span[0]
                if rule and rule.get("flip_at") is not None and span
                else None
            )  # type: ignore[arg-type]
            if rule and rule.get("flip_at") is not None and span is None:
                flip = int(rule["flip_at"])  # type: ignore[arg-type]
            cut = int(rule["cut_after"]) if rule and rule.get("cut_after") is not None else None  # type: ignore[arg-type]
            stall = (
                int(rule["stall_after"]) if rule and rule.get("stall_after") is not None else None
            )  # type: ignore[arg-type]
            trickle = int(rule["trickle_bps"]) if rule and rule.get("trickle_bps") else None  # type: ignore[arg-type]
            lie = (
                bytes.fromhex(str(rule["replace_hex"]))
                if rule and rule.get("replace_hex")
                else None
            )
            sent = 0

            def announce(total: int) -> None:
                # Counted before the bytes are written: a client that has them (and a test
                # that then reads the records) never sees a count that lags behind them. The
                # count of bytes actually written is set once the body ends.
                record["body_bytes"] = total

            try:
                while True:
                    piece = resp.read(PIECE_BYTES)
                    if not piece:
                        break
                    if flip is not None:
                        piece = tampered(piece, flip - sent, lie)
                    if cut is not None and sent + len(piece) > cut:
                        piece = piece[: max(0, cut - sent)]
                        announce(sent + len(piece))
                        self.wfile.write(piece)
                        sent += len(piece)
                        self.close_connection = True
                        break
                    if stall is not None and sent + len(piece) > stall:
                        piece = piece[: max(0, stall - sent)]
                        announce(sent + len(piece))
                        self.wfile.write(piece)
                        self.wfile.flush()
                        sent += len(piece)
                        time.sleep(float(rule.get("stall_seconds", 30)))  # type: ignore[union-attr, arg-type]
                        self.close_connection = True
                        break
                    if trickle is not None:
                        step = max(1, trickle // 4)
                        for i in range(0, len(piece), step):
                            announce(sent + len(piece[i : i + step]))
                            self.wfile.write(piece[i : i + step])
                            self.wfile.flush()
                            sent += len(piece[i : i + step])
                            time.sleep(step / trickle)
                        continue
                    announce(sent + len(piece))
                    self.wfile.write(piece)
                    sent += len(piece)
            except OSError:
                self.close_connection = True
            finally:
                record["body_bytes"] = sent
                up.close()

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            # A client hanging up mid-body is what several tests do on purpose.
            pass

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    _serve(parser.parse_args().upstream)
