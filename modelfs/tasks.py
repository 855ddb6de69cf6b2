"""The one way the daemon starts a long-lived task: errors end the task, never the nursery.

An exception escaping a task started in the daemon's nursery would cancel every
other task and end the mount. ``spawn`` runs each task behind one guard: a
modelfs error is logged at the level the caller chose, anything else with its
traceback; cancellation passes through.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from modelfs.errors import ModelfsError

log = logging.getLogger(__name__)


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


class TaskGroup:
    """Tasks of one owner (a blob being fetched) in a nursery of its own, each behind the guard.

    The owner holds the nursery open (``async with trio.open_nursery()``) and so
    lives at least as long as every task it started; ``idle`` tells it when none is
    left, so it can close as soon as nothing of it runs and nobody reads it.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.running = 0
        self._changed = trio.Event()

    def spawn(self, what: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self.running += 1

        async def counted() -> None:
            try:
                await fn(*args)
            finally:
                self.running -= 1
                self.changed()

        spawn(self._nursery, what, counted)

    def changed(self) -> None:
        """Wake whoever waits in ``wait_changed`` (a task ended, or the owner's users did)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()
