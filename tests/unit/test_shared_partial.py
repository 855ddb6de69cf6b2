"""Processes of one cache share a blob's partial file and fetch each chunk once (``sharing``).

Two ``Fetcher``s stand for two processes: each has its own fetch states and its own
open file descriptions of the blob's lock file, and open-file-description locks
conflict between descriptions as they do between processes. The source is the
in-process fake of tests/unit/test_blob_layer.py; tests/mount/test_shared_cache.py
runs real processes (two mounts, a mount and a pull) against a real registry.
"""

from __future__ import annotations

import os

import pytest
import trio
from support.sources import FakeSource, Faulty
from unit import test_blob_layer as blob_layer_tests
from unit.test_blob_layer import (
    CB,
    NAME,
    OTHER,
    SIZE,
    blob_layer,
    index_of,
    layer_of,
    no_byte_twice,
    open_blob,
    published,
    read,
    serving,
)

from modelfs.blobs import peers
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.reader import Blobs
from modelfs.blobs.sharing import SharedPartial
from modelfs.formats.chunks import BlobChunks
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name

CHUNKS = (SIZE + CB - 1) // CB

# The blob layer tests' fixtures: a blob's random bytes, an empty cache.
data = blob_layer_tests.data
cache = blob_layer_tests.cache


async def read_backward(blobs: Blobs, name: Name, layer: Layer, chunks: BlobChunks | None) -> bytes:
    """Read chunk by chunk from the end: two readers going opposite ways meet in the middle."""
    handle = await open_blob(blobs, name, layer, chunks)
    try:
        parts = []
        for i in reversed(range(CHUNKS)):
            parts.append(await handle.read(i * CB, CB))
        return b"".join(reversed(parts))
    finally:
        await handle.close()


# -- the lock file's protocol ---------------------------------------------------------------


def test_members_share_chunk_marks_and_claims(cache: BlobCache) -> None:
    path = cache.lock_path(Digest("ab" * 32))
    a = SharedPartial.join(path, "key", 5)
    assert a is not None and a.first
    a.joined()
    b = SharedPartial.join(path, "key", 5)
    assert b is not None and not b.first
    b.joined()
    try:
        # A process with other chunk checks gets no share of it.
        assert SharedPartial.join(path, "another key", 5) is None
        assert a.claim(2)
        assert not b.claim(2), "two members fetching one chunk"
        a.mark(2)
        a.release(2)
        assert b.marked(2) and b.claim(2)
        b.release(2)
        with a.alone() as alone:
            assert not alone
        # Nobody may remove or start over a partial another process uses.
        assert cache.lock_blob(Digest("ab" * 32)) is None
    finally:
        b.close()
    with a.alone() as alone:
        assert alone
    a.close()
    fd = cache.lock_blob(Digest("ab" * 32))
    assert fd is not None
    os.close(fd)
    # A member that joins after everyone left starts the marks over: what they say was
    # written by processes gone (a crash can lose the bytes); the chunk state decides.
    c = SharedPartial.join(path, "key", 5)
    assert c is not None and c.first and c.marks() == bytes(5)
    c.close()


def test_a_dead_members_claims_are_let_go(cache: BlobCache) -> None:
    path = cache.lock_path(Digest("cd" * 32))
    a = SharedPartial.join(path, "key", 3)
    assert a is not None
    a.joined()
    b = SharedPartial.join(path, "key", 3)
    assert b is not None
    assert a.claim(0) and a.claim(1)
    assert not b.claim(0)
    a.close()  # what the kernel does when a process dies
    assert b.claim(0) and b.claim(1)
    b.close()


# -- two processes, one blob ----------------------------------------------------------------


@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "whole"])
async def test_two_processes_reading_one_blob_fetch_each_chunk_once(
    cache: BlobCache, data: bytes, indexed: bool
) -> None:
    source, layer = serving(data)
    source.piece_delay = 0.01  # slow enough that both are fetching at once
    chunks = index_of(data) if indexed else None
    got: dict[str, bytes] = {}
    async with blob_layer(cache, source) as (_fa, a), blob_layer(cache, source) as (_fb, b):

        async def forward() -> None:
            got["a"] = await read(a, NAME, layer, chunks, CB)

        async def backward() -> None:
            got["b"] = await read_backward(b, NAME, layer, chunks)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            nursery.start_soon(backward)
        await published(cache, layer)
    assert got == {"a": data, "b": data}
    assert no_byte_twice(source, layer.digest)
    assert source.requested_bytes(layer.digest) == SIZE
    with open(cache.blob_path(layer.digest), "rb") as f:
        assert f.read() == data
    assert not cache.state_path(layer.digest).exists(), "a chunk state outlived its partial"


async def test_a_process_with_another_origin_fetches_privately(
    cache: BlobCache, data: bytes
) -> None:
    # Without an index, chunks one repository sent never stand in for another's.
    source, layer = serving(data)
    source.put(OTHER, data)
    source.piece_delay = 0.01
    got: dict[str, bytes] = {}
    async with blob_layer(cache, source) as (_fa, a), blob_layer(cache, source) as (_fb, b):

        async def one(blobs: Blobs, name: Name) -> None:
            got[name.host] = await read(blobs, name, layer, None, CB)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, a, NAME)
            nursery.start_soon(one, b, OTHER)
        await published(cache, layer)
    assert got == {NAME.host: data, OTHER.host: data}
    by_repo = {
        repo: sum(
            r.end - r.start for r in source.requests_for(layer.digest) if r.repository == repo
        )
        for repo in (NAME.repository_key, OTHER.repository_key)
    }
    assert by_repo == {NAME.repository_key: SIZE, OTHER.repository_key: SIZE}


async def test_a_liar_in_another_process_never_reaches_an_honest_reader(
    cache: BlobCache, data: bytes
) -> None:
    """A registry claiming the honest model's digest, with an index of its own bytes, fills
    the shared partial first. The honest reader re-checks those chunks by its own index, gets
    its own bytes, and never writes over the liar's (which the liar's readers still get)."""
    evil = os.urandom(SIZE)
    source = FakeSource()
    honest_layer = layer_of(data)
    source.put(NAME, data)
    source.put(OTHER, evil, honest_layer.digest)
    lie = index_of(evil, honest_layer.digest)
    async with blob_layer(cache, source) as (_fl, liar), blob_layer(cache, source) as (_fh, honest):
        lh = await open_blob(liar, OTHER, honest_layer, lie)
        try:
            assert await lh.read(0, 3 * CB) == evil[: 3 * CB]
            assert await read(honest, NAME, honest_layer, index_of(data), CB) == data
            # The liar's readers keep what the liar's index vouches for; the chunks the honest
            # reader wrote fail the liar's index and are not written over either.
            for i in range(CHUNKS):
                assert await lh.read(i * CB, CB) == evil[i * CB : (i + 1) * CB]
        finally:
            await lh.close()
    assert not cache.has_blob(honest_layer.digest, SIZE) or (
        cache.blob_path(honest_layer.digest).read_bytes() == data
    )


async def test_a_chunk_another_process_stops_fetching_is_fetched_here(
    cache: BlobCache, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "ELSEWHERE_POLL_SECONDS", (0.005, 0.01))
    layer = layer_of(data)
    stuck, honest = Faulty(FakeSource()), FakeSource()
    stuck.put(NAME, data)
    honest.put(NAME, data)
    stuck.fault("stall", digest=layer.digest)
    got: list[bytes] = []
    async with blob_layer(cache, honest) as (_fh, b):
        async with trio.open_nursery() as nursery:
            gone = trio.CancelScope()

            async def stuck_process() -> None:
                with gone:
                    async with blob_layer(cache, stuck) as (_fs, a):
                        handle = await open_blob(a, NAME, layer, index_of(data))
                        await handle.read(0, CB)  # claims the first chunks, then nothing

            async def reader() -> None:
                got.append(await read(b, NAME, layer, index_of(data), CB))

            nursery.start_soon(stuck_process)
            with trio.fail_after(10):
                while not stuck.requests_for(layer.digest):
                    await trio.sleep(0.01)
            nursery.start_soon(reader)
            await trio.sleep(0.3)
            assert not got, "read chunks another process had claimed and not delivered"
            gone.cancel()  # that process dies: the kernel drops its locks
        await published(cache, layer)
    assert got == [data]
    assert honest.requested_bytes(layer.digest) == SIZE


async def test_two_processes_fetch_a_small_blob_once(cache: BlobCache) -> None:
    small = os.urandom(CB // 2)  # at most one chunk: fetched whole, no partial file
    source, layer = serving(small)
    source.piece_delay = 0.2  # the first process is still fetching when the second asks
    got: list[bytes] = []
    async with blob_layer(cache, source) as (_fa, a), blob_layer(cache, source) as (_fb, b):

        async def one(blobs: Blobs) -> None:
            got.append(await read(blobs, NAME, layer, None, CB))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, a)
            nursery.start_soon(one, b)
    assert got == [small, small]
    assert source.requested_bytes(layer.digest) == len(small)
    assert cache.blob_path(layer.digest).read_bytes() == small
