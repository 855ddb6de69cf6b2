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
import os
from collections.abc import Callable

import blake3
import trio

from modelfs.blobs.fetchcontext import MAX_RUN_CHUNKS, FetchContext
from modelfs.blobs.partial import PartialFile
from modelfs.errors import CacheError, ModelfsError
from modelfs.formats.chunks import BlobChunks, ChunkLayout
from modelfs.formats.digest import HASH_READ_BYTES, Digest
from modelfs.tasks import TaskGroup

log = logging.getLogger(__name__)

LOCAL_SOURCE = "local-index"


class _PrefixHash:
    """The sha256 of chunks ``[0, next)``, and on the same bytes the BLAKE3 digests of the
    blob's chunks of ``local_bytes`` (its local index, kept once the blob is published).
    Its steps run one at a time, each whole, under ``WholeCheck``'s lock: the hash sees
    each byte once, in order."""

    __slots__ = (
        "broken",
        "h",
        "local",
        "local_bytes",
        "local_filled",
        "local_hashes",
        "next",
    )

    def __init__(self, local_bytes: int) -> None:
        self.local_bytes = local_bytes
        self._restart()

    def _restart(self) -> None:
        self.h = hashlib.sha256()
        self.next = 0
        self.broken = False  # a catch-up failed part way: the hash must start over
        self.local = blake3.blake3()
        self.local_filled = 0
        self.local_hashes: list[bytes] = []

    def _feed(self, fd: int, start: int, end: int) -> None:
        pos = start
        while pos < end:
            data = os.pread(fd, min(HASH_READ_BYTES, end - pos), pos)
            if not data:
                raise CacheError(f"file ended at byte {pos} of {end} while hashing")
            self.h.update(data)
            view = memoryview(data)
            while view:
                n = min(len(view), self.local_bytes - self.local_filled)
                self.local.update(view[:n])
                self.local_filled += n
                view = view[n:]
                if self.local_filled == self.local_bytes:
                    self.local_hashes.append(self.local.digest())
                    self.local, self.local_filled = blake3.blake3(), 0
            pos += len(data)

    def catch_up(self, fd: int, lo: int, hi: int, start: int, end: int) -> None:
        """Worker thread: hash chunks ``[lo, hi)`` (bytes ``[start, end)``) from the file,
        unless the prefix has moved on meanwhile."""
        if self.next != lo or self.broken:
            return
        try:
            self._feed(fd, start, end)
        except BaseException:
            self.broken = True
            self.next = -1  # nothing extends a broken prefix
            raise
        self.next = hi

    def finish(self, fd: int, layout: ChunkLayout) -> str:
        """Worker thread: hash whatever is left of the blob; its whole sha256 (hex)."""
        if self.broken:
            self._restart()
        start = layout.span(self.next)[0] if self.next < layout.count else layout.size
        self._feed(fd, start, layout.size)
        if self.local_filled:
            self.local_hashes.append(self.local.digest())
            self.local, self.local_filled = blake3.blake3(), 0
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
        self._prefix = _PrefixHash(ctx.settings.chunk_bytes)
        # One step of the hash at a time, hashing ahead or the final check: held across
        # the step in the background thread (``BackgroundThread.run`` returns only once
        # the step has ended, even when cancelled), so no thread-side lock is needed.
        self._lock = trio.Lock()
        self._running = False  # a task hashing ahead exists: chunks landing start no other

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
                    going = await self.ctx.background.run(
                        self._step, ph, partial, lo, hi, start, end
                    )
                    if not going:
                        return
        except (ModelfsError, OSError) as e:
            # The check before publishing hashes whatever is left.
            log.debug("%s: hashing ahead stopped: %s", self.what, e)
        finally:
            self._running = False

    @staticmethod
    def _step(
        ph: _PrefixHash, partial: PartialFile, lo: int, hi: int, start: int, end: int
    ) -> bool:
        """Background thread: hash chunks ``[lo, hi)``; False (and nothing hashed) if another
        process sharing the partial has published the blob: its sha256 matched there."""
        if partial.published_elsewhere():
            return False
        ph.catch_up(partial.fd, lo, hi, start, end)
        return True

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
        self._prefix = _PrefixHash(self.ctx.settings.chunk_bytes)

    def local_index(self, digest: Digest) -> BlobChunks:
        """The blob's local chunk index, once ``digest`` has matched (call after it)."""
        ph = self._prefix
        return BlobChunks(
            digest,
            self.layout.size,
            ph.local_bytes,
            tuple(ph.local_hashes),
            "blake3",
            source=LOCAL_SOURCE,
        )
