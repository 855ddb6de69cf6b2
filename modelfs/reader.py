"""Serving reads of blobs: which verification policy applies, open handles, readahead.

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
from dataclasses import dataclass, field

import trio

from modelfs.blobcache import pread_cached
from modelfs.chunks import (
    MAX_INDEX_BYTES,
    BlobChunks,
    ChunkIndex,
    chunks_for_range,
    parse_chunk_index,
)
from modelfs.digest import Digest
from modelfs.errors import ManifestInvalid, ModelfsError
from modelfs.fetcher import BlobFetch, Fetcher, Verify, _Evicted
from modelfs.manifest import MEDIA_TYPE_CHUNK_INDEX, Layer, Manifest
from modelfs.names import Name

log = logging.getLogger(__name__)

READAHEAD_MAX_CHUNKS = 32
EVICTED_RETRIES = 3


@dataclass(frozen=True)
class ReaderSettings:
    deferred: bool = False  # -o verify=deferred
    readahead_max_chunks: int = READAHEAD_MAX_CHUNKS


@dataclass
class Handle:
    """One open file: where its bytes come from, and its sequential-read state."""

    name: Name
    layer: Layer
    chunks: BlobChunks | None
    anonymous: bool = False  # for another user of an allow_other mount: no owner's credentials
    fd: int | None = None  # the published blob
    blob: BlobFetch | None = None
    small: bytes | None = None  # a small blob that could not be cached
    next_offset: int = 0
    window_chunks: int = 0
    closed: bool = field(default=False)


class Reader:
    def __init__(self, fetcher: Fetcher, settings: ReaderSettings | None = None) -> None:
        self.fetcher = fetcher
        self.settings = settings or ReaderSettings()
        # manifest digest -> its validated chunk index (None: it has none, or a bad one)
        self._indexes: dict[Digest, ChunkIndex | None] = {}
        self._index_loads: dict[Digest, trio.Event] = {}

    async def chunk_index(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> ChunkIndex | None:
        """The manifest's chunk index, fetched and validated once; None if it has no usable one.

        A malformed or lying index is logged and ignored: its blobs are then
        verified whole, which is slower but never unsafe.
        """
        while manifest.digest in self._index_loads:
            await self._index_loads[manifest.digest].wait()
        if manifest.digest in self._indexes:
            return self._indexes[manifest.digest]
        layers = manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX)
        if not layers:
            return None
        layer = layers[0]
        done = self._index_loads[manifest.digest] = trio.Event()
        try:
            if layer.size > MAX_INDEX_BYTES:
                log.warning("%s: chunk index of %d bytes is too large; ignored", name, layer.size)
                index = None
            else:
                handle = await self.open(name, layer, None, anonymous=anonymous)
                try:
                    raw = await read_all(self, handle)
                finally:
                    await self.close(handle)
                try:
                    index = parse_chunk_index(raw, manifest.layers)
                except ManifestInvalid as e:
                    log.warning("%s: %s; verifying its blobs whole instead", name, e)
                    index = None
            self._indexes[manifest.digest] = index
            return index
        finally:
            del self._index_loads[manifest.digest]
            done.set()

    def policy(self, chunks: BlobChunks | None) -> Verify:
        if chunks is not None:
            return Verify.INDEXED
        return Verify.DEFERRED if self.settings.deferred else Verify.WHOLE

    async def open(
        self, name: Name, layer: Layer, chunks: BlobChunks | None, *, anonymous: bool = False
    ) -> Handle:
        """Open a blob for reading as ``name``'s manifest vouches for it (``chunks``).

        Fetches nothing: bytes move only when they are read.
        """
        handle = Handle(name, layer, chunks, anonymous)
        await self._open_published(handle)
        if handle.fd is None and layer.size > self.fetcher.settings.chunk_bytes:
            handle.blob = await self.fetcher.acquire(
                name, layer, chunks, self.policy(chunks), anonymous=anonymous
            )
        return handle

    async def _open_published(self, handle: Handle) -> None:
        cache = self.fetcher.cache
        layer = handle.layer

        def open_if_complete() -> int | None:
            if not cache.has_blob(layer.digest, layer.size):
                return None
            return cache.open_blob(layer.digest)

        handle.fd = await self.fetcher.in_thread(open_if_complete)  # type: ignore[assignment]

    async def close(self, handle: Handle) -> None:
        if handle.closed:
            return
        handle.closed = True
        if handle.fd is not None:
            os.close(handle.fd)
            handle.fd = None
        if handle.blob is not None:
            handle.blob.release()
            handle.blob = None

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        layer = handle.layer
        end = min(offset + size, layer.size)
        if offset >= end:
            return b""
        if handle.fd is not None:
            return await self._pread(handle.fd, offset, end - offset)
        if handle.small is not None:
            return handle.small[offset:end]
        if handle.blob is None:
            return await self._read_small(handle, offset, end)
        return await self._read_blob(handle, handle.blob, offset, end)

    async def _pread(self, fd: int, offset: int, size: int) -> bytes:
        data = pread_cached(fd, offset, size)
        if data is not None:
            return data
        return await self.fetcher.in_thread(os.pread, fd, size, offset)  # type: ignore[return-value]

    async def _read_small(self, handle: Handle, offset: int, end: int) -> bytes:
        data = await self.fetcher.fetch_small(handle.name, handle.layer, anonymous=handle.anonymous)
        await self._open_published(handle)
        if handle.fd is None:
            handle.small = data
        return data[offset:end]

    async def _read_blob(self, handle: Handle, blob: BlobFetch, offset: int, end: int) -> bytes:
        if blob.verify is Verify.WHOLE and not blob.published:
            await blob.complete(self.fetcher.settings.read_wait_seconds)
        touched = chunks_for_range(offset, end - offset, blob.size, blob.chunk_bytes)
        self._readahead(handle, blob, offset, end, touched)
        for _ in range(EVICTED_RETRIES):
            await blob.ensure(touched.start, touched.stop)
            try:
                return await blob.read(offset, end - offset)
            except _Evicted:
                continue
        raise ModelfsError(f"blob {blob.digest.short}: chunks keep being evicted before use")

    def _readahead(
        self, handle: Handle, blob: BlobFetch, offset: int, end: int, touched: range
    ) -> None:
        # Kernel readahead sends a streaming reader's requests slightly out of order:
        # anything within a chunk of where the last read ended counts as sequential.
        cb = blob.chunk_bytes
        last = handle.next_offset
        sequential = last > 0 and last - cb <= offset <= last + cb
        if not sequential:
            handle.window_chunks = 0
        elif touched.stop - 1 > (last - 1) // cb:
            # Readahead starts only once a reader streams into a second chunk, so a
            # header read (or a page fault) fetches only the chunks it touches.
            handle.window_chunks = min(
                max(1, handle.window_chunks * 2), self.settings.readahead_max_chunks
            )
        handle.next_offset = max(end, last) if sequential else end
        if handle.window_chunks and not blob.published:
            blob.prefetch(touched.stop, touched.stop + handle.window_chunks)


async def read_all(reader: Reader, handle: Handle, piece_bytes: int = 1 << 20) -> bytes:
    """Read a whole blob through ``reader`` (tests and small files)."""
    out = bytearray()
    while len(out) < handle.layer.size:
        data = await reader.read(handle, len(out), piece_bytes)
        if not data:
            break
        out += data
        await trio.lowlevel.checkpoint()
    return bytes(out)
