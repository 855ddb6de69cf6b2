"""The blob table: which blobs this process has open, and each one's users and life.

One entry per ``FetchKey`` (a digest as one manifest vouches for it). The table
alone counts an entry's users (open handles, pulls) and decides when the blob is
opened and closed: opened by the first ``acquire`` (in a task of the nursery given
at construction, so a reader that goes away does not cancel what other readers
share), closed once no user holds it and none of its own tasks runs. A user
joining a blob that is closing waits for it to be out of the table, then opens it
afresh. The blob itself (``Lived``) says how to open, run and close: the table
knows nothing of chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Generic, Protocol, TypeVar

import trio

from modelfs.errors import ModelfsError
from modelfs.flight import Flight, Pulse
from modelfs.tasks import TaskGroup

log = logging.getLogger(__name__)


class Life:
    """One entry's users and life (the table's; a blob only reads it)."""

    __slots__ = ("changed", "closed", "closing", "opened", "users")

    def __init__(self) -> None:
        self.users = 0
        self.closing = False
        self.opened = Flight()  # finished once open; with the error if opening failed
        self.closed = Flight()  # finished once out of the table
        self.changed = Pulse()  # a user left, or a task of the blob ended

    def release(self) -> None:
        """One user less; the blob closes once it has none and nothing of it runs."""
        self.users -= 1
        self.changed.notify()


class Lived(Protocol):
    what: str

    def session(self, life: Life) -> AbstractAsyncContextManager[TaskGroup]:
        """Open the blob (raising if it cannot be), yield its task group, close it on exit."""
        ...

    def rejoined(self) -> None:
        """A first user again, after all had left (a failure may be forgotten)."""


K = TypeVar("K", bound=Hashable)
B = TypeVar("B", bound=Lived)


class BlobTable(Generic[K, B]):
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._open: dict[K, tuple[B, Life]] = {}

    def __iter__(self) -> Iterator[tuple[B, Life]]:
        return iter(list(self._open.values()))

    def get(self, key: K) -> B | None:
        entry = self._open.get(key)
        return entry[0] if entry is not None else None

    async def acquire(self, key: K, make: Callable[[Life], B]) -> B:
        """The blob of ``key``, open, with one more user (``Life.release`` it)."""
        while True:
            entry = self._open.get(key)
            if entry is None:
                life = Life()
                blob = make(life)
                self._open[key] = (blob, life)
                life.users += 1
                try:
                    await self._nursery.start(self._live, key, blob, life)
                except BaseException:
                    life.users -= 1
                    raise
                return blob
            blob, life = entry
            if life.closing:
                # Bounded by the blob's own closing: its tasks have ended, it saves and closes.
                await life.closed.settled(None)
                continue
            if life.users == 0:
                blob.rejoined()
            life.users += 1
            try:
                # Bounded by the opening itself (its waits on other processes are polled
                # within ``claim_wait_seconds``).
                await life.opened.wait(None, blob.what)
            except BaseException:
                life.release()
                raise
            return blob

    async def _live(self, key: K, blob: B, life: Life, task_status: trio.TaskStatus[None]) -> None:
        """A blob's life, as a task of the table's nursery: open, run until no user holds it
        and nothing of it runs, close. An error opening it is raised to ``start``."""
        try:
            async with blob.session(life) as tasks:
                life.opened.finish()
                task_status.started()
                try:
                    while life.users > 0 or tasks.running:
                        # Bounded by its users: each reader's wait has its deadline, and
                        # each task of the blob its own (stall detection, claim waits).
                        await life.changed.wait(None)
                except Exception:  # once started, nothing may reach the daemon's nursery
                    log.exception("%s: failed while open", blob.what)
                life.closing = True
        except ModelfsError as e:
            life.opened.finish(e)
            log.debug("%s: %s", blob.what, e)
            raise
        except BaseException:
            life.opened.finish(ModelfsError(f"{blob.what}: could not be opened"))
            raise
        finally:
            life.closing = True
            if self._open.get(key, (None, None))[0] is blob:
                del self._open[key]
            life.closed.finish()
