"""Fetches ended by shutdown (the daemon's nursery cancelled at unmount or on a signal) tell
their readers so: ``ShuttingDown``, an INFO line and EIO, never an internal error."""

from __future__ import annotations

import pytest
import trio
from unit import test_blob_layer as blob_layer_tests
from unit.test_blob_layer import CB, NAME, SIZE, blob_layer, faulty, index_of, open_blob

from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import ModelfsError, ShuttingDown

cache = blob_layer_tests.cache


@pytest.mark.parametrize("size", [SIZE, CB // 2], ids=["chunked", "small"])
async def test_readers_of_a_fetch_ended_by_shutdown_are_told_so(
    cache: BlobCache, size: int
) -> None:
    """The daemon's nursery ends at shutdown, fetches in flight with it: a reader waiting on
    one gets ``ShuttingDown`` (an INFO line, EIO), not an internal error."""
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    source, layer = faulty(data)
    source.fault("stall", digest=layer.digest, times=100)
    told: list[BaseException] = []
    async with trio.open_nursery() as readers:
        async with blob_layer(cache, source) as (_fetcher, blobs):
            handle = await open_blob(blobs, NAME, layer, index_of(data))

            async def reader() -> None:
                try:
                    await handle.read(0, 100)
                except ModelfsError as e:
                    told.append(e)

            readers.start_soon(reader)
            with trio.fail_after(10):
                while not source.requests_for(layer.digest):
                    await trio.sleep(0.01)
        # blob_layer has cancelled its nursery: the stalled fetch ended with it.
        with trio.fail_after(10):
            while not told:
                await trio.sleep(0.01)
    assert isinstance(told[0], ShuttingDown), repr(told[0])
