"""The blob layer's one door: ``Blobs.open(name, manifest, file) → handle``, ``Blobs.fetch``.

Everything above the blob layer (the tree, ``pull``, ``show``) opens a **file** here and
reads it through the handle (``read(offset, size)``, ``close()``); ``pull`` fetches a
file's blobs whole. A file is an ordered list of extents over blobs
(``formats.files.ModelFile``); a ``Layer`` given instead is the file that is that layer
whole. What it takes to get the bytes stays below: whether the blob is small or large,
the manifest's chunk index, which verification policy applies, the fetch state, the
eviction retry, readahead. Besides files, the door offers what its owner may look at:
a ``snapshot`` of its figures and of the blobs being filled (``modelfs status``),
``files_reading`` (which open files a blob's checked chunks may be pushed to), and
``read_unchecked`` / ``stream_unchecked`` (bytes of a blob for a caller that checks them
itself, or says they are unchecked: a header of a blob that can only be checked whole,
``modelfs index`` hashing a blob).
It is built in one place, ``blobs.door.blob_layer``, with the events its owner wants.

A file that is one blob whole is a ``BlobHandle`` (handles.py) whose reads come here
one call deep: the hot path. A blob already in ``blobs/`` is read from there, without
the network. A blob of at most one chunk is fetched whole and checked against its
digest. A larger blob is read through its ``BlobFetch``: chunk by chunk when it has a
chunk index (or with ``verify=deferred``), or only after the whole blob has been fetched
and checked when it has no index. A handle that reads sequentially grows a readahead
window (doubling, as mountpoint-s3 does) so streaming readers do not wait on each chunk
in turn. Any other file is a ``FileHandle`` reading each extent through a ``BlobHandle``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import trio

from modelfs.blobs.blobcache import pread_cached
from modelfs.blobs.blobfetch import BlobFetch
from modelfs.blobs.fetchcontext import RangeRequest, Stats, Verify
from modelfs.blobs.fetcher import PUBLISH_WAIT_SECONDS, Fetcher
from modelfs.blobs.handles import BlobHandle, FileHandle, layers_by_digest
from modelfs.blobs.sources import ChunkSources
from modelfs.errors import ManifestInvalid, ModelfsError
from modelfs.formats.chunks import BlobChunks
from modelfs.formats.digest import Digest
from modelfs.formats.files import Extent, ModelFile
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.names import Name
from modelfs.registry.retry import retrying

log = logging.getLogger(__name__)

READAHEAD_MAX_CHUNKS = 32


@dataclass(frozen=True)
class BlobsSettings:
    deferred: bool = False  # -o verify=deferred
    readahead_max_chunks: int = READAHEAD_MAX_CHUNKS


@dataclass(frozen=True)
class Filling:
    """A blob being fetched, not yet complete in ``blobs/``."""

    digest: Digest
    name: Name  # the model it is fetched for
    present_bytes: int
    size: int


@dataclass(frozen=True)
class BlobsSnapshot:
    """The door's figures at one moment (``modelfs status``, ``-o metrics``, benchmarks)."""

    stats: Stats  # a copy: the counters go on changing
    filling: tuple[Filling, ...]


class Blobs:
    """The door (see the module docstring). Built by ``blobs.door.blob_layer``."""

    def __init__(self, fetcher: Fetcher, settings: BlobsSettings | None = None) -> None:
        self.fetcher = fetcher
        self.settings = settings or BlobsSettings()
        self.sources = ChunkSources(fetcher, self._read_whole)
        # Open handles by the fetch state they read through (``files_reading``).
        self._reading: dict[BlobFetch, set[BlobHandle]] = {}

    @property
    def chunk_bytes(self) -> int:
        return self.fetcher.settings.chunk_bytes

    def is_small(self, layer: Layer) -> bool:
        """Whether a blob is fetched whole, in one request, and checked against its digest."""
        return self.fetcher.is_small(layer)

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

    @overload
    async def open(
        self,
        name: Name,
        manifest: Manifest | None,
        file: Layer,
        *,
        anonymous: bool = False,
        readahead: bool = True,
    ) -> BlobHandle: ...

    @overload
    async def open(
        self,
        name: Name,
        manifest: Manifest | None,
        file: ModelFile,
        *,
        anonymous: bool = False,
        readahead: bool = True,
    ) -> BlobHandle | FileHandle: ...

    async def open(
        self,
        name: Name,
        manifest: Manifest | None,
        file: Layer | ModelFile,
        *,
        anonymous: bool = False,
        readahead: bool = True,
    ) -> BlobHandle | FileHandle:
        """Open ``file`` (or the layer ``file``, whole) for reading as ``manifest`` (fetched
        for ``name``) vouches for its blobs.

        Fetches nothing but the manifest's chunk index (once per manifest) for a large
        blob: its bytes move only when they are read. ``anonymous``: for another user
        of an allow_other mount, without the mount owner's credentials. ``readahead``
        False: fetch only the chunks reads touch (a header read).
        """
        if isinstance(file, ModelFile):
            if file.layer is None:
                if manifest is None:
                    raise ManifestInvalid(f"{name}: {file.path} is read through its manifest")
                return FileHandle(
                    self, name, manifest, file, anonymous=anonymous, readahead=readahead
                )
            file = file.layer  # one blob whole: read as the blob, one call deep
        chunks = await self._chunks_of(name, manifest, file, anonymous)
        return await self._open(name, file, chunks, anonymous, readahead)

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
            blob = await self.fetcher.acquire(
                name, layer, chunks, self.policy(chunks), anonymous=anonymous
            )
            handle.blob = blob
            self._reading.setdefault(blob, set()).add(handle)
        return handle

    async def fetch(
        self,
        name: Name,
        manifest: Manifest,
        file: Layer | ModelFile,
        on_progress: Callable[[int], None] | None = None,
        progress_seconds: float = 0.5,
        *,
        anonymous: bool = False,
    ) -> None:
        """Fetch every blob ``file`` reads whole, check each and publish it into ``blobs/``
        (``pull``; a model's missing small blobs).

        Waits as long as it takes (no reader is waiting on a deadline);
        ``on_progress(bytes)`` is called every ``progress_seconds`` with the bytes present
        and arriving, of all the file's blobs together.
        """
        if isinstance(file, Layer):
            await self._fetch_blob(name, manifest, file, on_progress, progress_seconds, anonymous)
            return
        layers = layers_by_digest(manifest)
        digests = dict.fromkeys(p.digest for p in file.extents if isinstance(p, Extent))
        missing = [d for d in digests if d not in layers]
        if missing:
            raise ManifestInvalid(f"{file.path}: reads a blob not in its manifest")
        done: dict[Digest, int] = {}

        def reporter(digest: Digest) -> Callable[[int], None] | None:
            if on_progress is None:
                return None

            def report(present: int) -> None:
                done[digest] = present
                on_progress(sum(done.values()))

            return report

        for digest in digests:
            layer = layers[digest]
            await self._fetch_blob(
                name, manifest, layer, reporter(digest), progress_seconds, anonymous
            )
            done[digest] = layer.size

    async def _fetch_blob(
        self,
        name: Name,
        manifest: Manifest,
        layer: Layer,
        on_progress: Callable[[int], None] | None,
        progress_seconds: float,
        anonymous: bool,
    ) -> None:
        if self.fetcher.is_small(layer):
            await self.fetcher.fetch_small(name, layer, anonymous=anonymous, wait=False)
            return
        chunks = await self._chunks_of(name, manifest, layer, anonymous)
        bf = await self.fetcher.acquire(
            name, layer, chunks, self.policy(chunks), anonymous=anonymous
        )
        try:
            async with trio.open_nursery() as watch:
                if on_progress is not None:
                    watch.start_soon(_report, bf, on_progress, progress_seconds)
                await bf.complete()
                watch.cancel_scope.cancel()
        finally:
            bf.release()

    def files_reading(self, blob: object) -> set[BlobHandle]:
        """The open handles reading ``blob`` (a fetch state) at the blob's own offsets: the
        files that are that blob whole, which may take its checked chunks into their page
        cache (an extent's handle inside a file of many pieces is one too, but its file's
        offsets are not the blob's: its caller never holds it)."""
        return set(self._reading.get(blob, ()))  # type: ignore[call-overload]

    def snapshot(self) -> BlobsSnapshot:
        """The counters and the blobs being filled, now. On the trio thread."""
        stats = self.fetcher.stats
        return BlobsSnapshot(
            dataclasses.replace(stats, bytes_by_host=dict(stats.bytes_by_host)),
            tuple(
                Filling(bf.digest, bf.name, bf.present_bytes, bf.size)
                for bf in self.fetcher.blobs.values()
                if not bf.published
            ),
        )

    async def read_unchecked(
        self, name: Name, digest: Digest, start: int, stop: int, *, anonymous: bool = False
    ) -> bytes:
        """Bytes ``[start, stop)`` of blob ``digest`` from ``name``'s registry into memory,
        **unchecked** and never cached: for a header of a blob that can only be checked
        whole (its caller says the answer is unchecked). Retried as any request is."""
        registry = self.fetcher.registry_for(anonymous)
        buf = bytearray(stop - start)
        got = 0

        def on_piece(offset: int, view: memoryview) -> None:
            nonlocal got
            buf[offset - start : offset - start + len(view)] = view
            got += len(view)

        async def once() -> None:
            nonlocal got
            got = 0
            await self.fetcher.request(
                registry, RangeRequest(name, digest, start, stop, self.chunk_bytes, on_piece)
            )

        await retrying(f"header of blob {digest.short}", once, self.fetcher.settings.attempts)
        self.fetcher.stats.fetched(name.host, stop - start)
        if got < stop - start:
            raise ManifestInvalid(f"{name}: blob {digest.short} ended before its header did")
        return bytes(buf)

    async def stream_unchecked(
        self,
        name: Name,
        digest: Digest,
        start: int,
        stop: int,
        piece_bytes: int,
        on_piece: Callable[[int, memoryview], None],
        *,
        on_bytes: Callable[[int], None] | None = None,
        anonymous: bool = False,
    ) -> None:
        """One range request for bytes ``[start, stop)`` of blob ``digest``: each piece, in
        order, to ``on_piece(offset, view)`` in a worker thread, **unchecked** and never
        cached, for a caller that checks what it reads itself (``modelfs index`` hashes the
        whole blob). Pieces delivered before a failure stay delivered: the caller retries
        from where they stopped. ``on_bytes(n)``: body bytes as they arrive."""
        registry = self.fetcher.registry_for(anonymous)
        await self.fetcher.request(
            registry,
            RangeRequest(name, digest, start, stop, piece_bytes, on_piece, on_bytes=on_bytes),
        )

    # -- the door's lifetime (its owner's) --------------------------------------------------

    async def in_thread(self, fn: Callable[..., object], *args: object) -> object:
        """``fn(*args)`` in a worker thread, under the disk threads' limiter."""
        return await self.fetcher.in_thread(fn, *args)

    def busy_digests(self) -> set[Digest]:
        """Blobs open for reading or with fetches in flight (never evicted)."""
        return self.fetcher.busy_digests()

    def stop_waiting(self) -> None:
        """At shutdown: every wait on another process ends now (its readers get EIO)."""
        self.fetcher.stop_waiting()

    async def save_all(self, publish_wait_seconds: float = PUBLISH_WAIT_SECONDS) -> None:
        """At shutdown: let publishes in progress finish, persist every blob's progress."""
        await self.fetcher.save_all(publish_wait_seconds)

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

    async def open_layer(
        self, name: Name, manifest: Manifest, layer: Layer, *, anonymous: bool, readahead: bool
    ) -> BlobHandle:
        """Open the blob of ``layer`` whole, as ``manifest`` vouches for it (a file
        handle's extents read through these)."""
        return await self.open(name, manifest, layer, anonymous=anonymous, readahead=readahead)

    async def close_handle(self, handle: BlobHandle) -> None:
        """Close ``handle`` (``BlobHandle.close``); a second close does nothing."""
        if handle.closed:
            return
        handle.closed = True
        if handle.fd is not None:
            os.close(handle.fd)
            handle.fd = None
        blob = handle.blob
        if blob is not None:
            reading = self._reading.get(blob)
            if reading is not None:
                reading.discard(handle)
                if not reading:
                    del self._reading[blob]
            blob.release()
            handle.blob = None

    async def read_handle(self, handle: BlobHandle, offset: int, size: int) -> bytes | bytearray:
        """``BlobHandle.read``: from the published blob, a small blob's bytes, or the fetch."""
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
        if blob.failure is not None and blob.failure is handle.failure_seen:
            # This reader was told the fetch failed and reads again: it tries again, as a
            # new open would (other handles keep the blob open, so ``rejoined`` is not
            # called by the table).
            log.info("%s: read again after its fetch failed; fetching it afresh", blob.what)
            blob.rejoined()
        try:
            return await self._read_blob_checked(handle, blob, offset, end)
        except ModelfsError:
            handle.failure_seen = blob.failure
            raise

    async def _read_blob_checked(
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
