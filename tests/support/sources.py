"""In-process blob sources for unit tests of the blob layer (``modelfs.blobs.fetcher.BlobSource``).

``FakeSource`` serves bytes held in memory the way ``Registry.fetch_range`` does:
pieces of ``piece_bytes`` delivered from a worker thread taken under the
caller's limiter, honestly. Each repository has its own blobs, so a test can have
two registries name the same digest with different bytes.

``Faulty`` wraps any source with what real registries do, as mountpoint-s3's failure
client wraps its mock client: a request that fails before any byte, one never
answered, a body cut short or that stops for ever, bytes that are not the blob's, the
whole blob answered to a range request. It counts every request it is asked, failed
or not; the source underneath serves those that reach it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from modelfs.errors import ModelfsError, ModelNotFound, Transient
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_OCI_MANIFEST
from modelfs.formats.names import Name
from modelfs.formats.referrers import ARTIFACT_TYPE, Referrer
from modelfs.registry.client import BlobRange, Chunksums

Repo = tuple[str, str, str]


@dataclass
class Request:
    repository: Repo
    digest: Digest
    start: int
    end: int


@dataclass
class Fault:
    """What the next ``times`` matching requests do instead of being served honestly.

    kind: ``fail`` (raise ``error`` before any byte), ``cut`` (deliver ``pieces`` pieces,
    then raise Transient), ``hang`` (deliver ``pieces`` pieces, then nothing, ever),
    ``corrupt`` (flip a byte in every piece overlapping ``at``), ``stall`` (never answer),
    ``whole`` (answer with the whole blob, as a pull-through mirror that has not stored it
    does: ``on_whole`` is asked, and if it takes the body every byte is delivered from 0),
    ``whole_cut`` (the same, cut after ``pieces`` pieces). The whole kinds need the blob's
    ``size``.
    """

    kind: str
    digest: Digest | None = None  # only requests for this blob
    matches: Callable[[Request], bool] = lambda r: True
    times: int = 1
    error: ModelfsError | None = None
    pieces: int = 1
    at: int = 0
    size: int = 0
    used: int = 0


@dataclass
class FakeSource:
    blobs: dict[tuple[Repo, Digest], bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    chunksum_bodies: dict[tuple[Repo, Digest], Chunksums] = field(default_factory=dict)
    chunksum_requests: list[tuple[Repo, Digest]] = field(default_factory=list)
    locations: dict[tuple[Repo, Digest], str] = field(default_factory=dict)
    manifests: dict[tuple[Repo, Digest], bytes] = field(default_factory=dict)
    referrer_lists: dict[tuple[Repo, Digest], list[Referrer]] = field(default_factory=dict)
    referrer_requests: list[tuple[Repo, Digest]] = field(default_factory=list)
    # What ``distrust_mirrors`` was told (bytes that did not match their digest).
    distrusted: list[tuple[Repo, str]] = field(default_factory=list)
    # Seconds each piece takes to arrive (a slow registry: requests of two readers overlap).
    piece_delay: float = 0.0

    def put_chunksums(self, name: Name, digest: Digest, body: bytes, location: str | None) -> None:
        """Answer chunksums of ``digest`` in ``name``'s repository with ``body``."""
        self.chunksum_bodies[(name.repository_key, digest)] = Chunksums(body, location)

    async def chunksums(self, name: Name, digest: Digest) -> Chunksums | None:
        self.chunksum_requests.append((name.repository_key, digest))
        return self.chunksum_bodies.get((name.repository_key, digest))

    def use_blob_location(self, name: Name, digest: Digest, url: str) -> None:
        self.locations[(name.repository_key, digest)] = url

    def distrust_mirrors(self, name: Name, what: str) -> None:
        self.distrusted.append((name.repository_key, what))

    def publish(self, name: Name, subject: Digest, artifact: bytes) -> None:
        """List ``artifact`` (a manifest) as a referrer of ``subject`` in ``name``'s repository."""
        digest = Digest.of_bytes(artifact)
        self.manifests[(name.repository_key, digest)] = artifact
        self.referrer_lists.setdefault((name.repository_key, subject), []).append(
            Referrer(digest, len(artifact), MEDIA_TYPE_OCI_MANIFEST, ARTIFACT_TYPE)
        )

    async def referrers(self, name: Name, subject: Digest, artifact_type: str) -> list[Referrer]:
        self.referrer_requests.append((name.repository_key, subject))
        found = self.referrer_lists.get((name.repository_key, subject), [])
        return [r for r in found if r.artifact_type == artifact_type]

    async def manifest_by_digest(self, name: Name, digest: Digest) -> bytes:
        raw = self.manifests.get((name.repository_key, digest))
        if raw is None:
            raise ModelNotFound(f"manifest {digest.short} is not in {name}")
        return raw

    def put(self, name: Name, data: bytes, digest: Digest | None = None) -> Digest:
        """Serve ``data`` as ``digest`` (by default its own) from ``name``'s repository."""
        digest = digest or Digest.of_bytes(data)
        self.blobs[(name.repository_key, digest)] = data
        return digest

    def requests_for(self, digest: Digest) -> list[Request]:
        return [r for r in self.requests if r.digest == digest]

    def requested_bytes(self, digest: Digest) -> int:
        return sum(r.end - r.start for r in self.requests_for(digest))

    async def fetch_range(self, req: BlobRange, *, limiter: trio.CapacityLimiter) -> None:
        name, digest, start, end = req.name, req.digest, req.start, req.end
        piece_bytes, on_piece, on_bytes = req.piece_bytes, req.on_piece, req.on_bytes
        request = Request(name.repository_key, digest, start, end)
        self.requests.append(request)
        data = self.blobs.get((name.repository_key, digest))
        if data is None:
            raise ModelfsError(f"blob {digest.short} is not in {'/'.join(name.repository_key)}")
        if not start < end <= len(data):
            raise ModelfsError(f"asked for bytes {start}-{end - 1} of {len(data)}")

        def deliver() -> None:
            for offset in range(start, end, piece_bytes):
                size = min(piece_bytes, end - offset)
                if self.piece_delay:
                    time.sleep(self.piece_delay)
                if on_bytes is not None:
                    on_bytes(size)
                on_piece(offset, memoryview(bytearray(data[offset : offset + size])))

        await trio.to_thread.run_sync(deliver, limiter=limiter)


def _first_fault(faults: list[Fault], request: Request) -> Fault | None:
    for f in faults:
        if (
            f.used < f.times
            and (f.digest is None or f.digest == request.digest)
            and f.matches(request)
        ):
            f.used += 1
            return f
    return None


class _Hang(Exception):
    """Raised in the worker thread to stop delivering: the request then never ends."""


@dataclass
class Faulty:
    """Any ``BlobSource`` with ``Fault``s around it (see the module docstring)."""

    inner: Any
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def fault(self, kind: str, **kw: object) -> Fault:
        f = Fault(kind, **kw)  # type: ignore[arg-type]
        assert f.size or kind not in ("whole", "whole_cut"), "a whole answer needs the size"
        self.faults.append(f)
        return f

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def requests_for(self, digest: Digest) -> list[Request]:
        return [r for r in self.requests if r.digest == digest]

    def requested_bytes(self, digest: Digest) -> int:
        return sum(r.end - r.start for r in self.requests_for(digest))

    async def fetch_range(self, req: BlobRange, *, limiter: trio.CapacityLimiter) -> None:
        name, digest, start, end, on_whole = req.name, req.digest, req.start, req.end, req.on_whole
        request = Request(name.repository_key, digest, start, end)
        self.requests.append(request)
        fault = _first_fault(self.faults, request)
        kind = fault.kind if fault is not None else None
        if fault is not None and kind == "fail":
            raise fault.error or Transient("connection reset by peer")
        if kind == "stall":
            await trio.sleep_forever()
        if fault is not None and kind in ("whole", "whole_cut"):
            # The answer is the whole blob: the caller says (from a worker thread, as the
            # registry's reader does) whether it takes it.
            if on_whole is not None and await trio.to_thread.run_sync(on_whole, fault.size):
                start, end = 0, fault.size
            kind = "cut" if kind == "whole_cut" else None
        delivered = 0

        def piece(offset: int, view: memoryview) -> None:
            nonlocal delivered
            if fault is not None and kind in ("cut", "hang") and delivered == fault.pieces:
                if kind == "hang":
                    raise _Hang
                raise Transient(f"body ended at byte {offset} of {start}-{end - 1}")
            if fault is not None and kind == "corrupt" and offset <= fault.at < offset + len(view):
                changed = bytearray(view)
                changed[fault.at - offset] ^= 0xFF
                view = memoryview(changed)
            delivered += 1
            req.on_piece(offset, view)

        try:
            await self.inner.fetch_range(
                dataclasses.replace(req, start=start, end=end, on_piece=piece), limiter=limiter
            )
        except _Hang:
            await trio.sleep_forever()
        if kind == "hang":
            await trio.sleep_forever()
