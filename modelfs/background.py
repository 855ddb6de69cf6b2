"""Blocking work that must not compete with readers for the CPU: one thread at a lower priority.

The whole-blob sha256 of a blob being fetched decides only when it is published,
never what a reader gets (each chunk is checked against the chunk index before it
is served). On a machine whose cores are busy receiving, checking and serving
bytes, that hash would take a full core from readers; run at ``nice`` +10, it uses
the CPU readers leave, and catches up as soon as they pause. Linux gives each
thread its own nice value; the thread is modelfs's own, so it never hands a
lowered priority to trio's shared worker threads. It exits when idle and is
started again on the next job.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

BACKGROUND_NICE = 10
IDLE_SECONDS = 5.0

_Job = tuple[Callable[..., Any], tuple[Any, ...], Callable[[outcome.Outcome[Any]], None]]


class BackgroundThread:
    """Runs jobs one at a time, in order, in a thread of lower CPU priority."""

    def __init__(self, nice: int = BACKGROUND_NICE, name: str = "modelfs-background") -> None:
        self.nice = nice
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the background thread; its result or exception.

        Like ``trio.to_thread.run_sync``, the caller waits for the job to end even if
        it is cancelled meanwhile (the job holds buffers and descriptors of the caller's).
        """
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[Any]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        with self._lock:
            self._jobs.put((fn, args, deliver))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

        def abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _work(self) -> None:
        if self.nice:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while True:
            try:
                fn, args, deliver = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            deliver(outcome.capture(fn, *args))
