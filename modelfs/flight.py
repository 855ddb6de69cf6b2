"""Single flight and waiting: one task does the work for a key while the others wait for it,
and every wait is given its deadline by whoever waits.

- ``KeyedLock`` (as s3ql's ``MultiLock``): one task at a time holds a key; the
  others queue, and on their turn usually find the work done (the resolver's name
  lookups, a manifest's chunk index, a registry host's 401 answer). A key's lock
  exists only while someone holds or waits for it.
- ``Flight``: the outcome of work that runs in a nursery of its own (a chunk, a
  small blob, a publish), which any number of readers wait on, each with its own
  deadline: a reader that gives up does not cancel what the others wait for.
- ``Pulse``: a condition variable for one thread (trio's): something changed (a
  task ended, a chunk of a whole-blob body landed), whoever waits looks again.

And ``poll``: waiting for what another process holds (a lock, a chunk claim), which
no event announces: tried again with backoff, never past a deadline.

Every wait here takes its bound as a required argument; ``None`` (no bound) must be
written out, and is only for what is bounded otherwise (a pull, the life of a blob
bounded by its readers' own waits).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

from modelfs.errors import ModelfsError, Transient

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

# How often ``poll`` tries again: from the first delay, doubling to the last.
POLL_SECONDS = (0.005, 0.05)


class KeyedLock(Generic[K]):
    """One holder per key; a key's lock is dropped when its last holder or waiter leaves."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


async def _wait_for(event: trio.Event, seconds: float | None) -> bool:
    """Whether ``event`` was set within ``seconds`` (None: as long as it takes)."""
    if seconds is None:
        await event.wait()
    else:
        with trio.move_on_after(seconds):
            await event.wait()
    return event.is_set()


class Flight:
    """One piece of work (a chunk, a small blob) that any number of readers can wait on."""

    __slots__ = ("_event", "error", "value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.error: ModelfsError | None = None
        self.value: bytes | None = None

    @property
    def done(self) -> bool:
        """Finished, well or not."""
        return self._event.is_set()

    @property
    def has_waiters(self) -> bool:
        """Whether a reader waits for it now (a failed readahead nobody waits for is quieter)."""
        return self._event.statistics().tasks_waiting > 0

    def finish(self, error: ModelfsError | None = None, value: bytes | None = None) -> None:
        """The outcome; the first one counts (a flight finished twice keeps its first)."""
        if self._event.is_set():
            return
        self.error = error
        self.value = value
        self._event.set()

    async def settled(self, seconds: float | None) -> bool:
        """Whether the flight finished within ``seconds``; its outcome is not raised."""
        return await _wait_for(self._event, seconds)

    async def wait(self, seconds: float | None, what: str) -> None:
        """Wait for the flight; a reader's wait is bounded (``seconds``), a pull's is not (None).
        Raises the flight's error, or Transient past the bound."""
        if not await _wait_for(self._event, seconds):
            raise Transient(f"{what}: no data after {seconds:.0f}s")
        if self.error is not None:
            # Each waiter raises its own copy: one exception object must not collect
            # several tasks' tracebacks.
            raise copy.copy(self.error)


class Pulse:
    """Something changed; whoever waits looks again (a condition variable without a lock:
    all its users run on trio's thread, so the state they look at cannot change between
    their look and their wait)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        """Wake every task waiting now; a later wait waits for the next notify."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self, seconds: float | None) -> bool:
        """Until the next ``notify``: True, or False once ``seconds`` passed without one."""
        return await _wait_for(self._event, seconds)


async def poll(
    attempt: Callable[[], Awaitable[T | None]],
    seconds: float,
    backoff: tuple[float, float] = POLL_SECONDS,
) -> T | None:
    """``attempt()`` until it returns something (not None), trying again with backoff; None
    once ``seconds`` have passed. For what another process holds: there is no event to wait
    on, and a blocking lock call could wait for ever (its holder may be stopped, or hostile)."""
    deadline = trio.current_time() + seconds
    delay, most = backoff
    while True:
        got = await attempt()
        if got is not None:
            return got
        left = deadline - trio.current_time()
        if left <= 0:
            return None
        await trio.sleep(min(delay, left))
        delay = min(delay * 2, most)
