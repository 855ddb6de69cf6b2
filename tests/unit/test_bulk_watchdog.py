"""The bulk path against hand-written loopback servers: trickles, hangs and hostile redirects end."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from modelfs.formats.digest import Digest
from modelfs.formats.names import parse_name
from modelfs.registry.bulk import Aborted, BodyError, BulkClient, BulkSettings, RedirectError
from modelfs.registry.ranges import BlobRange, PieceSink, WholeSink

BODY = bytes(range(256)) * 4096  # 1 MiB


class RawServer:
    """Accepts connections on loopback and hands each to ``serve(conn, stop)`` in a thread."""

    def __init__(self, serve: Callable[[socket.socket, threading.Event], None]) -> None:
        self.serve = serve
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.accepted = 0
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v2/m/blobs/sha256:x"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            self.serve(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)
        for t in self.threads:
            t.join(5)


@contextlib.contextmanager
def server(serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[RawServer]:
    s = RawServer(serve)
    try:
        yield s
    finally:
        s.close()


def client(stall_seconds: float = 0.5) -> BulkClient:
    return BulkClient(
        BulkSettings(
            connect_seconds=5,
            stall_seconds=stall_seconds,
            min_bytes_per_second=64 << 10,
            user_agent="test",
            ssl_context_factory=ssl.create_default_context,
        )
    )


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
        b"Content-Range: bytes 0-%d/%d\r\n\r\n" % (len(BODY), len(BODY) - 1, len(BODY))
    )
    # 1 KiB every 50 ms: never silent long enough for a socket timeout, far below the rate.
    for i in range(0, len(BODY), 1024):
        if stop.wait(0.05):
            return
        conn.sendall(BODY[i : i + 1024])


def hang(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


def blob_range(
    start: int, end: int, piece_bytes: int, on_piece: PieceSink, on_whole: WholeSink | None = None
) -> BlobRange:
    """A range of BODY (the URL names the blob; the name and digest are what it would be)."""
    name = parse_name("127.0.0.1:5000/test/model:latest")
    return BlobRange(name, Digest.of_bytes(BODY), start, end, piece_bytes, on_piece, on_whole)


def read(c: BulkClient, url: str) -> bytes:
    out = bytearray()
    c.get_range(url, None, blob_range(0, len(BODY), len(BODY), lambda off, v: out.extend(v)))
    return bytes(out)


def test_a_trickling_body_is_a_stall_not_a_hang():
    c = client()
    try:
        with server(trickle) as s, pytest.raises(BodyError, match=r"stalled.*below the minimum"):
            read(c, s.url)
        assert c.watchdog.stalls == 1
    finally:
        c.close()


def test_headers_that_never_come_are_a_stall():
    c = client()
    try:
        with server(hang) as s, pytest.raises(BodyError, match="stalled"):
            read(c, s.url)
    finally:
        c.close()


def _reading(c, url: str) -> tuple[threading.Thread, list[BaseException]]:
    """A read of ``url`` in a thread of its own, started; what it raised lands in the list."""
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            read(c, url)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    return t, errors


def test_abort_ends_a_transfer_blocked_in_another_thread():
    c = client(stall_seconds=3600)
    try:
        with server(hang) as s:
            t, errors = _reading(c, s.url)
            deadline = time.monotonic() + 10
            while s.accepted == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            c.abort()
            t.join(10)
            assert not t.is_alive(), "abort did not end a transfer blocked on a silent server"
        assert len(errors) == 1 and isinstance(errors[0], BodyError), errors
        assert "shutting down" in str(errors[0])
    finally:
        c.close()


def test_an_error_status_cut_short_by_abort_is_the_abort_not_the_status(
    monkeypatch: pytest.MonkeyPatch,
):
    """A server answering 503 whose body stops coming is being asked as modelfs shuts down: the
    transfer ends as aborted (nothing to retry, no mirror to blame), not as the 503."""

    def unavailable(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\n{")
        stop.wait(30)

    reading_body = threading.Event()
    original_read = http.client.HTTPResponse.read

    def read_body(self: http.client.HTTPResponse, amt: int | None = None) -> bytes:
        reading_body.set()
        return original_read(self, amt)

    monkeypatch.setattr(http.client.HTTPResponse, "read", read_body)
    c = client(stall_seconds=3600)
    try:
        with server(unavailable) as s:
            t, errors = _reading(c, s.url)
            assert reading_body.wait(10), "the error body was never read"
            c.abort()
            t.join(10)
            assert not t.is_alive(), "abort did not end the read of an error body"
        assert len(errors) == 1 and isinstance(errors[0], Aborted), errors
    finally:
        c.close()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://h/x"])
def test_a_redirect_off_http_is_refused_at_once(location: str):
    def redirect(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
            % location.encode()
        )

    c = client()
    try:
        with server(redirect) as s:
            with pytest.raises(RedirectError, match="refused"):
                read(c, s.url)
            assert s.accepted == 1
    finally:
        c.close()


def test_a_healthy_body_is_read_whole():
    def good(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
            b"Content-Range: bytes 0-%d/%d\r\n\r\n" % (len(BODY), len(BODY) - 1, len(BODY)) + BODY
        )

    c = client()
    try:
        with server(good) as s:
            assert read(c, s.url) == BODY
        assert c.watchdog.stalls == 0
    finally:
        c.close()


# -- 200 answers to range requests ------------------------------------------------------------


def whole_body(conn: socket.socket, stop: threading.Event) -> None:
    """A pull-through mirror that has not stored the blob: 200 and every byte."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)


def range_as_200(conn: socket.socket, stop: threading.Event) -> None:
    """An old Dragonfly daemon: 200, but a Content-Range and only the range's bytes."""
    part = BODY[4096:8192]
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Range: bytes 4096-8191/%d\r\n\r\n"
        % (len(part), len(BODY))
        + part
    )


def test_a_whole_body_is_delivered_from_zero_when_it_is_wanted():
    c = client()
    pieces: dict[int, bytes] = {}
    asked: list[int | None] = []

    def take(length: int | None) -> bool:
        asked.append(length)
        return True

    try:
        with server(whole_body) as s:
            c.get_range(
                s.url,
                None,
                blob_range(4096, 8192, 65536, lambda o, v: pieces.__setitem__(o, bytes(v)), take),
            )
        assert asked == [len(BODY)]
        assert b"".join(pieces[o] for o in sorted(pieces)) == BODY
        assert min(pieces) == 0
        # Not wanted: only the range asked for, as before.
        pieces.clear()
        with server(whole_body) as s:
            c.get_range(
                s.url,
                None,
                blob_range(
                    4096,
                    8192,
                    65536,
                    lambda o, v: pieces.__setitem__(o, bytes(v)),
                    lambda length: False,
                ),
            )
        assert pieces == {4096: BODY[4096:8192]}
    finally:
        c.close()


def test_a_200_that_carries_a_content_range_is_a_range_not_the_whole_blob():
    c = client()
    pieces: dict[int, bytes] = {}
    try:
        with server(range_as_200) as s:
            c.get_range(
                s.url,
                None,
                blob_range(
                    4096,
                    8192,
                    65536,
                    lambda o, v: pieces.__setitem__(o, bytes(v)),
                    lambda length: pytest.fail("a range answer taken for the whole blob"),
                ),
            )
        assert pieces == {4096: BODY[4096:8192]}
    finally:
        c.close()


def test_a_transfer_aborted_before_it_has_a_connection_ends_when_it_takes_one() -> None:
    """Shutdown (Ctrl-C of a pull) can come between a transfer starting and its connection
    being attached: ``abort`` then has no connection to end, and the worker thread would read
    a slow body to its end. Attaching the connection afterwards ends it at once."""
    import http.client

    from modelfs.registry.bulk import Aborted, Watchdog

    watchdog = Watchdog(stall_seconds=30.0, min_bytes_per_second=1)
    ours, theirs = socket.socketpair()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 9)
        conn.sock = ours
        with watchdog.watching() as t:
            watchdog.abort()
            watchdog.attach(t, conn)
            theirs.settimeout(5)
            assert theirs.recv(1) == b"", "the connection must be shut, not left to read on"
            with pytest.raises(Aborted):
                t.check()
    finally:
        watchdog.close()
        ours.close()
        theirs.close()
