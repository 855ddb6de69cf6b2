"""tasks.spawn: a task that fails ends alone; the nursery (the mount) goes on."""

from __future__ import annotations

import errno
import logging

import trio
import trio.testing

from modelfs.errors import Transient
from modelfs.tasks import spawn


async def test_a_raw_oserror_in_a_task_is_logged_and_the_nursery_survives(caplog):
    ran = trio.Event()

    async def broken() -> None:
        raise OSError(errno.EIO, "pread failed")

    async def fine() -> None:
        ran.set()

    with caplog.at_level(logging.DEBUG, logger="modelfs.tasks"):
        async with trio.open_nursery() as n:
            spawn(n, "hash blob x", broken)
            spawn(n, "flush blob x", fine)
            await trio.testing.wait_all_tasks_blocked()
    assert ran.is_set()
    failures = [r for r in caplog.records if "hash blob x failed unexpectedly" in r.getMessage()]
    assert failures and failures[0].exc_info is not None


async def test_a_modelfs_error_is_logged_at_the_callers_level(caplog):
    async def transient() -> None:
        raise Transient("registry went away")

    with caplog.at_level(logging.DEBUG, logger="modelfs.tasks"):
        async with trio.open_nursery() as n:
            spawn(n, "eviction", transient, level=logging.WARNING)
    [record] = [r for r in caplog.records if r.name == "modelfs.tasks"]
    assert record.levelno == logging.WARNING and "registry went away" in record.getMessage()


async def test_cancellation_passes_through():
    async with trio.open_nursery() as n:
        spawn(n, "sleeper", trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        n.cancel_scope.cancel()
