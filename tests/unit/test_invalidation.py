"""Invalidations the kernel refuses are normal: a debug line, never an ERROR or a traceback.

Without a FUSE session libfuse refuses every notification (EINVAL): what a daemon meets when
an invalidation queued just before unmount is submitted after the session closed (pyfuse3's
own queue logged it as ``ERROR pyfuse3: Failed to submit invalidate_entry request``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator

import pytest
import trio

from modelfs.formats.digest import Digest
from modelfs.fs.fuse_ops import Operations

WAIT_SECONDS = 10.0
DIGEST = Digest.of_bytes(b"model")


class Tree:
    """The two questions invalidation asks the tree: which entries, which inodes."""

    def blob_removed(self, digest: Digest) -> list[tuple[int, str]]:
        return [(7, "model.gguf")] if digest == DIGEST else []

    def inodes_of(self, digest: Digest) -> list[int]:
        return [9] if digest == DIGEST else []


@pytest.fixture
async def ops(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Operations]:
    caplog.set_level(logging.DEBUG)
    async with trio.open_nursery() as nursery:
        ops = Operations(Tree(), nursery, "/")  # type: ignore[arg-type]
        yield ops
        ops.close_notifications()


async def wait_for_log(caplog: pytest.LogCaptureFixture, about: str) -> None:
    """Until a line mentions ``about`` (the invalidation was tried and answered)."""
    with trio.move_on_after(WAIT_SECONDS):
        while not any(about in r.getMessage() for r in caplog.records):
            await trio.sleep(0.01)
        return
    raise AssertionError(f"no log line about {about} in {WAIT_SECONDS:.0f}s")


def assert_quiet(caplog: pytest.LogCaptureFixture, expected: str) -> None:
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, f"a refused invalidation was logged as a problem: {problems}"
    assert not [r for r in caplog.records if r.exc_info], "a refused invalidation left a traceback"
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert expected in said, said


async def test_an_entry_invalidation_the_kernel_refuses_logs_no_error(
    ops: Operations, caplog: pytest.LogCaptureFixture
) -> None:
    ops.blob_removed(DIGEST)
    await wait_for_log(caplog, "model.gguf")
    assert_quiet(caplog, "did not invalidate entry b'model.gguf' of inode 7")


async def test_an_inode_invalidation_the_kernel_refuses_logs_no_warning(
    ops: Operations, caplog: pytest.LogCaptureFixture
) -> None:
    ops.invalidate(DIGEST)
    await wait_for_log(caplog, "inode 9")
    assert_quiet(caplog, "did not invalidate inode 9")


async def test_nothing_is_submitted_once_closing_has_begun(
    ops: Operations, caplog: pytest.LogCaptureFixture
) -> None:
    ops.blob_removed(DIGEST)
    await wait_for_log(caplog, "model.gguf")
    ops.close_notifications()
    before = len(caplog.records)
    ops.blob_removed(DIGEST)
    ops.invalidate(DIGEST)
    # Closing ended the one thread that submits: anything submitted would be logged by now.
    assert not [t for t in threading.enumerate() if t.name == "modelfs-invalidate"]
    assert [r.getMessage() for r in caplog.records[before:]] == [], "submitted after closing"
