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

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from modelfs.blobs.blobcache import pread_cached
from modelfs.blobs.blobfetch import BlobFetch
from modelfs.blobs.fetchcontext import Verify
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.wholecheck import LOCAL_SOURCE
from modelfs.errors import DigestMismatch, ManifestInvalid, ModelfsError, ModelNotFound
from modelfs.flight import KeyedLock
from modelfs.formats.chunks import (
    MAX_INDEX_BYTES,
    BlobChunks,
    ChunkIndex,
    parse_chunk_index,
)
from modelfs.formats.chunksums import parse_chunksums
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, Layer, Manifest
from modelfs.formats.names import Name
from modelfs.formats.referrers import ARTIFACT_TYPE as REFERRER_TYPE
from modelfs.formats.referrers import SOURCE as PUBLISHED_SOURCE
from modelfs.formats.referrers import parse_index_artifact

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
        # manifest digest -> its validated chunk index (None: it has none, or a bad one)
        self._indexes: dict[Digest, ChunkIndex | None] = {}
        self._index_loads: KeyedLock[Digest] = KeyedLock()
        # (manifest digest, anonymous) -> the chunk index published beside it (None: none)
        self._published: dict[tuple[Digest, bool], ChunkIndex | None] = {}
        self._published_loads: KeyedLock[tuple[Digest, bool]] = KeyedLock()
        # (repository, blob digest, anonymous) -> the registry's chunksums (None: it has none)
        self._chunksums: dict[tuple[tuple[str, str, str], Digest, bool], BlobChunks | None] = {}
        self._chunksum_loads: KeyedLock[tuple[tuple[str, str, str], Digest, bool]] = KeyedLock()

    async def chunk_index(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> ChunkIndex | None:
        """The manifest's chunk index, fetched and validated once; None if it has no usable one.

        A malformed or lying index is logged and ignored: its blobs are then
        verified whole, which is slower but never unsafe.
        """
        async with self._index_loads.hold(manifest.digest):
            if manifest.digest in self._indexes:
                return self._indexes[manifest.digest]
            layers = manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX)
            if not layers:
                return None
            layer = layers[0]
            if layer.size > MAX_INDEX_BYTES:
                log.warning("%s: chunk index of %d bytes is too large; ignored", name, layer.size)
                index = None
            else:
                handle = await self._open(name, layer, None, anonymous)
                try:
                    raw = await handle.read_all()
                finally:
                    await handle.close()
                try:
                    index = parse_chunk_index(raw, manifest.layers)
                except ManifestInvalid as e:
                    log.warning("%s: %s; verifying its blobs whole instead", name, e)
                    index = None
            self._indexes[manifest.digest] = index
            return index

    def policy(self, chunks: BlobChunks | None) -> Verify:
        if chunks is not None:
            return Verify.INDEXED
        return Verify.DEFERRED if self.settings.deferred else Verify.WHOLE

    async def _chunks_of(
        self, name: Name, manifest: Manifest | None, layer: Layer, anonymous: bool
    ) -> BlobChunks | None:
        """The chunk digests a large blob is checked against, from the first source that has
        them (docs/verification.md): the manifest's own index layer, an index published
        beside it, the registry's chunksums, a local index; None: the blob is verified
        whole (or deferred)."""
        if manifest is None or self.fetcher.is_small(layer):
            return None
        for find in (self.chunk_index, self.published_index):
            index = await find(name, manifest, anonymous=anonymous)
            chunks = index.blobs.get(layer.digest) if index is not None else None
            if self._usable(chunks):
                return chunks
        chunks = await self.registry_chunksums(name, layer, anonymous=anonymous)
        if self._usable(chunks):
            return chunks
        chunks = await self.local_index(layer)
        return chunks if self._usable(chunks) else None

    async def local_index(self, layer: Layer) -> BlobChunks | None:
        """The chunk index kept when this blob was last verified whole here, if any: made
        from bytes that matched the digest, it serves every manifest naming it."""
        cache = self.fetcher.cache
        raw = await self.fetcher.in_thread(cache.load_local_index, layer.digest, MAX_INDEX_BYTES)
        if raw is None:
            return None
        try:
            index = parse_chunk_index(raw, [layer])  # type: ignore[arg-type]
        except ManifestInvalid as e:
            log.warning("blob %s: its local %s; not used", layer.digest.short, e)
            return None
        chunks = index.blobs.get(layer.digest)
        return None if chunks is None else dataclasses.replace(chunks, source=LOCAL_SOURCE)

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

    def _usable(self, chunks: BlobChunks | None) -> bool:
        # Digests that failed twice for their blob are not used again (docs/verification.md).
        return chunks is not None and chunks not in self.fetcher.distrusted

    async def published_index(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> ChunkIndex | None:
        """A chunk index published beside ``manifest`` (``modelfs index``), found through the
        referrers API or tag schema; looked for once per manifest, a negative answer too.
        One that does not hold up (not about this manifest, a bad index) is a WARNING and
        not used: the next source is."""
        key = (manifest.digest, anonymous)
        async with self._published_loads.hold(key):
            if key in self._published:
                return self._published[key]
            if manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX):
                index = None  # it carries its own
            else:
                try:
                    index = await self._find_published(name, manifest, anonymous)
                except ModelfsError as e:
                    # Not remembered: the next open looks again.
                    log.info("%s: no published chunk index (%s)", name, e)
                    return None
            self._published[key] = index
            return index

    async def _find_published(
        self, name: Name, manifest: Manifest, anonymous: bool
    ) -> ChunkIndex | None:
        source = self.fetcher.registry_for(anonymous)
        for ref in reversed(await source.referrers(name, manifest.digest, REFERRER_TYPE)):
            try:
                artifact = await source.manifest_by_digest(name, ref.digest)
                layer = parse_index_artifact(artifact, manifest.digest)
                if layer.size > MAX_INDEX_BYTES:
                    raise ManifestInvalid(f"invalid chunk index: {layer.size} bytes is too large")
                handle = await self._open(name, layer, None, anonymous)
                try:
                    raw = await handle.read_all()
                finally:
                    await handle.close()
                index = parse_chunk_index(raw, manifest.layers)
            except (ManifestInvalid, ModelNotFound, DigestMismatch) as e:
                log.warning(
                    "%s: the chunk index published as %s is not used: %s", name, ref.digest, e
                )
                continue
            blobs = {
                d: dataclasses.replace(c, source=PUBLISHED_SOURCE) for d, c in index.blobs.items()
            }
            return ChunkIndex(index.chunk_bytes, blobs)
        return None

    async def registry_chunksums(
        self, name: Name, layer: Layer, *, anonymous: bool = False
    ) -> BlobChunks | None:
        """The registry's chunksums of ``layer``'s blob, asked for once per repository and
        blob (a registry without them answers 404, remembered too); a body that does not
        hold up is logged and not used."""
        key = (name.repository_key, layer.digest, anonymous)
        async with self._chunksum_loads.hold(key):
            if key in self._chunksums:
                return self._chunksums[key]
            source = self.fetcher.registry_for(anonymous)
            chunks = None
            try:
                answer = await source.chunksums(name, layer.digest)
                if answer is not None:
                    chunks = parse_chunksums(answer.body, layer.digest, layer.size)
                    if answer.location is not None:
                        source.use_blob_location(name, layer.digest, answer.location)
            except ManifestInvalid as e:  # remembered: the registry said what it had to say
                log.warning(
                    "%s: %s from %s; verifying blob %s another way",
                    name,
                    e,
                    name.host,
                    layer.digest.short,
                )
            except ModelfsError as e:
                # Not remembered: the next open asks again.
                log.info("%s: no chunksums for blob %s (%s)", name, layer.digest.short, e)
                return None
            self._chunksums[key] = chunks
            return chunks

    async def open(
        self, name: Name, manifest: Manifest | None, layer: Layer, *, anonymous: bool = False
    ) -> BlobHandle:
        """Open ``layer`` for reading as ``manifest`` (fetched for ``name``) vouches for it.

        Fetches nothing but the manifest's chunk index (once per manifest) for a large
        blob: its bytes move only when they are read. ``anonymous``: for another user
        of an allow_other mount, without the mount owner's credentials.
        """
        chunks = await self._chunks_of(name, manifest, layer, anonymous)
        return await self._open(name, layer, chunks, anonymous)

    async def _open(
        self, name: Name, layer: Layer, chunks: BlobChunks | None, anonymous: bool
    ) -> BlobHandle:
        handle = BlobHandle(self, name, layer, chunks, anonymous)
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
        ``on_progress(bytes_present)`` is called every ``progress_seconds``.
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

        handle.fd = await self.fetcher.in_thread(open_if_complete)  # type: ignore[assignment]

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
        if handle.fd is not None:
            return await self._pread(handle.fd, offset, end - offset)
        if handle.small is not None:
            return handle.small[offset:end]
        if handle.blob is None:
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
        if blob.verify is Verify.WHOLE and not blob.published:
            await blob.complete(self.fetcher.settings.read_wait_seconds)
        touched = blob.layout.covering(offset, end - offset)
        self._readahead(handle, blob, offset, end, touched)
        return await blob.read_range(offset, end - offset, touched)

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
    while True:
        on_progress(bf.present_bytes)
        await trio.sleep(seconds)
