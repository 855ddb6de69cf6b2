"""The background thread: jobs run in order, at a lower CPU priority, and report back to trio."""

from __future__ import annotations

import os
import threading
import time

import pytest
import trio

from modelfs import background
from modelfs.background import BackgroundThread


async def test_jobs_return_their_results_and_raise_their_errors() -> None:
    bg = BackgroundThread()
    assert await bg.run(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await bg.run(lambda: 1 / 0)
    assert await bg.run(str.upper, "still working") == "STILL WORKING"


async def test_jobs_run_at_the_lower_priority_in_a_thread_of_their_own() -> None:
    bg = BackgroundThread(nice=7)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def where() -> tuple[int, int]:
        tid = threading.get_native_id()
        return tid, os.getpriority(os.PRIO_PROCESS, tid)

    tid, nice = await bg.run(where)
    assert tid != threading.get_native_id()
    assert nice == min(base + 7, 19)
    # The trio thread (and trio's worker threads) keep their priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    _, worker_nice = await trio.to_thread.run_sync(where)
    assert worker_nice == base


async def test_jobs_run_one_at_a_time_in_order() -> None:
    bg = BackgroundThread()
    seen: list[int] = []
    active = []

    def job(n: int) -> None:
        active.append(n)
        assert len(active) == 1
        time.sleep(0.01)
        seen.append(n)
        active.remove(n)

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(bg.run, job, n)
            await trio.sleep(0)  # queued in this order
    assert seen == [0, 1, 2, 3, 4]


async def test_a_cancelled_caller_waits_for_its_job_to_end() -> None:
    bg = BackgroundThread()
    ended = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        ended.set()

    with trio.move_on_after(0.01):
        await bg.run(slow)
    # The job's buffers and descriptors are the caller's: it has finished before run returns.
    assert ended.is_set()


async def test_the_thread_exits_when_idle_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "IDLE_SECONDS", 0.05)
    bg = BackgroundThread()
    first = await bg.run(threading.get_ident)

    def gone() -> bool:
        # Forgotten (``_thread`` None) just before it returns: gone once it has ended too.
        alive = any(t.ident == first and t.is_alive() for t in threading.enumerate())
        return bg._thread is None and not alive

    with trio.fail_after(20):
        while not gone():
            await trio.sleep(0.01)
    assert await bg.run(lambda: 42) == 42
