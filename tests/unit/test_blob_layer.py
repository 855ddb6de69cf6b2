"""The blob layer (Reader, Fetcher, partial files, the cache) against in-process sources.

The source is a fake (tests/support/sources.py) that serves bytes from memory from a worker
thread the way the registry client does, with faults injected per request; the cache is a real
one in a temporary directory. What real registries and mounts do is tested in tests/component
and tests/mount; these pin the blob layer's own rules: single flight, retries, what is served
before it is verified, what is published, what survives a restart.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import blake3
import pytest
import trio
import trio.testing
from support.hostile import build_manifest
from support.ollama_front import chunksums_body
from support.sources import FakeSource, Faulty

from modelfs.blobs import requests, wholecheck
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.fetchcontext import BlobEvents, FetchSettings, Verify
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.partial import PartialFile, present_bytes_in_state
from modelfs.blobs.reader import BlobHandle, Blobs, BlobsSettings
from modelfs.blobs.statesave import StateSaver
from modelfs.errors import DigestMismatch, RegistryError, Transient
from modelfs.formats.chunks import BlobChunks, chunk_hash, serialize_chunk_index
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_OCI_MANIFEST,
    Layer,
    Manifest,
    parse_manifest,
)
from modelfs.formats.names import Name, parse_name
from modelfs.formats.referrers import ARTIFACT_TYPE, Referrer, build_index_artifact

CB = 64 << 10
SIZE = 10 * CB + 1234  # eleven chunks, the last one short
NAME = parse_name("127.0.0.1:5000/library/model:tag")
OTHER = parse_name("127.0.0.1:5001/evil/model:tag")


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    c = BlobCache(tmp_path / "cache")
    c.prepare()
    return c


def layer_of(data: bytes, digest: Digest | None = None) -> Layer:
    return Layer(digest or Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))


def serving(data: bytes) -> tuple[FakeSource, Layer]:
    """A source serving ``data`` honestly from ``NAME``'s repository, and its layer."""
    source = FakeSource()
    source.put(NAME, data)
    return source, layer_of(data)


def faulty(data: bytes) -> tuple[Faulty, Layer]:
    """``serving(data)`` with faults to come around it (``Faulty.fault``)."""
    source, layer = serving(data)
    return Faulty(source), layer


def index_of(data: bytes, digest: Digest | None = None, algorithm: str = "blake3") -> BlobChunks:
    hashes = tuple(chunk_hash(algorithm, data[i : i + CB]) for i in range(0, len(data), CB))
    return BlobChunks(digest or Digest.of_bytes(data), len(data), CB, hashes, algorithm)


@asynccontextmanager
async def blob_layer(
    cache: BlobCache,
    source: FakeSource | Faulty,
    *,
    deferred: bool = False,
    events: BlobEvents | None = None,
    **settings: object,
) -> AsyncIterator[tuple[Fetcher, Blobs]]:
    settings.setdefault("read_wait_seconds", 20.0)
    async with trio.open_nursery() as nursery:
        fetcher = Fetcher(
            cache,
            source,
            nursery,
            FetchSettings(chunk_bytes=CB, **settings),  # type: ignore[arg-type]
            events,
            anonymous_registry=source,
        )
        blobs = Blobs(fetcher, BlobsSettings(deferred=deferred))
        try:
            yield fetcher, blobs
        finally:
            await fetcher.save_all()
            nursery.cancel_scope.cancel()


async def open_blob(
    blobs: Blobs, name: Name, layer: Layer, chunks: BlobChunks | None, *, anonymous: bool = False
) -> BlobHandle:
    """Open ``layer`` through a manifest of ``name`` listing it, with a chunk index of ``chunks``.

    The index is served by the source, like any blob, and loaded by the blob layer.
    """
    source = blobs.fetcher.registry_for(anonymous)
    assert isinstance(source, FakeSource | Faulty)
    layers = [(MEDIA_TYPE_MODEL, str(layer.digest), layer.size)]
    if chunks is not None:
        index = serialize_chunk_index(chunks.chunk_bytes, [chunks])
        layers.append((MEDIA_TYPE_CHUNK_INDEX, str(source.put(name, index)), len(index)))
    manifest = parse_manifest(build_manifest(b"{}", layers))
    return await blobs.open(name, manifest, layer, anonymous=anonymous)


async def read(
    blobs: Blobs, name: Name, layer: Layer, chunks: BlobChunks | None, piece: int = 40_000
) -> bytes:
    handle = await open_blob(blobs, name, layer, chunks)
    try:
        return await handle.read_all(piece)
    finally:
        await handle.close()


async def published(cache: BlobCache, layer: Layer) -> None:
    with trio.fail_after(20):
        while not cache.has_blob(layer.digest, layer.size):
            await trio.sleep(0.01)


def damage(path: Path, offset: int) -> None:
    """Change the byte at ``offset`` of ``path`` (a crash, a bad disk). Flipped, never
    overwritten with a constant: one byte in 256 of random data already is that constant."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def no_byte_twice(source: FakeSource, digest: Digest) -> bool:
    seen: set[int] = set()
    for r in source.requests:
        if r.digest != digest:
            continue
        span = set(range(r.start // CB, (r.end - 1) // CB + 1))
        if seen & span:
            return False
        seen |= span
    return True


# -- the honest path ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
async def test_a_cold_read_is_served_checked_and_published(
    cache: BlobCache, data: bytes, algorithm: str
) -> None:
    source, layer = serving(data)
    async with blob_layer(cache, source) as (fetcher, blobs):
        chunks = index_of(data, algorithm=algorithm)
        assert await read(blobs, NAME, layer, chunks) == data
        await published(cache, layer)
        assert fetcher.stats.chunk_mismatches == 0
        assert source.requested_bytes(layer.digest) == SIZE
        assert no_byte_twice(source, layer.digest)
        # Published: a new handle reads blobs/ and asks the source for nothing.
        before = len(source.requests)
        assert await read(blobs, NAME, layer, chunks) == data
        assert len(source.requests) == before
    assert cache.blob_path(layer.digest).read_bytes() == data


async def test_sixteen_readers_of_one_cold_chunk_make_one_request(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = serving(data)
    got: list[bytes] = []
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handles = [await open_blob(blobs, NAME, layer, index_of(data)) for _ in range(16)]

        async def one(h: object) -> None:
            got.append(await h.read(3 * CB + 100, 1000))  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            for h in handles:
                nursery.start_soon(one, h)
        for h in handles:
            await h.close()
    assert got == [data[3 * CB + 100 : 3 * CB + 1100]] * 16
    assert [(r.start, r.end) for r in source.requests_for(layer.digest)] == [(3 * CB, 4 * CB)]


async def test_a_blob_without_an_index_is_served_only_once_whole_and_checked(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = serving(data)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, None)
        try:
            # A one-byte read of the first chunk: the whole blob is fetched and checked first.
            assert await handle.read(5, 1) == data[5:6]
            assert source.requested_bytes(layer.digest) == SIZE
            assert cache.has_blob(layer.digest, layer.size)
        finally:
            await handle.close()


async def test_a_small_blob_is_fetched_whole_and_checked(cache: BlobCache) -> None:
    small = os.urandom(CB - 7)
    source = FakeSource()
    layer = layer_of(small)
    source.put(NAME, small)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await read(blobs, NAME, layer, None) == small
    assert cache.has_blob(layer.digest, layer.size)


def descriptors_on(path: Path) -> int:
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return found


async def test_concurrent_reads_of_a_small_blob_leave_no_descriptor_open(cache: BlobCache) -> None:
    small = os.urandom(CB - 7)
    source, layer = serving(small)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, None)
        got: list[bytes] = []

        async def read_some(offset: int) -> None:
            got.append(bytes(await handle.read(offset, 4096)))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(read_some, i * 4096)
        await handle.close()
        assert sorted(got) == sorted(small[i * 4096 : (i + 1) * 4096] for i in range(8))
        assert descriptors_on(cache.blob_path(layer.digest)) == 0, "a descriptor leaked"


# -- a source that fails --------------------------------------------------------------------


async def test_failed_requests_are_retried(cache: BlobCache, data: bytes) -> None:
    source, layer = faulty(data)
    source.fault("fail", digest=layer.digest, times=2)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await read(blobs, NAME, layer, index_of(data)) == data
    assert len(source.requests_for(layer.digest)) >= 3


async def test_a_body_cut_short_is_resumed_where_it_ended(cache: BlobCache, data: bytes) -> None:
    source, layer = faulty(data)
    source.fault("cut", digest=layer.digest, pieces=2, matches=lambda r: r.end - r.start > 2 * CB)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await read(blobs, NAME, layer, index_of(data), piece=SIZE) == data
    cut = next(r for r in source.requests if r.end - r.start > 2 * CB)
    later = source.requests[source.requests.index(cut) + 1 :]
    resumed = next(r for r in later if cut.start <= r.start < cut.end)
    # The two chunks delivered before the cut are not asked for again; only the rest is.
    assert (resumed.start, resumed.end) == (cut.start + 2 * CB, cut.end)
    assert source.requested_bytes(layer.digest) == SIZE + (cut.end - cut.start - 2 * CB)


async def test_an_error_that_is_not_transient_is_not_retried(cache: BlobCache, data: bytes) -> None:
    source, layer = faulty(data)
    source.fault("fail", digest=layer.digest, times=100, error=RegistryError("blob unknown", 404))
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            with pytest.raises(RegistryError):
                await handle.read(0, 100)
        finally:
            await handle.close()
    assert len(source.requests_for(layer.digest)) == 1


async def test_a_stalled_source_fails_the_read_within_its_bound(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = faulty(data)
    source.fault("stall", digest=layer.digest, times=100)
    async with blob_layer(cache, source, read_wait_seconds=0.3) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            with trio.fail_after(30), pytest.raises(Transient, match="no data after"):
                await handle.read(0, 100)
        finally:
            await handle.close()
    assert not cache.has_blob(layer.digest, layer.size)


# -- a source that lies ---------------------------------------------------------------------


async def test_a_chunk_that_does_not_match_its_index_once_is_fetched_again(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = faulty(data)
    source.fault(
        "corrupt", digest=layer.digest, at=3 * CB + 10, matches=lambda r: r.start <= 3 * CB < r.end
    )
    async with blob_layer(cache, source) as (fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            assert await handle.read(3 * CB, 100) == data[3 * CB : 3 * CB + 100]
            assert fetcher.stats.chunk_mismatches == 1
        finally:
            await handle.close()
    asked = [r for r in source.requests_for(layer.digest) if r.start <= 3 * CB < r.end]
    assert len(asked) == 2, "the chunk that failed was not fetched once more"


async def test_digests_that_fail_twice_are_distrusted_and_the_blob_is_checked_whole(
    cache: BlobCache, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # A stale index (or chunksums): the registry's bytes are right, the digests are not.
    source, layer = serving(data)
    stale = bytearray(data)
    stale[3 * CB + 10] ^= 0xFF
    chunks = index_of(bytes(stale), layer.digest)
    async with blob_layer(cache, source) as (fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, chunks)
        try:
            assert await handle.read(0, 100) == data[:100]
            with pytest.raises(DigestMismatch):
                await handle.read(3 * CB, 100)
            assert "failed its check twice; not trusting the index" in caplog.text
            # Slower (the whole blob is fetched and checked first), never wrong, never stuck.
            assert await handle.read(3 * CB, 100) == data[3 * CB : 3 * CB + 100]
            assert fetcher.stats.chunk_mismatches == 2
        finally:
            await handle.close()
        await published(cache, layer)
        again = await open_blob(blobs, NAME, layer, chunks)
        try:
            assert await again.read_all(SIZE) == data
        finally:
            await again.close()


async def test_a_blob_that_does_not_match_its_digest_is_not_served_or_published(
    cache: BlobCache, data: bytes
) -> None:
    source = FakeSource()
    layer = layer_of(data)
    source.put(NAME, os.urandom(SIZE), layer.digest)  # other bytes under the digest
    async with blob_layer(cache, source) as (fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, None)
        try:
            with pytest.raises(DigestMismatch):
                await handle.read(0, 100)
        finally:
            await handle.close()
        assert fetcher.stats.blob_mismatches == 1
    assert not cache.has_blob(layer.digest, layer.size)
    # Nothing of it is left claiming to be part of the blob.
    state = cache.state_path(layer.digest)
    assert not state.exists() or present_bytes_in_state(state.read_bytes(), layer.digest, SIZE) == 0


async def test_a_lying_index_serves_its_own_bytes_but_never_publishes_them(
    cache: BlobCache, data: bytes
) -> None:
    # A registry whose manifest names a real digest, with an index of bytes of its own:
    # its reader gets what its index vouches for; blobs/ never gets them under the digest.
    source = FakeSource()
    layer = layer_of(data)
    forged = os.urandom(SIZE)
    source.put(OTHER, forged, layer.digest)
    discarded: list[Digest] = []
    events = BlobEvents(discarded=discarded.append)
    async with blob_layer(cache, source, events=events) as (fetcher, blobs):
        assert await read(blobs, OTHER, layer, index_of(forged, layer.digest)) == forged
        with trio.fail_after(20):
            while fetcher.stats.blob_mismatches == 0:
                await trio.sleep(0.01)
    assert not cache.has_blob(layer.digest, layer.size)
    assert discarded == [layer.digest]


async def test_another_manifest_of_the_same_digest_never_gets_the_liars_bytes(
    cache: BlobCache, data: bytes
) -> None:
    source = FakeSource()
    layer = layer_of(data)
    forged = os.urandom(SIZE)
    source.put(NAME, data)
    source.put(OTHER, forged, layer.digest)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        liar = await open_blob(blobs, OTHER, layer, index_of(forged, layer.digest))
        try:
            # The liar's chunks land first (in the partial file, or a scratch file)...
            assert await liar.read(0, 2 * CB) == forged[: 2 * CB]
            # ... and the victim's blobs, open at the same time, reads only its own bytes.
            assert await read(blobs, NAME, layer, index_of(data)) == data
        finally:
            await liar.close()
        await published(cache, layer)
    assert cache.blob_path(layer.digest).read_bytes() == data


async def test_deferred_serves_as_bytes_land_and_discards_a_lie(
    cache: BlobCache, data: bytes
) -> None:
    source = FakeSource()
    layer = layer_of(data)
    forged = os.urandom(SIZE)
    source.put(NAME, forged, layer.digest)
    discarded: list[Digest] = []
    events = BlobEvents(discarded=discarded.append)
    async with blob_layer(cache, source, deferred=True, events=events) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, None)
        try:
            # verify=deferred: bytes are served as they land, before the blob can be checked
            # (the documented cost of the option)...
            assert await handle.read(0, 100) == forged[:100]
            assert await handle.read_all(SIZE) == forged
            # ... and once it is complete and fails its check, the kernel is told to drop
            # what was served, and reads of it fail.
            with trio.fail_after(20):
                while not discarded:
                    await trio.sleep(0.01)
            with pytest.raises(DigestMismatch):
                await handle.read(0, 100)
        finally:
            await handle.close()
    assert discarded == [layer.digest]
    assert not cache.has_blob(layer.digest, layer.size)


# -- restarts -------------------------------------------------------------------------------


async def test_progress_survives_a_restart_and_is_checked_again(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = serving(data)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            assert await handle.read(0, 3 * CB) == data[: 3 * CB]
        finally:
            await handle.close()
    assert cache.state_path(layer.digest).exists()
    first = source.requested_bytes(layer.digest)
    # A chunk left on disk that no longer matches (a crash, a bad disk) is fetched again.
    damage(cache.partial_path(layer.digest), CB + 5)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await read(blobs, NAME, layer, index_of(data)) == data
        await published(cache, layer)
    again = source.requested_bytes(layer.digest) - first
    assert again == SIZE - 3 * CB + CB  # what was missing, and the chunk that was damaged


async def test_another_users_reads_never_use_the_owners_source(
    cache: BlobCache, data: bytes
) -> None:
    owner, anonymous = FakeSource(), FakeSource()
    layer = layer_of(data)
    owner.put(NAME, data)
    anonymous.put(NAME, data)
    async with trio.open_nursery() as nursery:
        fetcher = Fetcher(
            cache, owner, nursery, FetchSettings(chunk_bytes=CB), anonymous_registry=anonymous
        )
        blobs = Blobs(fetcher)
        handle = await open_blob(blobs, NAME, layer, index_of(data), anonymous=True)
        try:
            assert await handle.read_all(SIZE) == data
        finally:
            await handle.close()
        await fetcher.save_all()
        nursery.cancel_scope.cancel()
    assert owner.requests == []
    assert anonymous.requested_bytes(layer.digest) == SIZE


async def test_progress_is_saved_while_the_fetch_goes_on(cache: BlobCache, data: bytes) -> None:
    # A kill -9 costs at most the last state_flush_seconds of fetching: the state is written
    # that long after chunks land, not when the fetch or the reader ends.
    source, layer = faulty(data)
    source.fault("hang", digest=layer.digest, pieces=3)
    async with blob_layer(cache, source, state_flush_seconds=0.2) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            assert await handle.read(0, 3 * CB) == data[: 3 * CB]
            state = cache.state_path(layer.digest)
            with trio.fail_after(20):
                while not (
                    state.exists()
                    and present_bytes_in_state(state.read_bytes(), layer.digest, SIZE) >= 3 * CB
                ):
                    await trio.sleep(0.01)
            # The request is still open (it never ends), the handle too.
            assert len(source.requests_for(layer.digest)) == 1
        finally:
            await handle.close()


async def test_progress_is_saved_within_the_flush_interval_of_the_first_chunk(
    cache: BlobCache,
    data: bytes,
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a virtual clock: the first chunk a cold read fetched is saved state_flush_seconds
    # after it landed, not before (no write per chunk) and not later (a kill -9 loses at
    # most that much).
    source, layer = serving(data)
    saves: list[float] = []
    save_locked = StateSaver._save_locked

    async def timed(self: StateSaver) -> None:
        saves.append(trio.current_time())
        await save_locked(self)

    monkeypatch.setattr(StateSaver, "_save_locked", timed)
    state = cache.state_path(layer.digest)
    async with blob_layer(cache, source, state_flush_seconds=1.0) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            landed = trio.current_time()
            assert await handle.read(0, 1000) == data[:1000]
            await trio.testing.wait_all_tasks_blocked()  # what the landing started, started
            mock_clock.jump(0.9)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(0.2)
            await trio.testing.wait_all_tasks_blocked()
            assert saves and 1.0 <= saves[0] - landed <= 1.1, saves
            deadline = time.monotonic() + 10  # the save runs in a worker thread (real time)
            while not state.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert present_bytes_in_state(state.read_bytes(), layer.digest, SIZE) == CB
        finally:
            await handle.close()


# -- a registry's own ranges (Ollama's chunksums): chunks of any size -----------------------

# Unequal chunks: smaller than a piece, across pieces, larger than a piece, the short tail.
ENDS = (CB // 3, CB, 3 * CB + 17, 7 * CB, SIZE)


def ranges_of(data: bytes, ends: tuple[int, ...] = ENDS) -> BlobChunks:
    starts = (0, *ends[:-1])
    hashes = tuple(chunk_hash("sha256", data[s:e]) for s, e in zip(starts, ends, strict=True))
    return BlobChunks(Digest.of_bytes(data), len(data), 0, hashes, "sha256", ends)


async def read_through(fetcher: Fetcher, layer: Layer, chunks: BlobChunks, piece: int) -> bytes:
    bf = await fetcher.acquire(NAME, layer, chunks, Verify.INDEXED)
    try:
        out = bytearray()
        while len(out) < layer.size:
            n = min(piece, layer.size - len(out))
            out += await bf.read(len(out), n, bf.layout.covering(len(out), n))
        return bytes(out)
    finally:
        bf.release()


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bodies arrive in pieces smaller than the largest range: chunks span pieces.
    monkeypatch.setattr(requests, "PIECE_BYTES", 50_000)


async def test_a_registrys_ranges_are_served_checked_and_published(
    cache: BlobCache, data: bytes, small_pieces: None
) -> None:
    source, layer = serving(data)
    async with blob_layer(cache, source) as (fetcher, _blobs):
        assert await read_through(fetcher, layer, ranges_of(data), 30_000) == data
        await published(cache, layer)
        assert fetcher.stats.chunk_mismatches == 0
    assert source.requested_bytes(layer.digest) == SIZE
    with open(cache.blob_path(layer.digest), "rb") as f:
        assert f.read() == data


async def test_a_range_that_does_not_match_is_never_served_and_fetched_again(
    cache: BlobCache, data: bytes, small_pieces: None
) -> None:
    source, layer = faulty(data)
    at = 2 * CB + 5  # inside the third range
    source.fault("corrupt", digest=layer.digest, at=at, matches=lambda r: r.start <= at < r.end)
    chunks = ranges_of(data)
    async with blob_layer(cache, source) as (fetcher, _blobs):
        bf = await fetcher.acquire(NAME, layer, chunks, Verify.INDEXED)
        try:
            assert await bf.read(0, 100, range(0, 1)) == data[:100]
            # The range that failed its check is fetched once more, and only that is served.
            got = await bf.read(2 * CB, 100, bf.layout.covering(2 * CB, 100))
            assert got == data[2 * CB : 2 * CB + 100]
        finally:
            bf.release()
        assert fetcher.stats.chunk_mismatches == 1


async def test_ranges_left_on_disk_are_checked_again_after_a_restart(
    cache: BlobCache, data: bytes, small_pieces: None
) -> None:
    source, layer = serving(data)
    chunks = ranges_of(data)
    async with blob_layer(cache, source) as (fetcher, _blobs):
        bf = await fetcher.acquire(NAME, layer, chunks, Verify.INDEXED)
        try:
            assert await bf.read(0, CB, range(0, 2)) == data[:CB]
            assert await bf.read(CB, 10, range(2, 3)) == data[CB : CB + 10]
        finally:
            bf.release()
    assert cache.state_path(layer.digest).exists()
    first = len(source.requests_for(layer.digest))
    damage(cache.partial_path(layer.digest), 2 * CB)  # in the third range, saved as present
    async with blob_layer(cache, source) as (fetcher, _blobs):
        assert await read_through(fetcher, layer, chunks, 70_000) == data
        await published(cache, layer)
    again = [(r.start, r.end) for r in source.requests_for(layer.digest)[first:]]
    assert (0, ENDS[0]) not in again and all(start >= CB for start, _ in again), again
    assert any(start == CB for start, _ in again), "the damaged range was not fetched again"


def chunksums_of(data: bytes, ends: tuple[int, ...] = ENDS) -> bytes:
    starts = (0, *ends[:-1])
    return chunksums_body(
        [(Digest.of_bytes(data[s:e]), s, e - 1) for s, e in zip(starts, ends, strict=True)]
    )


async def open_plain(blobs: Blobs, layer: Layer) -> BlobHandle:
    """Open ``layer`` through a manifest of ``NAME`` without a chunk index (Ollama's layout)."""
    manifest = parse_manifest(
        build_manifest(b"{}", [(MEDIA_TYPE_MODEL, str(layer.digest), layer.size)])
    )
    return await blobs.open(NAME, manifest, layer)


async def test_a_blob_with_chunksums_is_read_lazily_and_from_their_location(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = serving(data)
    source.put_chunksums(NAME, layer.digest, chunksums_of(data), "http://cdn.test/blob")
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_plain(blobs, layer)
        try:
            assert await handle.read(10, 100) == data[10:110]
            assert source.requested_bytes(layer.digest) == ENDS[0], "more than the first range"
            assert await handle.read_all(50_000) == data
        finally:
            await handle.close()
        await published(cache, layer)
        again = await open_plain(blobs, layer)
        await again.close()
    assert source.locations == {(NAME.repository_key, layer.digest): "http://cdn.test/blob"}
    assert source.chunksum_requests == [(NAME.repository_key, layer.digest)], "asked twice"


@pytest.mark.parametrize(
    "body",
    [b"", b"sha256:" + b"0" * 64, chunksums_of(os.urandom(SIZE - 1), (SIZE - 1,))],
    ids=["empty", "cut short", "another size"],
)
async def test_chunksums_that_do_not_hold_up_fall_back_to_whole_verification(
    cache: BlobCache, data: bytes, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    source, layer = serving(data)
    source.put_chunksums(NAME, layer.digest, body, "http://cdn.test/blob")
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_plain(blobs, layer)
        try:
            assert await handle.read(10, 100) == data[10:110]
            assert source.requested_bytes(layer.digest) == SIZE, "served before the whole check"
        finally:
            await handle.close()
    assert "invalid chunksums" in caplog.text and "verifying blob" in caplog.text
    assert source.locations == {}, "used the location of chunksums it did not use"


async def test_a_registry_without_chunksums_is_asked_once(cache: BlobCache, data: bytes) -> None:
    source, layer = serving(data)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        for _ in range(3):
            handle = await open_plain(blobs, layer)
            await handle.close()
    assert source.chunksum_requests == [(NAME.repository_key, layer.digest)]


# -- local indexes --------------------------------------------------------------------------


async def test_a_blob_verified_whole_keeps_an_index_and_is_lazy_when_read_again(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = serving(data)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_plain(blobs, layer)
        try:
            assert await handle.read(0, 100) == data[:100]  # the whole blob, checked first
        finally:
            await handle.close()
        await published(cache, layer)
    assert cache.local_index_path(layer.digest).exists()
    os.unlink(cache.blob_path(layer.digest))  # evicted
    source.requests.clear()
    async with blob_layer(cache, source) as (_fetcher, blobs):
        manifest = parse_manifest(
            build_manifest(b"{}", [(MEDIA_TYPE_MODEL, str(layer.digest), layer.size)])
        )
        assert await blobs.verification(NAME, manifest, layer) == "local-index"
        handle = await open_plain(blobs, layer)
        try:
            assert await handle.read(5 * CB + 7, 100) == data[5 * CB + 7 : 5 * CB + 107]
            assert source.requested_bytes(layer.digest) == CB, "not lazy"
            assert await handle.read_all(50_000) == data
        finally:
            await handle.close()
        await published(cache, layer)


async def test_a_blob_with_a_blake3_index_keeps_it_as_its_local_index_without_hashing_again(
    cache: BlobCache, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, layer = serving(data)
    index = index_of(data)
    hashers: list[object] = []

    def counted() -> object:
        hashers.append(blake3.blake3())
        return hashers[-1]

    # Only the whole check's own BLAKE3 hashers are counted (the chunk checks use their own).
    monkeypatch.setattr(wholecheck, "blake3", SimpleNamespace(blake3=counted))
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await read(blobs, NAME, layer, index) == data
        await published(cache, layer)
    assert hashers == [], "the whole check hashed every byte a second time with BLAKE3"
    raw = cache.load_local_index(layer.digest, 1 << 20)
    assert raw == serialize_chunk_index(CB, [index]), "the kept index is not the blob's"


async def test_a_local_index_that_lies_is_distrusted_never_served(
    cache: BlobCache, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    source, layer = serving(data)
    wrong = bytearray(data)
    wrong[2 * CB] ^= 1
    lie = index_of(bytes(wrong), layer.digest)
    cache.save_local_index(layer.digest, serialize_chunk_index(CB, [lie]))
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_plain(blobs, layer)
        try:
            try:
                first: bytes | None = await handle.read_all(50_000)
            except DigestMismatch:
                # The read waiting for the chunk when it met the lie twice; when readahead met
                # it first, the read came later and was served checked whole.
                first = None
            assert first in (None, data)
            assert await handle.read_all(50_000) == data  # checked whole
        finally:
            await handle.close()
        await published(cache, layer)
    assert "not trusting the local-index for this blob" in caplog.text


# -- a chunk index published beside the model (referrers) ----------------------------------


def plain_manifest(layer: Layer) -> Manifest:
    return parse_manifest(
        build_manifest(b"{}", [(MEDIA_TYPE_MODEL, str(layer.digest), layer.size)])
    )


def publish_index(source: FakeSource, subject: Manifest, chunks: BlobChunks) -> None:
    raw = serialize_chunk_index(chunks.chunk_bytes, [chunks])
    index = Layer(source.put(NAME, raw), MEDIA_TYPE_CHUNK_INDEX, len(raw))
    source.publish(NAME, subject.digest, build_index_artifact(subject, index))


async def test_a_published_index_makes_a_model_without_one_lazy(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = serving(data)
    manifest = plain_manifest(layer)
    publish_index(source, manifest, index_of(data))
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await blobs.verification(NAME, manifest, layer) == "published-index"
        handle = await blobs.open(NAME, manifest, layer)
        try:
            assert await handle.read(7 * CB + 5, 100) == data[7 * CB + 5 : 7 * CB + 105]
            assert source.requested_bytes(layer.digest) == CB, "not lazy"
        finally:
            await handle.close()
    assert source.referrer_requests == [(NAME.repository_key, manifest.digest)], "looked twice"
    assert source.chunksum_requests == [], "asked for chunksums it did not need"


async def test_a_published_index_about_another_model_is_not_used(
    cache: BlobCache, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    source, layer = serving(data)
    manifest = plain_manifest(layer)
    other = parse_manifest(
        build_manifest(
            b"{}",
            [
                (MEDIA_TYPE_MODEL, str(layer.digest), layer.size),
                (MEDIA_TYPE_MODEL, str(layer.digest), layer.size),
            ],
        )
    )
    raw = serialize_chunk_index(CB, [index_of(data)])
    index = Layer(source.put(NAME, raw), MEDIA_TYPE_CHUNK_INDEX, len(raw))
    artifact = build_index_artifact(other, index)  # its subject is another manifest
    source.manifests[(NAME.repository_key, Digest.of_bytes(artifact))] = artifact
    source.referrer_lists[(NAME.repository_key, manifest.digest)] = [
        Referrer(Digest.of_bytes(artifact), len(artifact), MEDIA_TYPE_OCI_MANIFEST, ARTIFACT_TYPE)
    ]
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await blobs.verification(NAME, manifest, layer) == "whole"
    assert "is not used: the chunk index artifact is not about" in caplog.text


async def test_the_whole_check_waits_for_a_chunk_another_reader_is_checking_again(
    cache: BlobCache, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A restart left every chunk but the last on disk, one of them foreign. A reader is
    # re-checking that one when the last chunk lands and the blob looks complete: the
    # whole-blob check must wait for the verdict, not hash the foreign bytes and discard it all.
    source, layer = serving(data)
    chunks = index_of(data)
    last, foreign = chunks.layout.count - 1, 4
    partial = PartialFile(cache, layer.digest, chunks.layout, True)
    partial.open()
    partial.write(0, data[: last * CB])
    partial.write(foreign * CB, b"EVIL" * (CB // 4))
    for i in range(last):
        partial.mark(i)
    partial.save_state(bytes(partial.present))
    partial.close()

    release = threading.Event()
    verify = PartialFile.verify_chunk

    def held(self: PartialFile, i: int, c: BlobChunks) -> bool:
        if i == foreign:
            release.wait(20)
        return verify(self, i, c)

    monkeypatch.setattr(PartialFile, "verify_chunk", held)
    async with blob_layer(cache, source) as (fetcher, blobs):
        first, second = await open_blob(blobs, NAME, layer, chunks), None
        try:
            second = await open_blob(blobs, NAME, layer, chunks)
            async with trio.open_nursery() as readers:
                got: dict[str, bytes] = {}

                async def read_foreign() -> None:
                    got["foreign"] = await first.read(foreign * CB, 100)

                readers.start_soon(read_foreign)
                await trio.testing.wait_all_tasks_blocked()  # its re-check is under way
                got["last"] = await second.read(last * CB, 100)  # the last chunk lands
                bf = second.blob
                assert bf is not None
                with trio.fail_after(20):  # the whole-blob check the landing started is over
                    while bf.finalizing is not None:
                        await trio.sleep(0.01)
                release.set()
            assert got["foreign"] == data[foreign * CB : foreign * CB + 100]
            assert got["last"] == data[last * CB : last * CB + 100]
        finally:
            release.set()
            await first.close()
            if second is not None:
                await second.close()
        await published(cache, layer)
        assert fetcher.stats.blob_mismatches == 0, "hashed the foreign chunk before its verdict"


# -- a whole blob answered to a range request (a pull-through mirror that has not stored it) --


async def test_a_whole_blob_answer_is_the_fill_and_no_more_ranges_are_asked(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = faulty(data)
    # Every request is answered with the whole blob, as docker-registry as a pull-through
    # cache does until it has stored the blob: each such answer costs its origin a copy.
    source.fault("whole", digest=layer.digest, times=100, size=SIZE)
    async with blob_layer(cache, source) as (fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        assert await handle.read(0, 100) == data[:100]  # the header: one request
        # Everything else arrives with that one body: readers anywhere in the blob wait for
        # it rather than asking for their own ranges.
        async with trio.open_nursery() as readers:
            for offset in (SIZE - 500, 5 * CB + 7, 3 * CB):
                readers.start_soon(handle.read, offset, 300)
        assert await handle.read_all() == data
        await handle.close()
        assert len(source.requests_for(layer.digest)) == 1, source.requests_for(layer.digest)
        index_bytes = len(serialize_chunk_index(CB, [index_of(data)]))
        assert fetcher.stats.bytes_fetched == SIZE + index_bytes  # each byte once
        assert fetcher.stats.chunk_mismatches == 0


async def test_a_whole_blob_answer_cut_short_is_finished_with_ranges(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = faulty(data)
    # Four chunks of the whole body, then it breaks.
    source.fault("whole_cut", digest=layer.digest, pieces=4, size=SIZE)
    async with blob_layer(cache, source) as (fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        assert await handle.read(SIZE - 10, 10) == data[-10:]
        assert await handle.read_all() == data
        await handle.close()
        requests = source.requests_for(layer.digest)
        # The first request's own chunk is retried; chunks 0-3 came with the broken body and
        # are not asked for again; the rest are asked for as ranges.
        asked = {(r.start, r.end) for r in requests[1:]}
        assert all(start >= 4 * CB for start, _end in asked), asked
        index_bytes = len(serialize_chunk_index(CB, [index_of(data)]))
        assert fetcher.stats.bytes_fetched == SIZE + index_bytes


async def test_a_whole_blob_answer_never_overwrites_chunks_already_here(
    cache: BlobCache, data: bytes
) -> None:
    source, layer = faulty(data)
    async with blob_layer(cache, source) as (fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        assert await handle.read(2 * CB, 10) == data[2 * CB : 2 * CB + 10]  # chunk 2, by range
        # Now the source lies in the whole answers it gives: chunk 2 (already checked and
        # served) is delivered with bad bytes. It is not taken: only chunks nobody has.
        corrupt = bytearray(data)
        corrupt[2 * CB + 5] ^= 0xFF
        source.blobs[(NAME.repository_key, layer.digest)] = bytes(corrupt)
        source.fault("whole", digest=layer.digest, size=SIZE)
        assert await handle.read(7 * CB, 10) == data[7 * CB : 7 * CB + 10]
        source.blobs[(NAME.repository_key, layer.digest)] = data
        assert await handle.read_all() == data
        await handle.close()
        assert fetcher.stats.chunk_mismatches == 0


async def test_a_blob_published_between_the_look_and_the_fetch_is_read_from_blobs(
    cache, data, monkeypatch
):
    """A blob published (by another process, or a pull) after the reader looked in ``blobs/``
    and before its fetch joined the partial: the fetch finds it published, with no partial;
    reads come from the published file, not "chunks keep being evicted" (EIO)."""
    source, layer = serving(data)
    cache.store_bytes(data, layer.digest)  # published meanwhile, by someone else

    async def looked_before_it_was_published(self: Blobs, handle: BlobHandle) -> None:
        return None

    monkeypatch.setattr(Blobs, "_open_published", looked_before_it_was_published)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        handle = await open_blob(blobs, NAME, layer, index_of(data))
        try:
            assert handle.blob is not None and handle.blob.published
            assert await handle.read_all(40_000) == data
        finally:
            await handle.close()
    assert not [r for r in source.requests if r.digest == layer.digest], "fetched it again"
