"""No wait on another process is unbounded, whoever holds the other end (issue: security).

Another modelfs process of the cache, stopped (SIGSTOP) or hostile, can hold the locks of a
blob's lock file for as long as it likes: the byte of joining, the byte of membership, a
small blob's claim, chunk claims. The holder here is a real second process
(tests/support/lock_holder.py) that lets go after ``HOLD_SECONDS``: a read that waited for
it takes that long, one that does without it ends within ``claim_wait_seconds`` and a fetch.
"""

from __future__ import annotations

import os
import subprocess
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support import lock_holder
from unit import test_blob_layer as blob_layer_tests
from unit.test_blob_layer import (
    CB,
    NAME,
    SIZE,
    blob_layer,
    index_of,
    layer_of,
    published,
    read,
    serving,
)

from modelfs.blobs import sharing
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.fetchcontext import Verify

data = blob_layer_tests.data
cache = blob_layer_tests.cache

CHUNKS = (SIZE + CB - 1) // CB
HOLD_SECONDS = 20.0
CLAIM_WAIT_SECONDS = 0.5
# What a read that does without the holder may take: the claim wait (twice, for a chunk) and
# the fetch itself, with a wide margin for a loaded machine. Well under HOLD_SECONDS.
BOUND_SECONDS = 8.0


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.communicate(timeout=10)  # closes its pipes


def hold(procs: list[subprocess.Popen[str]], path: Path, *spans: int | str) -> None:
    proc, line = lock_holder.start(path, *spans, seconds=HOLD_SECONDS)
    procs.append(proc)
    assert line == "held", line


def test_no_lock_call_of_modelfs_waits() -> None:
    import modelfs

    root = Path(modelfs.__file__).parent
    waiting = []
    for p in root.rglob("*.py"):
        with open(p, "rb") as f:
            names = {t.string for t in tokenize.tokenize(f.readline) if t.type == tokenize.NAME}
        if names & {"F_OFD_SETLKW", "F_SETLKW", "LOCK_EX", "lockf"}:
            waiting.append(str(p.relative_to(root)))
    assert not waiting, f"a blocking lock call (F_OFD_SETLKW) in {waiting}"


@pytest.mark.parametrize("byte", [sharing.JOIN, sharing.MEMBER], ids=["join", "member"])
async def test_a_lock_file_held_by_another_process_delays_a_read_only_within_the_bound(
    cache: BlobCache, data: bytes, holders: list[subprocess.Popen[str]], byte: int
) -> None:
    source, layer = serving(data)
    hold(holders, cache.lock_path(layer.digest), byte)
    async with blob_layer(cache, source, claim_wait_seconds=CLAIM_WAIT_SECONDS) as (_f, blobs):
        began = trio.current_time()
        with trio.move_on_after(BOUND_SECONDS + HOLD_SECONDS):
            got = await read(blobs, NAME, layer, index_of(data), CB)
        took = trio.current_time() - began
        assert took < BOUND_SECONDS, f"the read waited {took:.1f}s for another process's lock"
        assert got == data
        # Fetched privately (a scratch file), and still checked and published.
        await published(cache, layer)
    assert cache.blob_path(layer.digest).read_bytes() == data


async def test_a_small_blob_another_process_claims_is_fetched_here_within_the_bound(
    cache: BlobCache, holders: list[subprocess.Popen[str]]
) -> None:
    small = os.urandom(CB // 2)
    source, layer = serving(small)
    hold(holders, cache.lock_path(layer.digest), sharing.SMALL)
    async with blob_layer(cache, source, claim_wait_seconds=CLAIM_WAIT_SECONDS) as (_f, blobs):
        began = trio.current_time()
        got = await read(blobs, NAME, layer, None, CB)
        took = trio.current_time() - began
    assert took < BOUND_SECONDS, f"the read waited {took:.1f}s for another process's claim"
    assert got == small
    assert cache.blob_path(layer.digest).read_bytes() == small


def chunk_claims(cache: BlobCache, data: bytes) -> tuple[Path, str]:
    """The lock file and the span of chunk bytes a process fetching every chunk holds."""
    return cache.lock_path(layer_of(data).digest), f"{sharing.CHUNKS}-{sharing.CHUNKS + CHUNKS - 1}"


async def test_chunks_claimed_by_a_process_that_makes_no_progress_are_read_within_the_bound(
    cache: BlobCache, data: bytes, holders: list[subprocess.Popen[str]]
) -> None:
    # What a stopped `modelfs pull` leaves: every chunk claimed, none ever marked.
    source, layer = serving(data)
    path, span = chunk_claims(cache, data)
    hold(holders, path, span)
    settings = {"claim_wait_seconds": CLAIM_WAIT_SECONDS, "read_wait_seconds": 3.0}
    async with blob_layer(cache, source, **settings) as (_f, blobs):
        began = trio.current_time()
        got = await read(blobs, NAME, layer, index_of(data), CB)
        took = trio.current_time() - began
    assert got == data, "a read got EIO or wrong bytes while another process held its chunks"
    assert took < BOUND_SECONDS
    # Never written over the chunks that process claimed: they are still empty on disk.
    with open(cache.partial_path(layer.digest), "rb") as f:
        assert f.read(CB) == bytes(CB)


async def test_a_pull_finishes_a_blob_whose_chunks_a_stalled_process_claims(
    cache: BlobCache, data: bytes, holders: list[subprocess.Popen[str]]
) -> None:
    source, layer = serving(data)
    path, span = chunk_claims(cache, data)
    hold(holders, path, span)
    async with blob_layer(cache, source, claim_wait_seconds=CLAIM_WAIT_SECONDS) as (fetcher, _b):
        bf = await fetcher.acquire(NAME, layer, index_of(data), Verify.INDEXED)
        try:
            with trio.move_on_after(BOUND_SECONDS + HOLD_SECONDS):
                began = trio.current_time()
                await bf.complete()
            took = trio.current_time() - began
        finally:
            bf.release()
    assert took < BOUND_SECONDS, f"the pull waited {took:.1f}s for a stalled process"
    assert cache.blob_path(layer.digest).read_bytes() == data
