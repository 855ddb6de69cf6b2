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
