"""Fetches ended by shutdown (the daemon's nursery cancelled at unmount or on a signal, its
waits on other processes stopped) tell their readers so: ``ShuttingDown``, an INFO line and
EIO, never an internal error or a failed wait."""

from __future__ import annotations

import subprocess

import pytest
import trio
from unit import test_blob_layer as blob_layer_tests
from unit import test_bounded_waits as bounded_waits_tests
from unit.test_blob_layer import (
    CB,
    NAME,
    SIZE,
    blob_layer,
    faulty,
    index_of,
    open_blob,
    read,
    serving,
)
from unit.test_bounded_waits import chunk_claims, hold

from modelfs.blobs import sharing
from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import ModelfsError, ShuttingDown

cache = blob_layer_tests.cache
holders = bounded_waits_tests.holders


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


async def test_a_reader_waiting_on_another_process_is_told_of_the_shutdown(
    cache: BlobCache, holders: list[subprocess.Popen[str]]
) -> None:
    """A read waiting for chunks another modelfs process of the cache claims ends when the
    mount stops (``stop_waiting``) with ``ShuttingDown``, not as a failed wait."""
    data = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
    source, layer = serving(data)
    path, span = chunk_claims(cache, data)
    hold(holders, path, span)
    told: list[BaseException] = []
    # Long waits: only the shutdown ends this one within the test.
    settings = {"claim_wait_seconds": 60.0, "read_wait_seconds": 60.0}
    async with blob_layer(cache, source, **settings) as (fetcher, blobs):

        async def reader() -> None:
            try:
                await read(blobs, NAME, layer, index_of(data), CB)
            except ModelfsError as e:
                told.append(e)

        def waiting() -> bool:
            return any(
                (f := bf.flights.get(0)) is not None and f.has_waiters for bf, _ in fetcher.table
            )

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                while not waiting():
                    await trio.sleep(0.01)
                fetcher.stop_waiting()
    assert len(told) == 1 and isinstance(told[0], ShuttingDown), told


async def test_readers_of_a_blob_still_opening_at_shutdown_are_told_so(
    cache: BlobCache, holders: list[subprocess.Popen[str]]
) -> None:
    """Readers of a blob whose opening waits on another process's lock file (joining its
    partial) when the mount stops get ``ShuttingDown`` at once, the first one too: an opening
    runs in its first reader's task until it is open, so the daemon's ``stop_waiting``, not
    the cancelled nursery, is what ends it."""
    data = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
    source, layer = serving(data)
    hold(holders, cache.lock_path(layer.digest), sharing.JOIN)
    told: list[BaseException] = []
    async with (
        trio.open_nursery() as readers,
        blob_layer(cache, source, claim_wait_seconds=60.0) as (fetcher, blobs),
    ):

        async def reader() -> None:
            try:
                await read(blobs, NAME, layer, index_of(data), CB)
            except Exception as e:
                told.append(e)

        readers.start_soon(reader)
        readers.start_soon(reader)
        with trio.fail_after(10):
            while not any(life.users == 2 for _bf, life in fetcher.table):
                await trio.sleep(0.01)
        fetcher.stop_waiting()
        # Far below the holder's HOLD_SECONDS and the claim wait.
        with trio.fail_after(5):
            while len(told) < 2:
                await trio.sleep(0.01)
    assert all(isinstance(e, ShuttingDown) for e in told), told
