"""Single flight, two ways: one task does the work for a key while the others wait for it.

- ``KeyedLock`` (as s3ql's ``MultiLock``): one task at a time holds a key; the
  others queue, and on their turn usually find the work done (the resolver's name
  lookups, a manifest's chunk index, a registry host's 401 answer). A key's lock
  exists only while someone holds or waits for it.
- ``Flight``: the outcome of work that runs in a nursery of its own (a chunk, a
  small blob), which any number of readers wait on, each with its own deadline:
  a reader that gives up does not cancel what the others wait for.

And ``poll``: waiting for what another process holds (a lock, a chunk claim), which
no event announces: tried again with backoff, never past a deadline.
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

    def busy(self, key: K) -> bool:
        return key in self._locks

    def __len__(self) -> int:
        return len(self._locks)


class Flight:
    """One piece of work (a chunk, a small blob) that any number of readers can wait on."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.error: ModelfsError | None = None
        self.value: bytes | None = None

    def finish(self, error: ModelfsError | None = None, value: bytes | None = None) -> None:
        self.error = error
        self.value = value
        self.event.set()

    async def wait(self, seconds: float | None, what: str) -> None:
        """Wait for the flight; a reader's wait is bounded (``seconds``), a pull's is not (None)."""
        if seconds is None:
            await self.event.wait()
        else:
            with trio.move_on_after(seconds):
                await self.event.wait()
        if not self.event.is_set():
            raise Transient(f"{what}: no data after {seconds:.0f}s")
        if self.error is not None:
            # Each waiter raises its own copy: one exception object must not collect
            # several tasks' tracebacks.
            raise copy.copy(self.error)


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
