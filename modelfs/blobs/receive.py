"""The worker-thread side of one range request: body pieces in, checked chunks out.

A range body arrives in pieces whose boundaries need not be the chunks': each
piece is cut at chunk boundaries. A chunk that arrived whole in one piece is
checked against the chunk index, then written; a chunk that comes in several
pieces is hashed and written as they come, and counts only once its last piece
is in and the whole of it matched (until then it is not marked present, so
nobody reads it). A chunk is held in memory instead when the cache cannot be
written. Outcomes go to the blob's callbacks, still on the worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelfs.blobs.partial import PartialFile
from modelfs.errors import CacheError, CacheFull, ModelfsError
from modelfs.formats.chunks import BlobChunks, ChunkHasher, ChunkLayout


@dataclass
class _Assembly:
    """A chunk arriving in several pieces."""

    hasher: ChunkHasher | None
    buffer: bytearray | None  # held in memory: the cache cannot be written
    broken: bool = False  # a piece could not be written: the chunk is fetched again


@dataclass
class RangeReceiver:
    """Receives one range request's body (``on_piece`` is the ``BlobSource``'s sink).

    ``landed(i, data, offset, view)``: chunk ``i`` is checked and written (``data``
    None) or held in memory (``data``); ``view`` is its bytes if it came in one piece.
    ``mismatch(i)``: chunk ``i`` does not match the index. ``disk_failed(error)``:
    the cache could not be written. ``writable(i)``: whether to write chunk ``i`` to the cache.
    """

    layout: ChunkLayout
    index: BlobChunks | None
    partial: PartialFile | None
    writable: Callable[[int], bool]
    landed: Callable[[int, bytes | None, int, memoryview | None], None]
    mismatch: Callable[[int], None]
    disk_failed: Callable[[ModelfsError], None]
    # The chunks asked for; a whole-blob body (see ``BlobFetch._whole_started``) brings the
    # others too, and of those only the ones ``extra`` says are taken: the rest are present or
    # another request's.
    asked: range | None = None  # None: every chunk
    extra: Callable[[int], bool] = lambda i: False

    def __post_init__(self) -> None:
        self._assemblies: dict[int, _Assembly] = {}

    def on_piece(self, offset: int, view: memoryview) -> None:
        while view:
            i = self.layout.index_at(offset)
            cstart, cend = self.layout.span(i)
            n = min(len(view), cend - offset)
            if self.asked is not None and i not in self.asked and not self.extra(i):
                pass  # not ours: never written over a chunk someone may be reading
            elif offset == cstart and n == cend - cstart:
                self._whole(i, offset, view[:n])
            else:
                self._piece(i, offset, view[:n], cstart, cend)
            offset += n
            view = view[n:]

    def _write(self, i: int, offset: int, view: memoryview) -> bool:
        """Write to the partial file if it can be; False if it cannot (reported)."""
        if self.partial is None or not self.writable(i):
            return False
        try:
            self.partial.write(offset, view)
        except (CacheFull, CacheError) as e:
            self.disk_failed(e)
            return False
        return True

    def _whole(self, i: int, offset: int, view: memoryview) -> None:
        if self.index is not None and not self.index.verify(i, view):
            self.mismatch(i)
            return
        if self._write(i, offset, view):
            self.landed(i, None, offset, view)
        else:
            self.landed(i, bytes(view), offset, view)

    def _piece(self, i: int, offset: int, view: memoryview, cstart: int, cend: int) -> None:
        a = self._assemblies.get(i)
        if a is None:
            if offset != cstart:
                return  # a range always starts at a chunk's start: never reached
            memory = self.partial is None or not self.writable(i)
            hasher = self.index.hasher() if self.index is not None else None
            a = self._assemblies[i] = _Assembly(hasher, bytearray() if memory else None)
        if a.hasher is not None:
            a.hasher.update(view)
        if a.buffer is not None:
            a.buffer += view
        elif not a.broken and not self._write(i, offset, view):
            a.broken = True
        if offset + len(view) < cend:
            return
        del self._assemblies[i]
        if a.broken:
            return  # missing from the body: the run's retry fetches it into memory
        if a.hasher is not None:
            assert self.index is not None
            if a.hasher.digest() != self.index.hashes[i]:
                self.mismatch(i)
                return
        self.landed(i, None if a.buffer is None else bytes(a.buffer), cstart, None)
