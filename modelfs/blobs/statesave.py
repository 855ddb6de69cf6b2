"""A partial blob's state on disk: which chunks are present, saved soon after they land.

The bitmap lives in the ``PartialFile``; ``StateSaver`` decides when it is written
(``STATE_FLUSH_SECONDS`` after the first chunk that changed it, so a kill -9 costs
at most about that much fetching again), makes sure a save and the closing of the
file never interleave, and saves once more when the blob is closed.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from modelfs.blobs.fetchcontext import FetchContext
from modelfs.blobs.partial import PartialFile
from modelfs.errors import ModelfsError
from modelfs.tasks import TaskGroup

log = logging.getLogger(__name__)


class StateSaver:
    def __init__(self, ctx: FetchContext, what: str) -> None:
        self.ctx = ctx
        self.what = what
        self.partial: PartialFile | None = None
        self.dirty = False
        self.frozen = False  # published, or publishing: nothing more to save
        self.failed = False  # the cache cannot be written: nothing to save
        self._scheduled = False  # a save is due within ``state_flush_seconds``
        # Saving state, closing the partial file and publishing it must not interleave.
        self._lock = trio.Lock()

    def changed(self, tasks: TaskGroup) -> None:
        """The bitmap changed: save it within ``state_flush_seconds`` (in a task of ``tasks``)."""
        self.dirty = True
        if not self._scheduled:
            self._scheduled = True
            tasks.spawn(f"flush {self.what}", self._save_soon)

    async def _save_soon(self) -> None:
        try:
            await trio.sleep(self.ctx.settings.state_flush_seconds)
        finally:
            self._scheduled = False  # a change from now on is due in the next save
        try:
            await self.save()
        except ModelfsError as e:
            log.warning("%s: could not save fetch progress: %s", self.what, e)

    async def save(self) -> None:
        """Persist which chunks are present, if anything changed since the last save."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._save_locked()

    async def _save_locked(self) -> None:
        partial = self.partial
        if not self.dirty or self.frozen or self.failed or partial is None or partial.fd < 0:
            return
        snapshot = bytes(partial.present)
        self.dirty = False
        try:
            await self.ctx.in_thread(partial.save_state, snapshot)
        except BaseException:
            self.dirty = True
            raise

    async def close(self) -> None:
        """Save what is left to save and close the partial file (shielded: also at shutdown)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self.partial is None:
                    return
                with contextlib.suppress(ModelfsError):
                    await self._save_locked()
                self.partial.close()

    async def publish(self) -> None:
        """Move the complete, verified file into ``blobs/``; no save runs meanwhile or after
        (a state written after publishing would outlive the partial it describes)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                assert self.partial is not None
                await self.ctx.in_thread(self.partial.publish)
                self.frozen = True
