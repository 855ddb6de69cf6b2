"""A hostile Docker-registry-v2 look-alike: it serves whatever the test says, under any digest.

    with HostileRegistry() as reg:                       # on 127.0.0.1, a free port
        reg.put_manifest("library/m", "latest", build_manifest(config, layers))
        reg.put_blob(evil, digest=victim_digest)         # bytes it does not own
        reg.trickle(4096, digest=victim_digest)          # 4 KiB/s, in small paced writes
        reg.redirect("file:///etc/passwd")               # every other blob: a hostile Location
        reg.hang(digest=some_digest)                     # accepted, never answered
        reg.refuse(400, b"any error body")               # every manifest: this error
        ... point the client at reg.url ...
        assert not any("Authorization" in r.headers for r in reg.blob_requests())

Only ``GET``/``HEAD`` of ``/v2/``, ``/v2/<repo>/manifests/<tag or digest>`` and
``/v2/<repo>/blobs/<digest>`` are served; blobs are the same for every repository. Nothing is
checked: a blob is whatever bytes were put under that digest. Behaviours apply per digest or to
every blob (``digest=None``); a per-digest setting beats the all-blobs one of its kind, and of
the kinds ``hang`` beats ``redirect`` beats ``trickle``. Everything may be changed while it runs.

The server binds 127.0.0.1 and never opens a connection of its own: a redirect is just a
``Location`` string handed to the client. It runs in threads of the test process, so (like
ollama_front) it is for clients in the test process or in subprocesses, not for a FUSE mount
whose page faults the test process triggers while holding the GIL.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Self

from modelfs.formats.chunks import (
    CHUNK_BYTES,
    DEFAULT_CHUNK_ALGORITHM,
    BlobChunks,
    chunk_hash,
    serialize_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST, Layer
from modelfs.formats.manifest import build_manifest as serialize_manifest
from support.httpserver import (
    PIECE_BYTES,
    POLL_SECONDS,
    QuietHandler,
    Served,
    request_body,
)
from support.ollama_front import Headers, error_body

# A trickled body goes out in writes of at most this many bytes, each followed by a pause of at
# most TRICKLE_STEP_SECONDS: a stop or a client hanging up is noticed within about that long.
TRICKLE_PIECE_BYTES = 1 << 10
TRICKLE_STEP_SECONDS = 0.1
WAIT_SECONDS = 5.0
API_VERSION = "registry/2.0"
_ROUTE = re.compile(r"/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- building what modelfs reads -----------------------------------------------------------


def build_chunk_index(
    blobs: Mapping[str, bytes],
    chunk_bytes: int = CHUNK_BYTES,
    algorithm: str = DEFAULT_CHUNK_ALGORITHM,
) -> bytes:
    """A chunk index (modelfs's own encoding) whose entries match ``blobs`` as given.

    ``blobs`` maps a digest string to the bytes the chunk hashes are taken from: they need
    not hash to that digest, which is how an index can vouch for a hostile registry's bytes.
    """
    entries = [
        BlobChunks(
            Digest.parse(digest),
            len(data),
            chunk_bytes,
            tuple(
                chunk_hash(algorithm, data[i : i + chunk_bytes])
                for i in range(0, len(data), chunk_bytes)
            ),
            algorithm,
        )
        for digest, data in blobs.items()
    ]
    return serialize_chunk_index(chunk_bytes, entries)


def build_manifest(config: bytes, layers: list[tuple[str, str, int]]) -> bytes:
    """A Docker v2 manifest as modelfs writes it: config ``config`` and ``(media_type, digest, size)`` layers.

    The sizes and digests are taken as given, so a manifest may describe bytes nobody serves.
    """
    config_layer = Layer(Digest.of_bytes(config), MEDIA_TYPE_DOCKER_CONFIG, len(config))
    return serialize_manifest(
        config_layer, [Layer(Digest.parse(d), media_type, size) for media_type, d, size in layers]
    )


# -- recorded requests ---------------------------------------------------------------------


class _HostileRequest(NamedTuple):
    method: str
    path: str  # as sent, query included
    headers: Headers  # as sent, looked up case-insensitively
    bytes_sent: int  # body bytes handed to the socket so far (headers not counted)


class HostileRequest(_HostileRequest):
    """``(method, path, headers, bytes_sent)`` at the time it was read; ``.status`` as answered (0: none)."""

    status: int = 0


@dataclass
class _Entry:
    method: str
    path: str
    headers: Headers
    bytes_sent: int = 0
    status: int = 0

    def snapshot(self) -> HostileRequest:
        r = HostileRequest(self.method, self.path, self.headers, self.bytes_sent)
        r.status = self.status
        return r


def _blob_path_digest(path: str) -> str | None:
    m = _ROUTE.fullmatch(urllib.parse.urlsplit(path).path)
    if m is None or m.group("kind") != "blobs":
        return None
    return urllib.parse.unquote(m.group("ref"))


# -- the server ----------------------------------------------------------------------------


class HostileRegistry(Served):
    """A registry that lies on request: blobs under digests they do not have, slow or no answers.

    ``stop`` hangs up on every client (trickles and hangs included) and waits for every thread.
    """

    def __init__(self) -> None:
        super().__init__(_Handler, "hostile-registry")
        # An RLock so that a wait_for predicate may read the registry's own properties.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._blobs: dict[str, bytes] = {}
        # Behaviours, keyed by digest; None is "every blob".
        self._trickle: dict[str | None, int] = {}
        self._redirect: dict[str | None, tuple[str, int]] = {}
        self._hang: set[str | None] = set()
        self._refuse: dict[str | None, tuple[int, bytes]] = {}  # keyed by repo
        self._entries: list[_Entry] = []
        self._in_flight = 0

    # -- lifecycle and addresses: start, stop, port, host, url (Served)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content

    def put_manifest(
        self, repo: str, tag: str, raw: bytes, media_type: str = MEDIA_TYPE_DOCKER_MANIFEST
    ) -> str:
        """Serve ``raw`` for ``repo`` under ``tag`` and under its digest; returns the digest."""
        digest = sha256_digest(raw)
        with self._lock:
            self._manifests[repo, tag] = (raw, media_type)
            self._manifests[repo, digest] = (raw, media_type)
        return digest

    def put_blob(self, data: bytes, digest: str | None = None) -> str:
        """Serve ``data`` under ``digest`` (default: its own sha256) in every repo; returns the digest."""
        digest = digest if digest is not None else sha256_digest(data)
        with self._lock:
            self._blobs[digest] = bytes(data)
        return digest

    # -- behaviours

    def trickle(self, bytes_per_second: int, digest: str | None = None) -> None:
        """Send blob bodies at ``bytes_per_second``, in writes of at most TRICKLE_PIECE_BYTES."""
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        with self._lock:
            self._trickle[digest] = bytes_per_second

    def redirect(self, location: str, digest: str | None = None, status: int = 307) -> None:
        """Answer blob requests with ``status`` and this ``Location`` (any scheme, never fetched here)."""
        with self._lock:
            self._redirect[digest] = (location, status)

    def hang(self, digest: str | None = None) -> None:
        """Read blob requests and never answer, until the client hangs up or the server stops."""
        with self._lock:
            self._hang.add(digest)

    def refuse(self, status: int, body: bytes, repo: str | None = None) -> None:
        """Answer manifest requests (of ``repo``, or of every repo) with ``status`` and this
        body, sent as JSON whatever it holds: a registry's own error text, hostile or not."""
        with self._lock:
            self._refuse[repo] = (status, bytes(body))

    def clear(self) -> None:
        """Forget every behaviour (not manifests, blobs or the request log)."""
        with self._lock:
            self._refuse.clear()
            self._trickle.clear()
            self._redirect.clear()
            self._hang.clear()

    # -- the request log

    @property
    def requests(self) -> list[HostileRequest]:
        """Every request so far, oldest first, as snapshots."""
        with self._lock:
            return [e.snapshot() for e in self._entries]

    def blob_requests(self, digest: str | None = None, method: str = "GET") -> list[HostileRequest]:
        """The ``method`` requests for blob ``digest`` (any blob if None)."""
        return [
            r
            for r in self.requests
            if r.method == method
            and (d := _blob_path_digest(r.path)) is not None
            and (digest is None or d == digest)
        ]

    @property
    def in_flight(self) -> int:
        """Requests being answered now (a hang or trickle counts until it ends)."""
        with self._lock:
            return self._in_flight

    def clear_requests(self) -> None:
        with self._lock:
            self._entries.clear()

    def wait_for(
        self, predicate: Callable[[], bool], timeout_seconds: float = WAIT_SECONDS
    ) -> None:
        """Return once ``predicate()`` is true, checked after each request event; else AssertionError."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout_seconds):
                raise AssertionError(
                    f"the hostile registry did not reach the condition in {timeout_seconds} s; "
                    f"requests: {[(r.method, r.path, r.status) for r in self.requests]}"
                )

    # -- for the handlers

    def _begin(self, method: str, path: str, headers: Headers) -> _Entry:
        entry = _Entry(method, path, headers)
        with self._changed:
            self._entries.append(entry)
            self._in_flight += 1
            self._changed.notify_all()
        return entry

    def _update(self, entry: _Entry, *, sent: int = 0, status: int = 0) -> None:
        with self._changed:
            entry.bytes_sent += sent
            if status and not entry.status:
                entry.status = status
            self._changed.notify_all()

    def _end(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def _refusal(self, repo: str) -> tuple[int, bytes] | None:
        with self._lock:
            return self._refuse.get(repo, self._refuse.get(None))

    def _manifest(self, repo: str, reference: str) -> tuple[bool, tuple[bytes, str] | None]:
        """(whether ``repo`` has any manifest, (raw, media type) of ``reference`` or None)."""
        with self._lock:
            known = any(r == repo for r, _ in self._manifests)
            return known, self._manifests.get((repo, reference))

    def _blob_plan(self, digest: str) -> _Plan:
        with self._lock:
            redirect = self._redirect.get(digest, self._redirect.get(None))
            rate = self._trickle.get(digest, self._trickle.get(None))
            hang = digest in self._hang or None in self._hang
            return _Plan(hang, redirect, rate, self._blobs.get(digest))


class _Plan(NamedTuple):
    """How to answer one blob request."""

    hang: bool
    redirect: tuple[str, int] | None  # (Location, status)
    rate: int | None  # trickle, bytes per second
    data: bytes | None  # None: unknown blob


class _Unsatisfiable(Exception):
    pass


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` for one ``bytes=`` range of a ``size``-byte body; None to ignore it.

    Raises _Unsatisfiable for a well-formed range that starts past the end (416).
    """
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if m is None or m.group(1) == m.group(2) == "":
        return None  # malformed or several ranges: serve the whole body, as RFC 9110 allows
    first, last = m.group(1), m.group(2)
    if first == "":
        n = int(last)
        if n == 0:
            raise _Unsatisfiable
        return max(0, size - n), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, size if last == "" else min(int(last) + 1, size)


def _client_gone(sock: socket.socket) -> bool:
    """True if the client has hung up (EOF or reset); pipelined bytes do not count."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Handler(QuietHandler):
    _entry: _Entry | None = None

    @property
    def registry(self) -> HostileRegistry:
        return self.server.owner  # type: ignore[return-value]

    def _serve(self) -> None:
        reg = self.registry
        self._entry = reg._begin(self.command, self.path, Headers(self.headers.items()))
        try:
            self._answer()
        finally:
            self._entry = None
            reg._end()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before the client can see the answer, so tests never race the handler.
        if self._entry is not None:
            self.registry._update(self._entry, status=code)
        super().send_response(code, message)

    def end_headers(self) -> None:
        self.send_header("Docker-Distribution-API-Version", API_VERSION)
        super().end_headers()

    # -- answers

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self._write(memoryview(body), None)

    def _fail(self, status: int, code: str, message: str) -> None:
        self._send(status, error_body(code, message), {"Content-Type": "application/json"})

    def _answer(self) -> None:
        if self.command not in ("GET", "HEAD"):
            pieces = request_body(self)
            for _ in pieces or ():
                pass
            return self._fail(405, "UNSUPPORTED", "this registry is read-only")
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/v2", "/v2/"):
            return self._send(200, b"{}", {"Content-Type": "application/json"})
        m = _ROUTE.fullmatch(path)
        if m is None:
            return self._fail(404, "NOT_FOUND", "not found")
        repo, reference = m.group("repo"), urllib.parse.unquote(m.group("ref"))
        if m.group("kind") == "manifests":
            return self._manifest(repo, reference)
        return self._blob(reference)

    def _manifest(self, repo: str, reference: str) -> None:
        if (refusal := self.registry._refusal(repo)) is not None:
            status, body = refusal
            return self._send(status, body, {"Content-Type": "application/json"})
        known, found = self.registry._manifest(repo, reference)
        if found is None:
            if not known:
                return self._fail(404, "NAME_UNKNOWN", "repository name not known to registry")
            return self._fail(404, "MANIFEST_UNKNOWN", "manifest unknown")
        raw, media_type = found
        digest = sha256_digest(raw)
        self._send(
            200,
            raw,
            {"Content-Type": media_type, "Docker-Content-Digest": digest, "ETag": f'"{digest}"'},
        )

    def _blob(self, digest: str) -> None:
        hang, redirect, rate, data = self.registry._blob_plan(digest)
        if hang:
            return self._hang()
        if redirect is not None:
            location, status = redirect
            return self._send(status, b"", {"Location": location})
        if data is None:
            return self._fail(404, "BLOB_UNKNOWN", "blob unknown to registry")
        size = len(data)
        start, end, status = 0, size, 200
        headers = {
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": digest,
            "Accept-Ranges": "bytes",
        }
        if (value := self.headers.get("Range")) is not None:
            try:
                span = parse_range(value, size)
            except _Unsatisfiable:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            if span is not None:
                (start, end), status = span, 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command != "HEAD":
            self._write(memoryview(data)[start:end], rate)

    # -- writing and waiting

    def _write(self, body: memoryview, rate: int | None) -> None:
        """Write ``body`` (paced at ``rate`` bytes/s if set); stop early if the client or server goes."""
        piece_bytes = PIECE_BYTES
        if rate is not None:
            piece_bytes = max(1, min(TRICKLE_PIECE_BYTES, int(rate * TRICKLE_STEP_SECONDS)))
        entry = self._entry
        assert entry is not None
        began = time.monotonic()
        sent = 0
        try:
            while sent < len(body):
                piece = body[sent : sent + piece_bytes]
                # Counted before the write, so a client that has the body sees it counted.
                self.registry._update(entry, sent=len(piece))
                try:
                    self.wfile.write(piece)
                except OSError:
                    self.registry._update(entry, sent=-len(piece))
                    raise
                sent += len(piece)
                # Paced against the start, so the rate holds whatever the sleeps' granularity.
                if (
                    rate is not None
                    and sent < len(body)
                    and not self._pause(began + sent / rate - time.monotonic())
                ):
                    self.close_connection = True
                    return
        except OSError:
            self.close_connection = True

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False as soon as the server stops or the client hangs up."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.server.stopping.wait(min(left, POLL_SECONDS)):
                return False
            if _client_gone(self.connection):
                return False
        return not self.server.stopping.is_set()

    def _hang(self) -> None:
        self.close_connection = True
        while not self.server.stopping.wait(POLL_SECONDS):
            if _client_gone(self.connection):
                return
