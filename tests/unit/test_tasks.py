"""tasks.spawn: a task that fails ends alone; the nursery (the mount) goes on. tasks.supervise: a
loop for the mount's life that fails is started again, its failure counted and logged once."""

from __future__ import annotations

import errno
import itertools
import logging

import trio
import trio.testing

from modelfs.errors import Transient
from modelfs.tasks import RESTART_FIRST_SECONDS, RESTART_MAX_SECONDS, Failures, spawn, supervise


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


# -- loops for the mount's life: supervise ------------------------------------------------------


async def test_a_loop_that_fails_is_started_again_with_a_doubling_pause_and_logged_once(
    autojump_clock, caplog
):
    started: list[float] = []

    async def loop() -> None:
        started.append(trio.current_time())
        if len(started) <= 4:
            raise TypeError("'<' not supported between instances of 'Name' and 'Name'")
        await trio.sleep_forever()

    failures = Failures()
    with caplog.at_level(logging.DEBUG, logger="modelfs.tasks"):
        async with trio.open_nursery() as n:
            supervise(n, "cache eviction", loop, failures=failures)
            await trio.sleep(3600)
            n.cancel_scope.cancel()
    assert len(started) == 5, "the loop was not started again after each failure"
    pauses = [round(b - a, 3) for a, b in itertools.pairwise(started)]
    assert pauses == [RESTART_FIRST_SECONDS * 2**i for i in range(4)]
    assert failures.counts == {"cache eviction": 4}
    assert failures.last["cache eviction"].startswith("TypeError: '<' not supported")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "a failure that repeats was logged more than once"
    assert errors[0].exc_info is not None
    assert "cache eviction failed unexpectedly" in errors[0].getMessage()


async def test_the_pause_is_capped(autojump_clock):
    started: list[float] = []

    async def loop() -> None:
        started.append(trio.current_time())
        raise OSError(errno.EIO, "statvfs failed")

    async with trio.open_nursery() as n:
        supervise(n, "cache eviction", loop, failures=Failures())
        await trio.sleep(20 * RESTART_MAX_SECONDS)
        n.cancel_scope.cancel()
    pauses = [b - a for a, b in itertools.pairwise(started)]
    assert max(pauses) == RESTART_MAX_SECONDS
    assert pauses[-3:] == [RESTART_MAX_SECONDS] * 3


async def test_a_loop_that_returns_is_not_started_again(autojump_clock):
    runs = []

    async def once() -> None:
        runs.append(1)

    async with trio.open_nursery() as n:
        supervise(n, "signals", once, failures=Failures())
    assert runs == [1]


async def test_the_evictor_survives_a_failing_check_and_checks_again(autojump_clock, tmp_path):
    from modelfs.blobs.blobcache import BlobCache
    from modelfs.blobs.eviction import CacheBounds, Evictor

    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    checks: list[float] = []

    def evict(busy: object) -> list[object]:
        checks.append(trio.current_time())
        if len(checks) == 1:
            raise TypeError("a bug in one pass")
        return []

    async def in_thread(fn, *args):
        return fn(*args)

    failures = Failures()
    evictor = Evictor(cache, CacheBounds(), in_use=set, in_thread=in_thread, failures=failures)
    evictor._evict = evict  # type: ignore[method-assign]
    async with trio.open_nursery() as n:
        supervise(n, "cache eviction", evictor.run, failures=failures)
        evictor.kick()
        await trio.sleep(RESTART_FIRST_SECONDS + 0.5)
        n.cancel_scope.cancel()
    # The kick the failed pass took is not lost: the loop started again checks at once.
    assert len(checks) == 2 and checks[1] - checks[0] == RESTART_FIRST_SECONDS
    assert failures.counts == {"cache eviction": 1}
