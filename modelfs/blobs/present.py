"""Where a blob's checked chunks are, and reading them.

A chunk that passed its check is in the partial file (its bitmap says so), or,
when the cache cannot be written, in memory: a few chunks (``memory_chunks``), the
least recently landed dropped first. A chunk dropped between a reader's ``ensure``
and its read raises ``Evicted``, and the reader ensures again. A blob published
before its fetch opened is read from ``blobs/`` itself.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING

from modelfs.blobs.blobcache import pread_cached
from modelfs.errors import ModelfsError

if TYPE_CHECKING:
    from modelfs.blobs.blobfetch import BlobFetch


class Present:
    def __init__(self, blob: BlobFetch) -> None:
        self.blob = blob
        self.ctx = blob.ctx
        self.layout = blob.layout
        self.memory: OrderedDict[int, bytes] = OrderedDict()

    def has(self, i: int) -> bool:
        partial = self.blob.partial
        return i in self.memory or (partial is not None and partial.has(i))

    def keep(self, i: int, data: bytes) -> None:
        """Hold chunk ``i`` in memory (the cache cannot take it); the oldest go past the limit."""
        self.memory[i] = data
        self.memory.move_to_end(i)
        while len(self.memory) > self.ctx.settings.memory_chunks:
            self.memory.popitem(last=False)

    async def read(self, offset: int, size: int, touched: range) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)`` (chunks ``touched``); the chunks must have been
        ensured (or published)."""
        end = min(offset + size, self.blob.size)
        if offset >= end:
            return b""
        partial = self.blob.partial
        if partial is None and self.blob.published:
            # Published before this fetch opened (by another process, or a pull, after the
            # reader looked in blobs/): no partial to read, the blob file itself.
            return await self.ctx.in_thread(self._read_published, offset, end - offset, touched)  # type: ignore[return-value]
        if partial is not None and (self.blob.published or all(partial.has(i) for i in touched)):
            data = pread_cached(partial.fd, offset, end - offset)
            if data is not None:
                return data
            return await self.ctx.in_thread(partial.read, offset, end - offset)  # type: ignore[return-value]
        out = bytearray()
        for i in touched:
            cstart, cend = self.layout.span(i)
            a, b = max(offset, cstart), min(end, cend)
            data = self.memory.get(i)
            if data is not None:
                out += data[a - cstart : b - cstart]
            elif self.blob.partial is not None and self.blob.partial.has(i):
                out += await self.ctx.in_thread(self.blob.partial.read, a, b - a)  # type: ignore[operator]
            else:
                raise Evicted(i)
        return bytes(out)

    def _read_published(self, offset: int, size: int, touched: range) -> bytes:
        """Worker thread: bytes of the published blob file (removed since: evicted)."""
        fd = self.ctx.cache.open_blob(self.blob.digest)
        if fd is None:
            raise Evicted(touched.start)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)


class Evicted(ModelfsError):
    """A chunk held in memory was evicted between ensure and read; the reader ensures again."""

    def __init__(self, i: int) -> None:
        super().__init__(f"chunk {i} was evicted before it was read")
