"""The blob layer's one door: ``Blobs.open(name, manifest, layer) → BlobHandle``.

Everything above the blob layer (the tree, ``pull``) opens a layer of a manifest
here and reads it through the handle; what it takes to get the bytes stays
below: whether the blob is small or large, the manifest's chunk index, which
verification policy applies, the fetch state, the eviction retry, readahead.

A blob already in ``blobs/`` is read from there, without the network. A blob
of at most one chunk is fetched whole and checked against its digest. A larger
blob is read through its ``BlobFetch``: chunk by chunk when it has a chunk index
(or with ``verify=deferred``), or only after the whole blob has been fetched and
checked when it has no index. A handle that reads sequentially grows a
readahead window (doubling, as mountpoint-s3 does) so streaming readers do not
wait on each chunk in turn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from modelfs.blobs.blobcache import pread_cached
from modelfs.blobs.blobfetch import BlobFetch
from modelfs.blobs.fetchcontext import Verify
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.sources import ChunkSources
from modelfs.errors import ModelfsError
from modelfs.formats.chunks import BlobChunks
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.names import Name

log = logging.getLogger(__name__)

READAHEAD_MAX_CHUNKS = 32


@dataclass(frozen=True)
class BlobsSettings:
    deferred: bool = False  # -o verify=deferred
    readahead_max_chunks: int = READAHEAD_MAX_CHUNKS


@dataclass(eq=False)
class BlobHandle:
    """One open blob: ``read`` it, ``close`` it. Its sequential-read state is its own."""

    blobs: Blobs
    name: Name
    layer: Layer
    chunks: BlobChunks | None
    anonymous: bool = False  # for another user of an allow_other mount: no owner's credentials
    readahead: bool = True  # False: fetch only the chunks reads touch (a header read)
    fd: int | None = None  # the published blob
    blob: BlobFetch | None = None
    small: bytes | None = None  # a small blob that could not be cached
    next_offset: int = 0
    window_chunks: int = 0
    closed: bool = field(default=False)

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)`` (fewer at the end of the blob), checked per the policy."""
        return await self.blobs._read(self, offset, size)

    async def close(self) -> None:
        await self.blobs._close(self)

    async def read_all(self, piece_bytes: int = 1 << 20) -> bytes:
        """The whole blob (small files and tests)."""
        out = bytearray()
        while len(out) < self.layer.size:
            data = await self.read(len(out), piece_bytes)
            if not data:
                break
            out += data
            await trio.lowlevel.checkpoint()
        return bytes(out)


class Blobs:
    def __init__(self, fetcher: Fetcher, settings: BlobsSettings | None = None) -> None:
        self.fetcher = fetcher
        self.settings = settings or BlobsSettings()
        self.sources = ChunkSources(fetcher, self._read_whole)

    def policy(self, chunks: BlobChunks | None) -> Verify:
        if chunks is not None:
            return Verify.INDEXED
        return Verify.DEFERRED if self.settings.deferred else Verify.WHOLE

    async def _chunks_of(
        self, name: Name, manifest: Manifest | None, layer: Layer, anonymous: bool
    ) -> BlobChunks | None:
        if manifest is None or self.fetcher.is_small(layer):
            return None
        return await self.sources.for_layer(name, manifest, layer, anonymous)

    async def verification(
        self, name: Name, manifest: Manifest, layer: Layer, *, anonymous: bool = False
    ) -> str:
        """How reads of ``layer`` are checked (``user.modelfs.verify``): ``complete`` (in
        ``blobs/``, checked whole), the source of its chunk digests (``index``,
        ``chunksums``, ...), ``whole`` (fetched whole and checked before serving) or
        ``deferred`` (-o verify=deferred)."""
        cache = self.fetcher.cache
        if await self.fetcher.in_thread(cache.has_blob, layer.digest, layer.size):
            return "complete"
        if self.fetcher.is_small(layer):
            return "whole"
        chunks = await self._chunks_of(name, manifest, layer, anonymous)
        if chunks is not None:
            return chunks.source
        return "deferred" if self.settings.deferred else "whole"

    async def _read_whole(self, name: Name, layer: Layer, anonymous: bool) -> bytes:
        """A blob (an index) read whole, checked against its digest as any blob is."""
        handle = await self._open(name, layer, None, anonymous)
        try:
            return await handle.read_all()
        finally:
            await handle.close()

    async def open(
        self,
        name: Name,
        manifest: Manifest | None,
        layer: Layer,
        *,
        anonymous: bool = False,
        readahead: bool = True,
    ) -> BlobHandle:
        """Open ``layer`` for reading as ``manifest`` (fetched for ``name``) vouches for it.

        Fetches nothing but the manifest's chunk index (once per manifest) for a large
        blob: its bytes move only when they are read. ``anonymous``: for another user
        of an allow_other mount, without the mount owner's credentials.
        """
        chunks = await self._chunks_of(name, manifest, layer, anonymous)
        return await self._open(name, layer, chunks, anonymous, readahead)

    async def _open(
        self,
        name: Name,
        layer: Layer,
        chunks: BlobChunks | None,
        anonymous: bool,
        readahead: bool = True,
    ) -> BlobHandle:
        handle = BlobHandle(self, name, layer, chunks, anonymous, readahead)
        await self._open_published(handle)
        if handle.fd is None and not self.fetcher.is_small(layer):
            handle.blob = await self.fetcher.acquire(
                name, layer, chunks, self.policy(chunks), anonymous=anonymous
            )
        return handle

    async def fetch(
        self,
        name: Name,
        manifest: Manifest,
        layer: Layer,
        on_progress: Callable[[int], None] | None = None,
        progress_seconds: float = 0.5,
    ) -> None:
        """Fetch ``layer`` whole, check it and publish it into ``blobs/`` (``pull``).

        Waits as long as it takes (no reader is waiting on a deadline);
        ``on_progress(bytes)`` is called every ``progress_seconds`` with the bytes present
        and arriving.
        """
        if self.fetcher.is_small(layer):
            await self.fetcher.fetch_small(name, layer, wait=False)
            return
        chunks = await self._chunks_of(name, manifest, layer, False)
        bf = await self.fetcher.acquire(name, layer, chunks, self.policy(chunks))
        try:
            async with trio.open_nursery() as watch:
                if on_progress is not None:
                    watch.start_soon(_report, bf, on_progress, progress_seconds)
                await bf.complete()
                watch.cancel_scope.cancel()
        finally:
            bf.release()

    async def _open_published(self, handle: BlobHandle) -> None:
        cache = self.fetcher.cache
        layer = handle.layer

        def open_if_complete() -> int | None:
            if not cache.has_blob(layer.digest, layer.size):
                return None
            return cache.open_blob(layer.digest)

        fd: int | None = await self.fetcher.in_thread(open_if_complete)  # type: ignore[assignment]
        if fd is None:
            return
        # Reads of one handle run at once (the kernel's readahead, page faults): the first
        # to open the blob keeps its descriptor, the others close theirs, and one that
        # finishes after the handle was closed closes its own.
        if handle.fd is not None or handle.closed:
            os.close(fd)
            return
        handle.fd = fd

    async def _close(self, handle: BlobHandle) -> None:
        if handle.closed:
            return
        handle.closed = True
        if handle.fd is not None:
            os.close(handle.fd)
            handle.fd = None
        if handle.blob is not None:
            handle.blob.release()
            handle.blob = None

    async def _read(self, handle: BlobHandle, offset: int, size: int) -> bytes | bytearray:
        if handle.closed:
            raise ModelfsError(f"blob {handle.layer.digest.short}: read after close")
        layer = handle.layer
        end = min(offset + size, layer.size)
        if offset >= end:
            return b""
        stats = self.fetcher.stats
        if handle.fd is not None:
            stats.read(hit=True)
            return await self._pread(handle.fd, offset, end - offset)
        if handle.small is not None:
            stats.read(hit=True)
            return handle.small[offset:end]
        if handle.blob is None:
            stats.read(hit=False)
            return await self._read_small(handle, offset, end)
        return await self._read_blob(handle, handle.blob, offset, end)

    async def _pread(self, fd: int, offset: int, size: int) -> bytes | bytearray:
        data = pread_cached(fd, offset, size)
        if data is not None:
            return data
        return await self.fetcher.in_thread(os.pread, fd, size, offset)  # type: ignore[return-value]

    async def _read_small(self, handle: BlobHandle, offset: int, end: int) -> bytes:
        data = await self.fetcher.fetch_small(handle.name, handle.layer, anonymous=handle.anonymous)
        await self._open_published(handle)
        if handle.fd is None:
            handle.small = data
        return data[offset:end]

    async def _read_blob(
        self, handle: BlobHandle, blob: BlobFetch, offset: int, end: int
    ) -> bytes | bytearray:
        touched = blob.layout.covering(offset, end - offset)
        # A hit: every byte asked for is here and may be served without waiting for a fetch.
        self.fetcher.stats.read(
            hit=blob.published
            or (blob.verify is not Verify.WHOLE and all(blob.has(i) for i in touched))
        )
        if blob.verify is Verify.WHOLE and not blob.published:
            await blob.complete(self.fetcher.settings.read_wait_seconds)
        if handle.readahead:
            self._readahead(handle, blob, offset, end, touched)
        return await blob.read(offset, end - offset, touched)

    def _readahead(
        self, handle: BlobHandle, blob: BlobFetch, offset: int, end: int, touched: range
    ) -> None:
        # Kernel readahead sends a streaming reader's requests slightly out of order:
        # anything within a chunk of where the last read ended counts as sequential.
        cb = blob.layout.typical_bytes
        last = handle.next_offset
        sequential = last > 0 and last - cb <= offset <= last + cb
        if not sequential:
            handle.window_chunks = 0
        elif touched.stop - 1 > blob.layout.index_at(min(last, blob.size) - 1):
            # Readahead starts only once a reader streams into a second chunk, so a
            # header read (or a page fault) fetches only the chunks it touches.
            handle.window_chunks = min(
                max(1, handle.window_chunks * 2), self.settings.readahead_max_chunks
            )
        handle.next_offset = max(end, last) if sequential else end
        if handle.window_chunks and not blob.published:
            blob.prefetch(touched.stop, touched.stop + handle.window_chunks)


async def _report(bf: BlobFetch, on_progress: Callable[[int], None], seconds: float) -> None:
    """Tell ``on_progress`` the bytes of the blob here, counting those of chunks still
    arriving (a chunk is 4 MiB or more: on a slow link, minutes between whole chunks)."""
    present, arrived = bf.present_bytes, bf.arrived_bytes
    while True:
        moving = present + bf.arrived_bytes - arrived
        # Bytes fetched again (a retried or rejected chunk) are counted twice: never past
        # the blob's size, never behind what is checked and present.
        on_progress(max(bf.present_bytes, min(bf.size, moving)))
        await trio.sleep(seconds)
