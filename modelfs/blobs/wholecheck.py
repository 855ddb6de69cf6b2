"""The whole-blob sha256 of a blob being fetched: what decides whether it is published.

A chunk is served once it matches its chunk index; the blob's own digest is
checked once, over every byte, before the blob goes into ``blobs/``, so that a
chunk index that lies can never put foreign bytes under a trusted digest. The
hash follows the blob's leading chunks as they become present, so the check
before publishing has only what is left to hash (usually nothing). It runs in
the fetch context's background thread, at a lower CPU priority: it decides only
when the blob is published, never what a reader gets. It reads the chunks back
from the partial file, where they were just written (from the page cache), into
one reused buffer per hashing thread (a fresh 4 MiB ``bytes`` for each read cost
a third more CPU: bench/COLD.md, the profile by stage).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
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

# The buffer the chunks are read back into, one per hashing thread (the background thread).
_buffers = threading.local()


def _read_buffer() -> memoryview:
    buf = getattr(_buffers, "view", None)
    if buf is None:
        buf = _buffers.view = memoryview(bytearray(HASH_READ_BYTES))
    return buf


class _PrefixHash:
    """The sha256 of chunks ``[0, next)``, and on the same bytes the BLAKE3 digests of the
    blob's chunks of ``local_bytes`` (its local index, kept once the blob is published),
    unless ``same_index`` already holds them.
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
        "same_index",
    )

    def __init__(self, local_bytes: int, same_index: tuple[bytes, ...] | None = None) -> None:
        self.local_bytes = local_bytes
        # The blob's own BLAKE3 index at ``local_bytes``: what the local index would hash
        # again (a second BLAKE3 pass over every byte, ~0.2 CPU-s per GiB here).
        self.same_index = same_index
        self._restart()

    def _restart(self) -> None:
        self.h = hashlib.sha256()
        self.next = 0
        self.broken = False  # a catch-up failed part way: the hash must start over
        self.local = blake3.blake3() if self.same_index is None else None
        self.local_filled = 0
        self.local_hashes: list[bytes] = []

    def _feed(self, fd: int, start: int, end: int) -> None:
        buf = _read_buffer()
        pos = start
        while pos < end:
            got = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
            if not got:
                raise CacheError(f"file ended at byte {pos} of {end} while hashing")
            view = buf[:got]
            self.h.update(view)  # sha256 of >2 KiB releases the GIL
            pos += got
            if self.local is None:
                continue  # the blob's own index is its local index
            while view:
                n = min(len(view), self.local_bytes - self.local_filled)
                self.local.update(view[:n])
                self.local_filled += n
                view = view[n:]
                if self.local_filled == self.local_bytes:
                    self.local_hashes.append(self.local.digest())
                    self.local, self.local_filled = blake3.blake3(), 0

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
        index: BlobChunks | None = None,
    ) -> None:
        self.ctx = ctx
        self.layout = layout
        self.what = what
        self.hashable = hashable
        self._same_index = _same_as_local(index, layout.size, ctx.settings.chunk_bytes)
        self._prefix = self._new_prefix()
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
        self._prefix = self._new_prefix()

    def _new_prefix(self) -> _PrefixHash:
        return _PrefixHash(self.ctx.settings.chunk_bytes, self._same_index)

    def local_index(self, digest: Digest) -> BlobChunks:
        """The blob's local chunk index, once ``digest`` has matched (call after it)."""
        ph = self._prefix
        hashes = ph.same_index if ph.same_index is not None else tuple(ph.local_hashes)
        return BlobChunks(
            digest,
            self.layout.size,
            ph.local_bytes,
            hashes,
            "blake3",
            source=LOCAL_SOURCE,
        )


def _same_as_local(
    index: BlobChunks | None, size: int, local_bytes: int
) -> tuple[bytes, ...] | None:
    """``index``'s hashes if they are the local index the whole check would compute: BLAKE3
    over the same chunks. They are that once the blob's sha256 has matched (when the local
    index is taken): the bytes are the blob's, and each chunk this process fetched or used
    was checked against ``index`` first. A chunk that only another process sharing the
    partial checked (by its own index) and nobody here read is covered by the sha256 alone:
    if ``index`` lied about it, the kept index fails that chunk later and is distrusted like
    any local index that lies; wrong bytes are never served either way."""
    if (
        index is None
        or index.algorithm != "blake3"
        or index.ends
        or index.chunk_bytes != local_bytes
        or index.size != size
        or len(index.hashes) != -(-size // local_bytes)
    ):
        return None
    return index.hashes
