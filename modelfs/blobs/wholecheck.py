"""The whole-blob sha256 of a blob being fetched: what decides whether it is published.

A chunk is served once it matches its chunk index; the blob's own digest is
checked once, over every byte, before the blob goes into ``blobs/``, so that a
chunk index that lies can never put foreign bytes under a trusted digest. The
hash follows the blob's leading chunks as they become present, so the check
before publishing has only what is left to hash (usually nothing). It runs in
the fetch context's background thread, at a lower CPU priority: it decides only
when the blob is published, never what a reader gets. It reads the chunks back
from the partial file, where they were just written (from the page cache).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable

import trio

from modelfs.blobs.fetchcontext import MAX_RUN_CHUNKS, FetchContext
from modelfs.blobs.partial import PartialFile
from modelfs.errors import ModelfsError
from modelfs.formats.chunks import ChunkLayout
from modelfs.formats.digest import Digest, hash_file_into
from modelfs.tasks import TaskGroup

log = logging.getLogger(__name__)


class _PrefixHash:
    """The sha256 of chunks ``[0, next)``. ``tlock`` keeps each step whole: the hash
    sees each byte once, in order."""

    __slots__ = ("broken", "h", "next", "tlock")

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.next = 0
        self.tlock = threading.Lock()
        self.broken = False  # a catch-up failed part way: the hash must start over

    def catch_up(self, fd: int, lo: int, hi: int, start: int, end: int) -> None:
        """Worker thread: hash chunks ``[lo, hi)`` (bytes ``[start, end)``) from the file,
        unless the prefix has moved on meanwhile."""
        with self.tlock:
            if self.next != lo or self.broken:
                return
            try:
                hash_file_into(self.h, fd, start, end)
            except BaseException:
                self.broken = True
                self.next = -1  # nothing extends a broken prefix
                raise
            self.next = hi

    def finish(self, fd: int, layout: ChunkLayout) -> str:
        """Worker thread: hash whatever is left of the blob; its whole sha256 (hex)."""
        with self.tlock:
            if self.broken:
                self.h, self.next, self.broken = hashlib.sha256(), 0, False
            start = layout.span(self.next)[0] if self.next < layout.count else layout.size
            hash_file_into(self.h, fd, start, layout.size)
            self.next = layout.count
            return self.h.hexdigest()


class WholeCheck:
    """The whole-blob sha256 of one blob's partial file, computed ahead as chunks arrive.

    ``hashable(i)``: whether chunk ``i`` is on disk and trusted (present, and
    re-checked if an earlier run left it).
    """

    def __init__(
        self,
        ctx: FetchContext,
        layout: ChunkLayout,
        what: str,
        hashable: Callable[[int], bool],
    ) -> None:
        self.ctx = ctx
        self.layout = layout
        self.what = what
        self.hashable = hashable
        self._prefix = _PrefixHash()
        self._lock = trio.Lock()  # one trio-side task schedules hashing at a time
        self._running = False

    def advance(self, tasks: TaskGroup, partial: PartialFile | None) -> None:
        """Hash ahead if the next chunk of the prefix is there (in a task of ``tasks``)."""
        ph = self._prefix
        if partial is None or self._running or not 0 <= ph.next < self.layout.count:
            return
        if self.hashable(ph.next):
            self._running = True
            tasks.spawn(f"hash {self.what}", self._hash_ahead, ph, partial)

    async def _hash_ahead(self, ph: _PrefixHash, partial: PartialFile) -> None:
        count = self.layout.count
        try:
            while ph is self._prefix and 0 <= ph.next < count and self.hashable(ph.next):
                async with self._lock:
                    if ph is not self._prefix or partial.fd < 0:
                        return
                    lo = hi = ph.next
                    while hi < count and hi - lo < MAX_RUN_CHUNKS and self.hashable(hi):
                        hi += 1
                    if hi == lo:
                        return
                    start, end = self.layout.span(lo)[0], self.layout.span(hi - 1)[1]
                    await self.ctx.background.run(ph.catch_up, partial.fd, lo, hi, start, end)
        except (ModelfsError, OSError) as e:
            # The check before publishing hashes whatever is left.
            log.debug("%s: hashing ahead stopped: %s", self.what, e)
        finally:
            self._running = False

    async def digest(self, partial: PartialFile) -> Digest:
        """The blob's sha256: what the prefix hash has not covered yet is hashed now."""
        ph = self._prefix
        async with self._lock:
            try:
                hexdigest = await self.ctx.background.run(ph.finish, partial.fd, self.layout)
            except BaseException:
                self.reset()  # hashed part of a range: start over next time
                raise
            return Digest(hexdigest)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget what was hashed (the partial file was discarded)."""
        self._prefix = _PrefixHash()
