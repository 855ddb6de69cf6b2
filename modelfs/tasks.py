"""The ways the daemon starts tasks: errors end a task, never the nursery; loops meant to run for
the mount's life come back after a failure.

An exception escaping a task started in the daemon's nursery would cancel every
other task and end the mount. ``spawn`` runs each task behind one guard: a
modelfs error is logged at the level the caller chose, anything else with its
traceback; cancellation passes through.

A loop that keeps the mount's promises (eviction keeps the cache within its bound,
the signal watcher unmounts on SIGTERM, the control socket answers ``modelfs
status``) must not end for good because one pass of it met a bug or a disk that
misbehaved: ``supervise`` starts it again after a capped, doubling pause, and
``Failures`` counts what failed for ``modelfs status``, logging each kind of failure
once (its traceback the first time, then one DEBUG line per repeat).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from modelfs.errors import ModelfsError
from modelfs.flight import Pulse

log = logging.getLogger(__name__)

# A loop that failed is started again after this pause, doubled at each failure in a row.
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
# A loop that ran this long before failing is healthy again: its next pause is the first.
RESTART_HEALTHY_SECONDS = 300.0


class Failures:
    """Unexpected failures of the daemon's own work, by what failed (shown by ``modelfs status``).

    Each kind of failure (what, and the exception's type) is logged once at ERROR with its
    traceback: a bug a loop keeps meeting at every pass must not flood the log.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: dict[str, str] = {}
        self._logged: set[tuple[str, str]] = set()

    def record(self, what: str, exc: BaseException, *, level: int = logging.WARNING) -> None:
        """Count a failure of ``what``; a modelfs error is logged at ``level``, anything else
        (a bug) at ERROR with its traceback."""
        self.counts[what] += 1
        self.last[what] = f"{type(exc).__name__}: {exc}"
        key = (what, type(exc).__name__)
        if key in self._logged:
            log.debug("%s failed again (%d times): %s", what, self.counts[what], self.last[what])
            return
        self._logged.add(key)
        if isinstance(exc, ModelfsError):
            log.log(level, "%s: %s", what, exc)
        else:
            log.error("%s failed unexpectedly", what, exc_info=exc)


def spawn(
    nursery: trio.Nursery,
    what: str,
    fn: Callable[..., Awaitable[object]],
    *args: object,
    level: int = logging.DEBUG,
) -> None:
    """Start ``fn(*args)`` in ``nursery`` behind the guard."""

    async def guarded() -> None:
        try:
            await fn(*args)
        except ModelfsError as e:
            log.log(level, "%s: %s", what, e)
        except Exception:
            log.exception("%s failed unexpectedly", what)

    nursery.start_soon(guarded, name=what)


def supervise(
    nursery: trio.Nursery,
    what: str,
    fn: Callable[..., Awaitable[object]],
    *args: object,
    failures: Failures,
    level: int = logging.WARNING,
) -> None:
    """Run the loop ``fn(*args)`` in ``nursery`` for the mount's life (``keep_running``)."""
    nursery.start_soon(
        functools.partial(keep_running, what, fn, *args, failures=failures, level=level),
        name=what,
    )


async def keep_running(
    what: str,
    fn: Callable[..., Awaitable[object]],
    *args: object,
    failures: Failures,
    level: int = logging.WARNING,
) -> None:
    """Run ``fn(*args)`` until it returns (or is cancelled), starting it again when it raises.

    Each failure is counted in ``failures`` (and logged once: a modelfs error at ``level``,
    anything else at ERROR with its traceback); ``fn`` starts again after
    ``RESTART_FIRST_SECONDS``, doubled at each failure in a row up to ``RESTART_MAX_SECONDS``.
    """
    pause = RESTART_FIRST_SECONDS
    while True:
        began = trio.current_time()
        try:
            await fn(*args)
            return
        except Exception as e:
            failures.record(what, e, level=level)
        if trio.current_time() - began >= RESTART_HEALTHY_SECONDS:
            pause = RESTART_FIRST_SECONDS
        log.debug("%s: starting again in %.0f s", what, pause)
        await trio.sleep(pause)
        pause = min(pause * 2, RESTART_MAX_SECONDS)


class TaskGroup:
    """Tasks of one owner (a blob being fetched) in a nursery of its own, each behind the guard.

    The owner holds the nursery open (``async with trio.open_nursery()``) and so
    lives at least as long as every task it started; ``changed`` pulses when one of
    them ends (and when the owner says so: its users left), so it can close as soon
    as nothing of it runs and nobody reads it (``running`` is 0).
    """

    def __init__(self, nursery: trio.Nursery, changed: Pulse | None = None) -> None:
        self._nursery = nursery
        self.running = 0
        self.changed = changed if changed is not None else Pulse()

    def spawn(self, what: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self.running += 1

        async def counted() -> None:
            try:
                await fn(*args)
            finally:
                self.running -= 1
                self.changed.notify()

        spawn(self._nursery, what, counted)
