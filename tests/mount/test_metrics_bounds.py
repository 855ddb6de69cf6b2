"""The ``-o metrics`` endpoint has no authentication: whoever reaches the port can connect.
Many idle connections, or one that sends a byte at a time, cost the daemon a few threads for a
few seconds (modelfs/fs/metricsserver.py), and scrapes work again once they are gone. Before,
each connection held a thread of its own for as long as the client liked: 400 idle ones, 400
threads for over a minute."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from pathlib import Path

from mount.test_status import free_port, scrape

# What the README promises (modelfs/fs/metricsserver.py has them as constants).
MAX_CONNECTIONS = 8
IDLE_SECONDS = 5.0
CONNECTION_SECONDS = 15.0
IDLE_CLIENTS = 400
CONNECT_SECONDS = 10.0
# Every connection is closed by then: the bound, the server's poll, and a loaded machine.
CLOSED_WITHIN_SECONDS = CONNECTION_SECONDS + 10.0
# Threads the daemon may start besides the metrics server's, while the test looks.
OTHER_THREADS = 6


def daemon_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for pid {pid}")


def wait_all_closed(socks: list[socket.socket], seconds: float) -> list[socket.socket]:
    """Wait until the server has closed every one of ``socks``; those still open after
    ``seconds``."""
    open_socks = set(socks)
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while open_socks:
            left = deadline - time.monotonic()
            for key, _ in sel.select(timeout=min(max(left, 0.0), 1.0)):
                s = key.fileobj
                try:
                    data = s.recv(4096)  # type: ignore[union-attr]
                except (ConnectionResetError, TimeoutError):
                    data = b""
                if not data:
                    sel.unregister(s)
                    open_socks.discard(s)  # type: ignore[arg-type]
            if left <= 0:
                break
    return list(open_socks)


def test_idle_and_slow_connections_are_bounded_in_number_and_time(mount_factory) -> None:
    port = free_port()
    m = mount_factory(f"metrics=127.0.0.1:{port}", "links=no")
    pid = m.pid()
    assert pid is not None
    assert scrape(f"127.0.0.1:{port}"), "no metrics before the flood"
    baseline = daemon_threads(pid)

    # A client that sends a byte a second, never completing its request.
    slow = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_SECONDS)
    slow_ended = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 3600:
                slow.send(bytes([byte]))
                if slow_ended.wait(1.0):
                    return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    slow_since = time.monotonic()

    idle: list[socket.socket] = []
    peak = 0
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=CONNECT_SECONDS))
            if len(idle) % 50 == 0:
                peak = max(peak, daemon_threads(pid))
        # Let the server take them all in before counting again.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            peak = max(peak, daemon_threads(pid))
            time.sleep(0.1)
        assert peak <= baseline + MAX_CONNECTIONS + OTHER_THREADS, (
            f"{IDLE_CLIENTS} idle connections raised the daemon's threads from {baseline} "
            f"to {peak} (at most {MAX_CONNECTIONS} connections should be served at once)"
        )
        still_open = wait_all_closed(idle, CLOSED_WITHIN_SECONDS)
        assert not still_open, (
            f"{len(still_open)} of {IDLE_CLIENTS} idle connections still open after "
            f"{CLOSED_WITHIN_SECONDS:.0f}s (idle ones should close after {IDLE_SECONDS:.0f}s)"
        )
        left = slow_since + CLOSED_WITHIN_SECONDS - time.monotonic()
        assert not wait_all_closed([slow], max(0.0, left)), (
            f"a client sending a byte a second was still connected after "
            f"{time.monotonic() - slow_since:.0f}s (bound: {CONNECTION_SECONDS:.0f}s)"
        )
    finally:
        slow_ended.set()
        for s in [*idle, slow]:
            s.close()
        trickler.join(5)

    samples = scrape(f"127.0.0.1:{port}")
    assert ("modelfs_range_requests_total", ()) in samples, "a scrape after the flood failed"
    # The threads the connections held are gone too.
    deadline = time.monotonic() + CLOSED_WITHIN_SECONDS
    while daemon_threads(pid) > baseline + OTHER_THREADS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon_threads(pid) <= baseline + OTHER_THREADS
