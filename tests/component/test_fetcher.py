"""modelfs.blobs.fetcher against a real registry (through the counting proxy), no mount."""

from __future__ import annotations

import hashlib
import logging

import pytest
import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.fetchcontext import FetchSettings, Verify
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.partial import PartialFile
from modelfs.formats.chunks import CHUNK_BYTES, BlobChunks, ChunkLayout, chunk_count
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer
from modelfs.formats.names import parse_name
from modelfs.registry.client import Registry


@pytest.fixture
def source(smollm2_gguf) -> bytes:
    return smollm2_gguf.read_bytes()


@pytest.fixture
def layer(source) -> Layer:
    return Layer(Digest.of_bytes(source), MEDIA_TYPE_MODEL, len(source))


@pytest.fixture
def chunks(source, layer) -> BlobChunks:
    hashes = tuple(
        hashlib.sha256(source[i : i + CHUNK_BYTES]).digest()
        for i in range(0, len(source), CHUNK_BYTES)
    )
    return BlobChunks(layer.digest, layer.size, CHUNK_BYTES, hashes)


@pytest.fixture
def cache(tmp_path) -> BlobCache:
    c = BlobCache(tmp_path / "cache")
    c.prepare()
    return c


async def with_fetcher(cache, fn):
    registry = Registry()
    try:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, registry, nursery, FetchSettings())
            try:
                return await fn(fetcher)
            finally:
                await fetcher.save_all()
                nursery.cancel_scope.cancel()
    finally:
        await registry.aclose()


def model_bytes(proxy, layer) -> int:
    return sum(r.body_bytes for r in proxy.blob_records() if layer.digest.hex in r.path)


async def test_sixteen_waiters_on_one_chunk_share_one_request(
    proxy, smollm2_pushed, cache, layer, chunks, source
):
    name = parse_name(f"{proxy.host}/library/smollm2:135m")

    async def run(fetcher):
        bf = await fetcher.acquire(name, layer, chunks, Verify.INDEXED)
        try:
            async with trio.open_nursery() as n:
                for _ in range(16):
                    n.start_soon(bf.ensure, 7, 8)
            return await bf.read(7 * CHUNK_BYTES, 1000, range(7, 8))
        finally:
            bf.release()

    assert await with_fetcher(cache, run) == source[7 * CHUNK_BYTES : 7 * CHUNK_BYTES + 1000]
    assert len([r for r in proxy.blob_records() if layer.digest.hex in r.path]) == 1


async def test_a_complete_partial_is_published_on_open_without_the_network(
    proxy, smollm2_pushed, cache, layer, chunks, source
):
    # A previous run fetched every chunk and was stopped before publishing.
    p = PartialFile(cache, layer.digest, ChunkLayout(layer.size, CHUNK_BYTES), True)
    p.open()
    p.reserve(0, layer.size)
    p.write(0, source)
    for i in range(chunk_count(layer.size, CHUNK_BYTES)):
        p.mark(i)
    p.save_state(bytes(p.present))
    p.close()
    name = parse_name(f"{proxy.host}/library/smollm2:135m")

    async def run(fetcher):
        bf = await fetcher.acquire(name, layer, chunks, Verify.INDEXED)
        try:
            with trio.fail_after(30):
                while not bf.published:
                    await trio.sleep(0.01)
        finally:
            bf.release()

    await with_fetcher(cache, run)
    assert cache.has_blob(layer.digest, layer.size)
    assert model_bytes(proxy, layer) == 0


async def test_a_chunk_corrupted_on_disk_is_caught_on_reload_and_refetched(
    proxy, smollm2_pushed, cache, layer, chunks, source, caplog
):
    name = parse_name(f"{proxy.host}/library/smollm2:135m")

    async def fill(fetcher):
        bf = await fetcher.acquire(name, layer, chunks, Verify.INDEXED)
        try:
            await bf.ensure(2, 4)
        finally:
            bf.release()

    await with_fetcher(cache, fill)
    # Bit rot (or a torn write) in chunk 3 of the partial file, which the state says is present.
    with open(cache.partial_path(layer.digest), "r+b") as f:
        f.seek(3 * CHUNK_BYTES + 10)
        f.write(b"\xff\xff\xff")
    proxy.reset()
    caplog.set_level(logging.WARNING, logger="modelfs.blobs.fetcher")

    async def reread(fetcher):
        bf = await fetcher.acquire(name, layer, chunks, Verify.INDEXED)
        try:
            await bf.ensure(2, 4)
            return await bf.read(2 * CHUNK_BYTES, 2 * CHUNK_BYTES, range(2, 4))
        finally:
            bf.release()

    assert await with_fetcher(cache, reread) == source[2 * CHUNK_BYTES : 4 * CHUNK_BYTES]
    assert "chunk 3 on disk does not match the chunk index" in caplog.text
    spans = [r.span for r in proxy.blob_records() if layer.digest.hex in r.path]
    assert spans == [(3 * CHUNK_BYTES, 4 * CHUNK_BYTES)], "only the damaged chunk is fetched again"
