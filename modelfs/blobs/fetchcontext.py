"""What every blob fetch of one process shares: where bytes come from, the policy, the limits.

The ``Fetcher`` makes one ``FetchContext`` and gives it to each ``BlobFetch`` (one
blob being filled) and to ``SmallBlobs``: the cache, the settings, the stream
slots, the disk limiter, the low-priority hash thread, the counters and the
daemon's hooks. It knows nothing of the blob table. Every range request goes
through ``request`` (a ``RangeRequest``), under a stream slot of its host.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from modelfs.background import BACKGROUND_NICE, BackgroundThread
from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import ModelfsError, ShuttingDown
from modelfs.formats.chunks import CHUNK_BYTES, BlobChunks
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name
from modelfs.formats.referrers import Referrer
from modelfs.registry.client import BlobRange, Chunksums, client_for
from modelfs.registry.retry import DEFAULT_ATTEMPTS
from modelfs.registry.streams import StreamSlots

log = logging.getLogger(__name__)

MAX_STREAMS = 4  # per registry host
# All hosts together: a host that trickles keeps its own share, the others theirs.
TOTAL_STREAMS_PER_HOST_SHARE = 4
# One range request asks for at most this many chunks, and this many bytes.
MAX_RUN_CHUNKS = 8
MAX_RUN_BYTES = 32 << 20
# A kill -9 costs at most about this much fetching again (the state runs this far behind).
STATE_FLUSH_SECONDS = 1.0
MEMORY_CHUNKS = 4
# A reader waiting for bytes gets EIO after this long, whatever the fetch behind it is doing.
READ_WAIT_SECONDS = 60.0
# Another modelfs process of the cache holding what this one needs (the blob's lock file
# while joining it, a small blob's or a chunk's claim) without progress for this long: this
# process fetches those bytes itself, privately. A quarter of the read bound, so that a
# reader gets its bytes, not EIO, whatever the other process does.
CLAIM_WAIT_SECONDS = 15.0
DISK_THREADS = 4


class Verify(enum.Enum):
    """How a blob's bytes are checked before a reader sees them (docs/verification.md)."""

    INDEXED = "indexed"  # each chunk against the chunk index: served as soon as it lands
    WHOLE = "whole"  # no index: the whole blob is fetched and checked before serving
    DEFERRED = "deferred"  # -o verify=deferred: served as it lands, checked when complete


@dataclass(frozen=True)
class FetchSettings:
    chunk_bytes: int = CHUNK_BYTES
    max_streams: int = MAX_STREAMS
    max_run_chunks: int = MAX_RUN_CHUNKS
    max_run_bytes: int = MAX_RUN_BYTES
    attempts: int = DEFAULT_ATTEMPTS
    state_flush_seconds: float = STATE_FLUSH_SECONDS
    read_wait_seconds: float = READ_WAIT_SECONDS
    claim_wait_seconds: float = CLAIM_WAIT_SECONDS
    memory_chunks: int = MEMORY_CHUNKS
    # pull: write to disk as bytes land, so publishing (fsync) does not wait for it all.
    # A mount leaves writeback to the kernel: a reader waits for the network, not the disk.
    early_writeback: bool = False
    # A mount serves readers from the network when the cache cannot be written; a pull
    # has no reader: a full disk ends it (``BlobFetch.complete`` raises).
    serves_readers: bool = True


@dataclass(frozen=True)
class PagePush:
    """Pushing checked chunks into the kernel's page cache of the files reading them.

    ``targets(blob)``: on the trio thread, the inodes whose open files read ``blob`` (a
    fetch state) at its own offsets (ask ``Blobs.files_reading``). ``store(inode, offset,
    data)``: in a worker thread, put ``data`` at ``offset`` of ``inode``'s page cache.
    """

    targets: Callable[[object], list[int]]
    store: Callable[[int, int, memoryview], None]


@dataclass(frozen=True)
class BlobEvents:
    """What the blob layer tells its owner. Every one is optional."""

    # A blob is in ``blobs/``, checked whole (a mount's entries of it become links).
    published: Callable[[Digest], Awaitable[None]] | None = None
    # A blob failed its whole check and was thrown away: pages already served of it
    # (verify=deferred) must leave the kernel's cache.
    discarded: Callable[[Digest], None] | None = None
    # Checked chunks to push into the page cache of the files reading them (-o push_pages).
    pages: PagePush | None = None
    # (host, seconds) of each range request that delivered its whole body (-o metrics).
    range_seconds: Callable[[str, float], None] | None = None


# One range request (bytes of a blob, where its pieces go): the registry's own request
# type, so the object a fetch builds is the one the source, mirror failover and the HTTP
# call take.
RangeRequest = BlobRange


class BlobSource(Protocol):
    """Where blob bytes come from: ``Registry`` (over HTTP), or a fake in unit tests.

    ``fetch_range(req)`` streams bytes ``[req.start, req.end)`` of ``req.digest`` (as
    ``req.name``'s repository serves it) to ``req.on_piece(offset, view)`` in pieces of
    ``req.piece_bytes``, from a worker thread taken under ``limiter``; the view is valid
    only during the call. Pieces delivered before a failure stay delivered. Failures are
    modelfs errors: ``Transient`` ones are retried. A source that answers with the whole
    blob instead asks ``req.on_whole(length)`` (worker thread) whether to deliver all of
    it, from offset 0. ``req.on_bytes(n)`` (worker thread) is told of bytes as they arrive,
    before they make a piece: what a progress display counts.
    """

    async def fetch_range(self, req: RangeRequest, *, limiter: trio.CapacityLimiter) -> None: ...

    async def chunksums(self, name: Name, digest: Digest) -> Chunksums | None:
        """The registry's own chunk digests of a blob (Ollama's chunksums), or None."""
        ...

    def use_blob_location(self, name: Name, digest: Digest, url: str) -> None:
        """Fetch the blob's bytes from ``url`` (where its chunksums say they are)."""

    def distrust_mirrors(self, name: Name, what: str) -> None:
        """Bytes of ``name`` did not match their digest: skip its mirrors for a while."""
        ...

    async def referrers(self, name: Name, subject: Digest, artifact_type: str) -> list[Referrer]:
        """Manifests of ``artifact_type`` published beside the manifest ``subject``."""
        ...

    async def manifest_by_digest(self, name: Name, digest: Digest) -> bytes:
        """A manifest of ``name``'s repository by digest, checked against it."""
        ...


@dataclass
class Stats:
    """Counters a test, a benchmark or ``modelfs status`` can read (``Fetcher.stats``).

    Changed on the trio thread only, so they need no lock.
    """

    requests: int = 0
    bytes_fetched: int = 0
    chunk_mismatches: int = 0
    blob_mismatches: int = 0
    cache_write_failures: int = 0
    published: int = 0
    # Checked blob bytes received, per registry host (lowercased) the requests went to.
    bytes_by_host: dict[str, int] = field(default_factory=dict)
    # Blob bytes another modelfs process of the cache fetched that this one used instead.
    bytes_from_processes: int = 0
    # Reads served from bytes already present, and reads that had to wait for a fetch.
    read_hits: int = 0
    read_misses: int = 0

    def fetched(self, host: str, nbytes: int) -> None:
        """``nbytes`` of checked blob bytes arrived from ``host``."""
        self.bytes_fetched += nbytes
        key = host.lower()
        self.bytes_by_host[key] = self.bytes_by_host.get(key, 0) + nbytes

    def read(self, hit: bool) -> None:
        if hit:
            self.read_hits += 1
        else:
            self.read_misses += 1


class FetchContext:
    """The shared part of every fetch in this process (see the module docstring)."""

    def __init__(
        self,
        cache: BlobCache,
        registry: BlobSource,
        nursery: trio.Nursery,
        settings: FetchSettings | None = None,
        events: BlobEvents | None = None,
        *,
        anonymous_registry: BlobSource | None = None,
    ) -> None:
        self.cache = cache
        self.registry = registry
        # Requests made for other users of an allow_other mount: no owner's credentials.
        self.anonymous_registry = anonymous_registry
        self.nursery = nursery
        self.settings = settings or FetchSettings()
        # What the owner hears (published, discarded, pages to push, request times): given
        # here, never changed afterwards.
        self.events = events or BlobEvents()
        self.streams = StreamSlots(
            self.settings.max_streams, self.settings.max_streams * TOTAL_STREAMS_PER_HOST_SHARE
        )
        self.disk = trio.CapacityLimiter(DISK_THREADS)
        # The whole-blob hash runs at a lower CPU priority when readers wait on the cores.
        self.background = BackgroundThread(
            nice=BACKGROUND_NICE if self.settings.serves_readers else 0, name="modelfs-hash"
        )
        # Chunk digests that failed twice for a blob: not used again while this process runs.
        self.distrusted: set[BlobChunks] = set()
        # Blobs whose partial file this process holds the lock of (one fetch at a time).
        self.partials_held: set[Digest] = set()
        # Blobs a reader was told could not be written to the cache (told once).
        self.unwritable: set[Digest] = set()
        self.stats = Stats()
        # Set at shutdown: waits on other processes (their locks and claims) end at once.
        self.stopping = False

    def stop_waiting(self) -> None:
        """At shutdown: every wait on another process ends now (its readers get EIO), so the
        FUSE session can end whatever other processes of the cache hold."""
        self.stopping = True

    def check_stopping(self, what: str) -> None:
        if self.stopping:
            raise ShuttingDown(f"{what}: the mount is stopping")

    def registry_for(self, anonymous: bool) -> BlobSource:
        return client_for(self.registry, self.anonymous_registry, anonymous)

    async def in_thread(self, fn: Callable[..., object], *args: object) -> object:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.disk)

    async def request(self, registry: BlobSource, req: RangeRequest) -> None:
        """Send one range request to ``registry``, under a stream slot of its host, counted
        and timed.

        The time runs from when the slot is held until the whole body arrived: what the
        registry took, not the wait for a slot.
        """
        self.stats.requests += 1
        host = req.name.host
        async with self.streams.slot(host):
            began = trio.current_time()
            await registry.fetch_range(req, limiter=self.streams.threads)
            if self.events.range_seconds is not None:
                self.events.range_seconds(host.lower(), trio.current_time() - began)

    async def published(self, digest: Digest) -> None:
        """Tell the daemon a blob is in ``blobs/`` (its entries become links)."""
        if self.events.published is not None:
            try:
                await self.events.published(digest)
            except ModelfsError as e:
                log.warning("after publishing blob %s: %s", digest.short, e)
