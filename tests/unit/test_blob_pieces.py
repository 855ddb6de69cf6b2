"""The blob layer's pieces: the blob table (users and life), chunk flights, small blobs and
chunks present alone; range requests, trust, publishing and peers of one large blob.

Each against in-process stand-ins: a blob that only records its life for the table, the
in-memory source (tests/support/sources.py), with faults wrapped around it (``Faulty``), and a
real cache in a temporary directory. How they work together is tests/unit/test_blob_layer.py's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from support.sources import FakeSource, Faulty

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.chunkflights import ChunkFlights
from modelfs.blobs.fetchcontext import BlobEvents, FetchContext, FetchSettings, Verify
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.partial import PartialFile
from modelfs.blobs.peers import NoPeers, Peers
from modelfs.blobs.present import Evicted, Present
from modelfs.blobs.small import SmallBlobs
from modelfs.blobs.table import BlobTable, Life
from modelfs.errors import CacheError, CacheFull, DigestMismatch, Transient
from modelfs.formats.chunks import BlobChunks, ChunkLayout, chunk_hash
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer
from modelfs.formats.names import parse_name
from modelfs.tasks import TaskGroup

NAME = parse_name("127.0.0.1:5000/library/model:tag")


class Recorded:
    """A blob for the table: says when it opens and closes; ``fail`` makes opening fail."""

    def __init__(self, life: Life, log: list[str], fail: Exception | None = None) -> None:
        self.life = life
        self.log = log
        self.fail = fail
        self.what = "blob test"
        self.tasks: TaskGroup | None = None

    @asynccontextmanager
    async def session(self, life: Life) -> AsyncIterator[TaskGroup]:
        self.log.append("open")
        if self.fail is not None:
            raise self.fail
        try:
            async with trio.open_nursery() as nursery:
                self.tasks = TaskGroup(nursery, life.changed)
                yield self.tasks
        finally:
            self.log.append("close")

    def rejoined(self) -> None:
        self.log.append("rejoined")


# -- the blob table ---------------------------------------------------------------------------


async def test_a_blob_is_opened_once_and_closed_when_its_last_user_and_task_are_gone() -> None:
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        table: BlobTable[str, Recorded] = BlobTable(nursery)
        made: list[Recorded] = []

        def make(life: Life) -> Recorded:
            made.append(Recorded(life, log))
            return made[-1]

        a = await table.acquire("k", make)
        b = await table.acquire("k", make)
        assert a is b and len(made) == 1 and a.life.users == 2
        done = trio.Event()
        assert a.tasks is not None
        a.tasks.spawn("work", done.wait)
        a.life.release()
        a.life.release()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["open"], "closed while a task of the blob still ran"
        assert table.get("k") is a
        done.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["open", "close"] and table.get("k") is None
        assert a.life.closed.done


async def test_a_blob_that_cannot_be_opened_raises_to_every_user_and_leaves_the_table() -> None:
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        table: BlobTable[str, Recorded] = BlobTable(nursery)
        with pytest.raises(CacheError, match="disk"):
            await table.acquire("k", lambda life: Recorded(life, log, CacheError("disk gone")))
        assert table.get("k") is None
        again = await table.acquire("k", lambda life: Recorded(life, log))
        assert log == ["open", "open"]
        again.life.release()


async def test_a_first_user_after_all_left_is_told_to_the_blob() -> None:
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        table: BlobTable[str, Recorded] = BlobTable(nursery)
        blob = await table.acquire("k", lambda life: Recorded(life, log))
        assert blob.tasks is not None
        going = trio.Event()
        blob.tasks.spawn("publish", going.wait)  # keeps it open with no user
        blob.life.release()
        await trio.testing.wait_all_tasks_blocked()
        assert await table.acquire("k", lambda life: Recorded(life, log)) is blob
        assert log == ["open", "rejoined"]
        blob.life.release()
        going.set()


# -- chunk flights ----------------------------------------------------------------------------


async def test_a_chunk_has_one_flight_and_a_finished_one_leaves_the_table() -> None:
    flights = ChunkFlights()
    first = flights.claim(3)
    assert 3 in flights and flights.get(3) is first and flights.of(range(5)) == {3: first}
    with pytest.raises(AssertionError):
        flights.claim(3)
    flights.finish(3, first, DigestMismatch("chunk 3"))
    assert 3 not in flights and not flights
    with pytest.raises(DigestMismatch):
        await first.wait(1, "chunk 3")
    second = flights.claim(3)  # the next reader after a failure starts afresh
    flights.finish(3, first)  # a late finish of the old flight leaves the new one alone
    assert flights.get(3) is second and not second.done
    flights.finish_chunk(3)
    assert second.done and not flights


async def test_a_reader_waits_for_a_chunk_within_its_own_deadline(autojump_clock) -> None:
    flights = ChunkFlights()
    flight = flights.claim(0)
    with pytest.raises(Transient, match="no data after 5s"):
        await flight.wait(5, "chunk 0")
    flights.finish(0, flight)
    await flight.wait(5, "chunk 0")


# -- small blobs ------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    c = BlobCache(tmp_path / "cache")
    c.prepare()
    return c


@asynccontextmanager
async def small_blobs(cache: BlobCache, source: FakeSource) -> AsyncIterator[SmallBlobs]:
    async with trio.open_nursery() as nursery:
        yield SmallBlobs(FetchContext(cache, source, nursery, FetchSettings(chunk_bytes=1 << 16)))
        nursery.cancel_scope.cancel()


async def test_readers_of_one_small_blob_share_one_request_and_it_is_published(
    cache: BlobCache,
) -> None:
    data = os.urandom(5000)
    source = FakeSource()
    digest = source.put(NAME, data)
    layer = Layer(digest, MEDIA_TYPE_MODEL, len(data))
    got: list[bytes] = []
    async with small_blobs(cache, source) as small:
        assert small.is_small(layer)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(lambda: _append(got, small.fetch(NAME, layer)))
        assert small.busy_digests() == set()
    assert got == [data] * 8
    assert len(source.requests_for(digest)) == 1
    assert cache.blob_path(digest).read_bytes() == data


async def test_a_small_blob_that_is_not_its_digest_is_refused_and_not_published(
    cache: BlobCache,
) -> None:
    data = os.urandom(5000)
    source = FakeSource()
    lie = Digest.of_bytes(b"something else")
    source.put(NAME, data, lie)
    layer = Layer(lie, MEDIA_TYPE_MODEL, len(data))
    async with small_blobs(cache, source) as small:
        with pytest.raises(DigestMismatch):
            await small.fetch(NAME, layer)
    assert not cache.has_blob(lie, len(data))
    assert source.distrusted, "the source was not told its bytes did not match"


async def _append(out: list[bytes], fetching) -> None:  # type: ignore[no-untyped-def]
    out.append(await fetching)


# -- the pieces of a large blob, over an honest source with faults around it -------------------

CB = 64 << 10


def index_of(data: bytes) -> BlobChunks:
    hashes = tuple(chunk_hash("blake3", data[i : i + CB]) for i in range(0, len(data), CB))
    return BlobChunks(Digest.of_bytes(data), len(data), CB, hashes, "blake3")


@asynccontextmanager
async def fetcher_over(
    cache: BlobCache, source: object, events: BlobEvents | None = None
) -> AsyncIterator[Fetcher]:
    async with trio.open_nursery() as nursery:
        fetcher = Fetcher(cache, source, nursery, FetchSettings(chunk_bytes=CB), events)  # type: ignore[arg-type]
        try:
            yield fetcher
        finally:
            await fetcher.save_all()
            nursery.cancel_scope.cancel()


async def test_a_retried_run_asks_only_for_what_the_cut_body_did_not_bring(
    cache: BlobCache,
) -> None:
    data = os.urandom(8 * CB)
    honest = FakeSource()
    honest.put(NAME, data)
    faulty = Faulty(honest)
    faulty.fault("cut", pieces=1)
    layer = Layer(Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))
    async with fetcher_over(cache, faulty) as fetcher:
        bf = await fetcher.acquire(NAME, layer, index_of(data), Verify.INDEXED)
        try:
            assert await bf.read(0, 4 * CB, range(4)) == data[: 4 * CB]
        finally:
            bf.release()
    asked = [(r.start, r.end) for r in honest.requests_for(layer.digest)]
    assert asked == [(0, 4 * CB), (CB, 4 * CB)], "the retry asked again for a chunk it had"


async def test_a_chunk_that_fails_twice_ends_the_trust_in_the_index_for_that_blob(
    cache: BlobCache,
) -> None:
    data = os.urandom(4 * CB)
    honest = FakeSource()
    honest.put(NAME, data)
    faulty = Faulty(honest)
    faulty.fault("corrupt", at=2 * CB + 7, times=2)
    layer = Layer(Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))
    index = index_of(data)
    async with fetcher_over(cache, faulty) as fetcher:
        bf = await fetcher.acquire(NAME, layer, index, Verify.INDEXED)
        try:
            assert isinstance(bf.peers, Peers) and bf.verify is Verify.INDEXED
            with pytest.raises(DigestMismatch):
                await bf.read(2 * CB, 10, range(2, 3))
            assert bf.trust.index is None and bf.verify is Verify.WHOLE
            assert index in fetcher.distrusted
            assert fetcher.stats.chunk_mismatches == 2
        finally:
            bf.release()


async def test_a_blob_whose_chunks_match_but_whole_digest_does_not_is_discarded(
    cache: BlobCache,
) -> None:
    data = os.urandom(3 * CB)
    lie = Digest.of_bytes(b"the digest the manifest names")
    honest = FakeSource()
    honest.put(NAME, data, lie)
    hashes = tuple(chunk_hash("blake3", data[i : i + CB]) for i in range(0, len(data), CB))
    index = BlobChunks(lie, len(data), CB, hashes, "blake3")
    layer = Layer(lie, MEDIA_TYPE_MODEL, len(data))
    discarded: list[Digest] = []
    async with fetcher_over(cache, honest, BlobEvents(discarded=discarded.append)) as fetcher:
        bf = await fetcher.acquire(NAME, layer, index, Verify.INDEXED)
        try:
            with pytest.raises(DigestMismatch, match="does not match its digest"):
                await bf.complete(wait_seconds=20)
            assert bf.publishing.finalizing is None and not bf.published
        finally:
            bf.release()
    assert discarded == [lie] and not cache.has_blob(lie, len(data))


async def test_a_second_fetch_of_a_digest_in_this_process_has_no_peers(cache: BlobCache) -> None:
    data = os.urandom(2 * CB)
    source = FakeSource()
    source.put(NAME, data)
    layer = Layer(Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))
    async with fetcher_over(cache, source) as fetcher:
        first = await fetcher.acquire(NAME, layer, index_of(data), Verify.INDEXED)
        second = await fetcher.acquire(NAME, layer, None, Verify.DEFERRED)
        try:
            assert first is not second
            assert isinstance(first.peers, Peers)
            assert type(second.peers) is NoPeers, "a scratch file is nobody else's"
            assert await second.read(0, 2 * CB, range(2)) == data
        finally:
            first.release()
            second.release()


async def test_a_full_cache_is_reported_once_per_blob_however_often_it_is_opened(
    cache: BlobCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(4 * CB)
    source = FakeSource()
    source.put(NAME, data)
    layer = Layer(Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))

    def full(self: PartialFile, start: int, end: int) -> None:
        raise CacheFull("no space left for the cache")

    monkeypatch.setattr(PartialFile, "reserve", full)
    caplog.set_level(logging.DEBUG, logger="modelfs.blobs.blobfetch")
    async with fetcher_over(cache, source) as fetcher:
        for _ in range(2):
            bf = await fetcher.acquire(NAME, layer, index_of(data), Verify.INDEXED)
            try:
                assert await bf.read(0, 4 * CB, range(4)) == data
            finally:
                bf.release()
            with trio.fail_after(10):
                while fetcher.table.get(bf.key) is not None:
                    await trio.sleep(0.01)  # closed: the next open is a new fetch
        assert fetcher.stats.cache_write_failures == 2
    warnings = [r for r in caplog.records if "cannot write the cache" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING", "DEBUG"]


# -- chunks present -------------------------------------------------------------------------


async def test_chunks_held_in_memory_are_bounded_and_a_dropped_one_is_read_again() -> None:
    data = os.urandom(4 * CB)
    layout = ChunkLayout(len(data), CB)
    settings = SimpleNamespace(memory_chunks=2)
    blob = SimpleNamespace(
        ctx=SimpleNamespace(settings=settings),
        layout=layout,
        partial=None,
        size=len(data),
        published=False,
    )
    present = Present(blob)  # type: ignore[arg-type]
    for i in range(3):
        start, end = layout.span(i)
        present.keep(i, data[start:end])
    assert [present.has(i) for i in range(4)] == [False, True, True, False]
    assert await present.read(CB + 5, CB, range(1, 3)) == data[CB + 5 : 2 * CB + 5]
    with pytest.raises(Evicted):
        await present.read(0, 10, range(0, 1))
