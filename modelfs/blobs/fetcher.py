"""Fetching blob bytes from the registry into the cache.

For every blob this process is filling, a ``BlobFetch`` owns: which chunks are
present, the in-flight fetches (one ``Flight`` per chunk, shared by every
reader of that chunk: 16 readers of one chunk make one request), retries with
backoff, verification of each chunk against the chunk index before anyone may
read it, persisting progress, and publishing the blob into ``blobs/`` once it is
whole and its sha256 matches. Network bodies, hashing and disk writes run in
worker threads; the bitmap and flights are only touched on the trio thread.

Until a blob is published its fetch state is keyed by the digest *and* by what
vouches for its bytes (``FetchKey``): the repository they are fetched from, whose
credentials fetch them, the verification policy and the chunk index. Two
manifests naming the same digest share bytes only once the whole blob's sha256
has matched and it is in ``blobs/`` (docs/verification.md).

Streams are shared fairly by registry hosts (``StreamSlots``). Fetch tasks live
in the nursery given at construction, so a reader that goes away does not cancel
a fetch other readers share; readers only wait, each wait with a deadline.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from modelfs.background import BACKGROUND_NICE, BackgroundThread
from modelfs.blobs.blobcache import BlobCache, pread_cached
from modelfs.blobs.partial import PartialFile
from modelfs.errors import CacheError, CacheFull, DigestMismatch, ModelfsError, Transient
from modelfs.flight import Flight
from modelfs.formats.chunks import CHUNK_BYTES, BlobChunks, chunk_count, chunk_span, runs
from modelfs.formats.digest import Digest, hash_file_into
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name
from modelfs.registry.client import client_for
from modelfs.registry.retry import DEFAULT_ATTEMPTS, retrying
from modelfs.registry.streams import StreamSlots
from modelfs.tasks import spawn

log = logging.getLogger(__name__)

MAX_STREAMS = 4  # per registry host
# All hosts together: a host that trickles keeps its own share, the others theirs.
TOTAL_STREAMS_PER_HOST_SHARE = 4
MAX_RUN_CHUNKS = 8
# A kill -9 costs at most about this much fetching again (the state runs this far behind).
STATE_FLUSH_SECONDS = 1.0
MEMORY_CHUNKS = 4
# How often a read ensures its chunks again when those held in memory were dropped meanwhile.
EVICTED_RETRIES = 3
# A reader waiting for bytes gets EIO after this long, whatever the fetch behind it is doing.
READ_WAIT_SECONDS = 60.0
DISK_THREADS = 4
# At shutdown, a blob whose every chunk has arrived gets this long to be checked and published.
PUBLISH_WAIT_SECONDS = 30.0
# A reader waiting for a whole-blob check waits READ_WAIT_SECONDS plus the time hashing
# what is left could take at this (slow) rate; then EIO, and the check goes on.
VERIFY_BYTES_PER_SECOND = 100 << 20
# How often a reader of a blob another fetch holds the partial of looks again.
PARTIAL_BUSY_POLL_SECONDS = 0.5


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
    attempts: int = DEFAULT_ATTEMPTS
    state_flush_seconds: float = STATE_FLUSH_SECONDS
    read_wait_seconds: float = READ_WAIT_SECONDS
    memory_chunks: int = MEMORY_CHUNKS
    # pull: write to disk as bytes land, so publishing (fsync) does not wait for it all.
    # A mount leaves writeback to the kernel: a reader waits for the network, not the disk.
    early_writeback: bool = False
    # A mount serves readers from the network when the cache cannot be written; a pull
    # has no reader: a full disk ends it (``BlobFetch.complete`` raises).
    serves_readers: bool = True


class _PrefixHash:
    """The whole-blob sha256, computed over the blob's leading chunks as they become present.

    Hashing while the rest is still downloading means the check before
    publishing only has to hash what is left (usually nothing). It runs in the
    fetcher's background thread (``BackgroundThread``, at a lower CPU priority):
    it decides only when the blob is published, never what a reader gets, so it
    uses the CPU readers leave. It reads the chunks back from the partial file,
    where they were just written: from the page cache, a copy that costs a tenth
    of the hash. ``tlock`` keeps each step whole: the hash sees each byte once,
    in order.
    """

    __slots__ = ("broken", "h", "lock", "next", "running", "tlock")

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.next = 0  # chunks [0, next) are hashed
        self.lock = trio.Lock()  # one trio-side task schedules hashing at a time
        self.tlock = threading.Lock()
        self.running = False
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

    def finish(self, fd: int, chunks: int, chunk_bytes: int, size: int) -> str:
        """Worker thread: hash whatever is left of the blob; its whole sha256 (hex)."""
        with self.tlock:
            if self.broken:
                self.h, self.next, self.broken = hashlib.sha256(), 0, False
            hash_file_into(self.h, fd, min(self.next * chunk_bytes, size), size)
            self.next = chunks
            return self.h.hexdigest()


class BlobSource(Protocol):
    """Where blob bytes come from: ``Registry`` (over HTTP), or a fake in unit tests.

    ``read_range`` streams bytes ``[start, end)`` of ``digest`` (as ``name``'s
    repository serves it) to ``on_piece(offset, view)`` in pieces of ``piece_bytes``,
    from a worker thread taken under ``limiter``; the view is valid only during the
    call. Pieces delivered before a failure stay delivered. Failures are modelfs
    errors: ``Transient`` ones are retried.
    """

    async def read_range(
        self,
        name: Name,
        digest: Digest,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: Callable[[int, memoryview], None],
        *,
        limiter: trio.CapacityLimiter,
    ) -> None: ...


@dataclass
class Stats:
    """Counters a test or a benchmark can read (``Fetcher.stats``)."""

    requests: int = 0
    bytes_fetched: int = 0
    chunk_mismatches: int = 0
    blob_mismatches: int = 0
    cache_write_failures: int = 0
    published: int = 0


# What a blob's bytes are trusted through until it is published: the digest, the
# repository (host, namespace, model) they come from, whether they are fetched without
# the mount owner's credentials, the policy, and the chunk index that checks them.
FetchKey = tuple[Digest, tuple[str, str, str], bool, "Verify", BlobChunks | None]


def fetch_key(
    name: Name, layer: Layer, chunks: BlobChunks | None, verify: Verify, anonymous: bool
) -> FetchKey:
    if verify is not Verify.INDEXED or chunks is None:
        chunks = None
        verify = Verify.WHOLE if verify is Verify.INDEXED else verify
    return (layer.digest, name.repository_key, anonymous, verify, chunks)


class Fetcher:
    """Every fetch of this process: the stream slots, the blob table, the task nursery."""

    def __init__(
        self,
        cache: BlobCache,
        registry: BlobSource,
        nursery: trio.Nursery,
        settings: FetchSettings | None = None,
        on_published: Callable[[Digest], Awaitable[None]] | None = None,
        on_discarded: Callable[[Digest], None] | None = None,
        *,
        anonymous_registry: BlobSource | None = None,
    ) -> None:
        self.cache = cache
        self.on_discarded = on_discarded
        self.registry = registry
        # Requests made for other users of an allow_other mount: no owner's credentials.
        self.anonymous_registry = anonymous_registry
        self.nursery = nursery
        self.settings = settings or FetchSettings()
        self.on_published = on_published
        self.streams = StreamSlots(
            self.settings.max_streams, self.settings.max_streams * TOTAL_STREAMS_PER_HOST_SHARE
        )
        self.disk = trio.CapacityLimiter(DISK_THREADS)
        # The whole-blob hash runs at a lower CPU priority when readers wait on the cores.
        self.background = BackgroundThread(
            nice=BACKGROUND_NICE if self.settings.serves_readers else 0, name="modelfs-hash"
        )
        self.blobs: dict[FetchKey, BlobFetch] = {}
        # Pushing checked chunks into the kernel's page cache (fuse_ops, set by the daemon):
        # which inodes read a blob (trio thread), and the store itself (worker thread).
        self.push_targets: Callable[[BlobFetch], list[int]] | None = None
        self.store: Callable[[int, int, memoryview], None] | None = None
        self._small: dict[tuple[Digest, tuple[str, str, str], bool], Flight] = {}
        self.stats = Stats()

    def is_small(self, layer: Layer) -> bool:
        """Whether a blob is fetched whole, in one request, checked against its digest
        (``fetch_small``); a larger one is fetched in chunks (``acquire``)."""
        return layer.size <= self.settings.chunk_bytes

    def registry_for(self, anonymous: bool) -> BlobSource:
        return client_for(self.registry, self.anonymous_registry, anonymous)

    def spawn(self, what: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn`` in the nursery; it may fail, but never takes the nursery down with it."""
        spawn(self.nursery, what, fn, *args)

    async def in_thread(self, fn: Callable[..., object], *args: object) -> object:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.disk)

    async def acquire(
        self,
        name: Name,
        layer: Layer,
        chunks: BlobChunks | None,
        verify: Verify,
        *,
        anonymous: bool = False,
    ) -> BlobFetch:
        """The fetch state of ``layer``'s blob as ``name`` vouches for it, opened, with one more
        user (``release`` it)."""
        key = fetch_key(name, layer, chunks, verify, anonymous)
        while True:
            bf = self.blobs.get(key)
            if bf is None:
                bf = BlobFetch(self, name, layer, chunks, verify, key, anonymous)
                self.blobs[key] = bf
            if bf.closing is not None:
                await bf.closing.wait()
                continue
            if bf.failure is not None and bf.handles == 0:
                # A blob discarded after a whole-blob mismatch is fetched afresh on a new open.
                bf.failure = None
            bf.users += 1
            bf.handles += 1
            try:
                await bf.open()
            except BaseException:
                bf.users -= 1
                bf.handles -= 1
                bf.maybe_close()
                raise
            return bf

    def holds_partial(self, digest: Digest) -> bool:
        """Whether a fetch state of this process holds ``digest``'s partial file lock."""
        return any(bf.digest == digest and bf.lock_fd is not None for bf in self.blobs.values())

    def busy_digests(self) -> set[Digest]:
        """Blobs open for reading or with fetches in flight."""
        busy = {bf.digest for bf in self.blobs.values() if bf.handles > 0 or bf.flights}
        return busy | {key[0] for key in self._small}

    async def save_all(self, publish_wait_seconds: float = PUBLISH_WAIT_SECONDS) -> None:
        """At shutdown: let publishes in progress finish, persist every blob's progress."""
        with trio.move_on_after(publish_wait_seconds):
            for bf in list(self.blobs.values()):
                finalizing = bf._finalizing
                if finalizing is not None:
                    await finalizing.event.wait()
        for bf in list(self.blobs.values()):
            try:
                await bf.save_state()
            except ModelfsError as e:
                log.warning("%s: could not save fetch progress: %s", bf.what, e)

    async def fetch_small(
        self, name: Name, layer: Layer, *, anonymous: bool = False, wait: bool = True
    ) -> bytes:
        """Fetch a blob of at most one chunk whole, check its digest, publish it; return its bytes.

        The fetch runs in the nursery, shared by everyone asking for the same blob
        from the same repository with the same credentials; a reader waits for it
        at most ``read_wait_seconds`` (a pull, ``wait=False``: as long as it takes).
        The bytes are returned so that a reader is served even if the cache cannot
        be written. They were checked against the digest, so any name may use them.
        """
        key = (layer.digest, name.repository_key, anonymous)
        flight = self._small.get(key)
        if flight is None:
            flight = self._small[key] = Flight()
            spawn(
                self.nursery,
                f"fetch blob {layer.digest.short}",
                self._small_flight,
                key,
                flight,
                name,
                layer,
                anonymous,
            )
        seconds = self.settings.read_wait_seconds if wait else None
        await flight.wait(seconds, f"blob {layer.digest.short}")
        assert flight.value is not None
        return flight.value

    async def _small_flight(
        self,
        key: tuple[Digest, tuple[str, str, str], bool],
        flight: Flight,
        name: Name,
        layer: Layer,
        anonymous: bool,
    ) -> None:
        try:
            data = await self._fetch_whole_small(name, layer, anonymous)
            try:
                await self.in_thread(self.cache.store_bytes, data, layer.digest)
            except (CacheFull, CacheError) as e:
                self.stats.cache_write_failures += 1
                log.warning("blob %s: not cached (%s); served from memory", layer.digest.short, e)
            else:
                self.stats.published += 1
                await self._published(layer.digest)
            flight.finish(value=data)
        except ModelfsError as e:
            flight.finish(e)
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                log.exception("fetch of blob %s failed unexpectedly", layer.digest.short)
            flight.finish(ModelfsError(f"fetch of blob {layer.digest.short} was interrupted"))
            if isinstance(e, trio.Cancelled | KeyboardInterrupt):
                raise
        finally:
            if self._small.get(key) is flight:
                del self._small[key]

    async def _fetch_whole_small(self, name: Name, layer: Layer, anonymous: bool) -> bytes:
        buf = bytearray(layer.size)

        def on_piece(offset: int, view: memoryview) -> None:
            buf[offset : offset + len(view)] = view

        registry = self.registry_for(anonymous)

        async def once() -> None:
            self.stats.requests += 1
            async with self.streams.slot(name.host):
                await registry.read_range(
                    name,
                    layer.digest,
                    0,
                    layer.size,
                    layer.size,
                    on_piece,
                    limiter=self.streams.threads,
                )

        if layer.size:
            await retrying(f"blob {layer.digest.short}", once, self.settings.attempts)
            self.stats.bytes_fetched += layer.size
        data = bytes(buf)
        # Hashing up to a chunk is a few ms of CPU: off the event loop.
        actual = await self.in_thread(_sha256_hex, data)
        if actual != layer.digest.hex:
            self.stats.blob_mismatches += 1
            log.warning(
                "blob %s from %s does not match its digest; discarded", layer.digest, name.host
            )
            raise DigestMismatch(f"blob {layer.digest} from {name.host} does not match its digest")
        return data

    async def _published(self, digest: Digest) -> None:
        if self.on_published is not None:
            try:
                await self.on_published(digest)
            except ModelfsError as e:
                log.warning("after publishing blob %s: %s", digest.short, e)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobFetch:
    """Fetch state of one large blob in this process (see the module docstring)."""

    def __init__(
        self,
        fetcher: Fetcher,
        name: Name,
        layer: Layer,
        chunks: BlobChunks | None,
        verify: Verify,
        key: FetchKey,
        anonymous: bool = False,
    ) -> None:
        self.fetcher = fetcher
        self.key = key
        self.name = name
        self.registry = fetcher.registry_for(anonymous)
        self.layer = layer
        self.digest = layer.digest
        self.size = layer.size
        self.index = chunks if verify is Verify.INDEXED else None
        self.verify = verify if (verify is not Verify.INDEXED or chunks) else Verify.WHOLE
        self.chunk_bytes = chunks.chunk_bytes if self.index else fetcher.settings.chunk_bytes
        self.chunks = chunk_count(self.size, self.chunk_bytes)
        self.partial: PartialFile | None = None
        self.lock_fd: int | None = None
        self.memory: OrderedDict[int, bytes] = OrderedDict()
        self.flights: dict[int, Flight] = {}
        self.users = 0  # handles, plus fetch and flush tasks: the blob stays open while > 0
        self.handles = 0  # callers of Fetcher.acquire that have not released
        self.published = False
        self.failure: ModelfsError | None = None
        self.closing: trio.Event | None = None
        self._opened = False
        self._opening: trio.Event | None = None
        self._finalizing: Flight | None = None
        self._dirty = False
        self._flush_pending = False
        self._disk_failed = False
        self._disk_error: ModelfsError | None = None
        self._wait_publish_seconds = PARTIAL_BUSY_POLL_SECONDS
        self._prefix = _PrefixHash()
        # Saving state and closing the partial file must not interleave.
        self._state_lock = trio.Lock()

    @property
    def what(self) -> str:
        return f"blob {self.digest.short}"

    # -- lifetime -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        if self._opening is not None:
            await self._opening.wait()
            if not self._opened:
                raise ModelfsError(f"{self.what}: could not be opened")
            return
        self._opening = trio.Event()
        try:
            if await self.fetcher.in_thread(self.fetcher.cache.has_blob, self.digest, self.size):
                self.published = True
            else:
                await self.fetcher.in_thread(self._open_partial)
                if self.partial is not None and self.partial.complete:
                    # Every chunk arrived in an earlier run, which ended before publishing.
                    self._start_finalize()
                else:
                    self._advance_prefix_hash()
            self._opened = True
        finally:
            self._opening.set()
            self._opening = None

    def _open_partial(self, quiet: bool = False) -> None:
        cache = self.fetcher.cache
        self.lock_fd = cache.lock_blob(self.digest)
        scratch = False
        if self.lock_fd is None:
            if not self.fetcher.holds_partial(self.digest):
                # Another modelfs process (a pull, another mount) is filling this blob:
                # serve from memory until it publishes.
                if not quiet:
                    log.info("%s: another modelfs process is fetching it; not caching", self.what)
                return
            # A fetch of the same digest vouched for by another manifest holds the partial:
            # fill a private scratch file instead, so neither waits for nor trusts the other.
            scratch = True
        partial = PartialFile(
            cache,
            self.digest,
            self.size,
            self.chunk_bytes,
            self.verify is Verify.INDEXED,
            early_writeback=self.fetcher.settings.early_writeback,
            origin="/".join(self.name.repository_key),
            scratch=scratch,
        )
        try:
            partial.open()
        except BaseException:
            if self.lock_fd is not None:
                os.close(self.lock_fd)
                self.lock_fd = None
            raise
        self.partial = partial

    def release(self) -> None:
        self.users -= 1
        self.handles -= 1
        self.maybe_close()

    def maybe_close(self) -> None:
        if (
            self.users <= 0
            and not self.flights
            and self._finalizing is None
            and self.closing is None
            and self._opening is None
        ):
            self.closing = trio.Event()
            spawn(self.fetcher.nursery, f"close {self.what}", self._close)

    async def _close(self) -> None:
        assert self.closing is not None
        # Shielded: closing saves progress and releases the lock even during shutdown.
        with trio.CancelScope(shield=True):
            try:
                async with self._state_lock:
                    if self.partial is not None and self._dirty and not self.published:
                        with contextlib.suppress(ModelfsError):
                            await self._save_state_locked()
                    if self.partial is not None:
                        self.partial.close()
            except Exception:
                log.exception("%s: closing failed", self.what)
            finally:
                if self.lock_fd is not None:
                    os.close(self.lock_fd)
                    self.lock_fd = None
                if self.fetcher.blobs.get(self.key) is self:
                    del self.fetcher.blobs[self.key]
                self.closing.set()

    # -- presence -----------------------------------------------------------------------------

    def has(self, i: int) -> bool:
        return i in self.memory or (self.partial is not None and self.partial.has(i))

    @property
    def present_bytes(self) -> int:
        if self.published:
            return self.size
        return self.partial.present_bytes if self.partial is not None else 0

    # -- fetching -----------------------------------------------------------------------------

    def _claim(self, lo: int, hi: int) -> tuple[list[Flight], list[int]]:
        waits: list[Flight] = []
        new: list[int] = []
        for i in range(lo, hi):
            # A flight first: a chunk still marked present may be being re-checked.
            flight = self.flights.get(i)
            if flight is None and self.has(i):
                continue
            if flight is None:
                flight = self.flights[i] = Flight()
                new.append(i)
            waits.append(flight)
        return waits, new

    def _start_runs(self, new: list[int]) -> None:
        for rlo, rhi in runs(new, self.fetcher.settings.max_run_chunks):
            self.users += 1
            spawn(
                self.fetcher.nursery,
                f"fetch {self.what} chunks {rlo}-{rhi - 1}",
                self._fetch_run,
                rlo,
                rhi,
            )

    async def ensure(self, lo: int, hi: int) -> None:
        """Make chunks ``[lo, hi)`` present (verified per the policy); raise if any cannot be."""
        if self.failure is not None:
            raise copy.copy(self.failure)
        if self.published:
            return
        await self._recheck(lo, hi)
        waits, new = self._claim(lo, hi)
        self._start_runs(new)
        for flight in waits:
            await flight.wait(self.fetcher.settings.read_wait_seconds, self.what)

    def prefetch(self, lo: int, hi: int) -> None:
        """Start fetching chunks ``[lo, hi)`` without waiting for them (readahead).

        A window that slides one chunk at a time would make one small request per
        chunk: wait until a share of the window is unclaimed (a quarter of it with
        4 streams), then claim it as one run, so that the window is split across
        the streams in a few large requests.
        """
        if self.published or self.failure is not None:
            return
        lo, hi = max(lo, 0), min(hi, self.chunks)
        if lo >= hi:
            return
        unclaimed = [i for i in range(lo, hi) if i not in self.flights and not self.has(i)]
        batch = max(1, (hi - lo) // self.fetcher.settings.max_streams)
        if len(unclaimed) < batch and hi < self.chunks:
            return
        _waits, new = self._claim(lo, hi)
        self._start_runs(new)

    async def _recheck(self, lo: int, hi: int) -> None:
        """Re-verify chunks a previous run left, before their first use in this one.

        A chunk being re-checked has a flight, like one being fetched: a concurrent
        reader waits for the verdict instead of reading what is on disk. A chunk that
        fails is fetched again under the same flight.
        """
        partial = self.partial
        index = self.index
        if partial is None or index is None:
            return
        for i in range(lo, hi):
            if not partial.recheck_pending(i) or i in self.flights:
                continue
            flight = self.flights[i] = Flight()
            try:
                data = await self.fetcher.in_thread(partial.chunk_bytes_at, i)
            except BaseException as e:
                if self.flights.get(i) is flight:
                    del self.flights[i]
                error = e if isinstance(e, ModelfsError) else None
                flight.finish(error or ModelfsError(f"{self.what}: re-checking chunk {i} failed"))
                raise
            partial.rechecked(i)
            if index.verify(i, data):  # type: ignore[arg-type]
                del self.flights[i]
                flight.finish()
                continue
            log.warning(
                "%s: chunk %d on disk does not match the chunk index; refetching", self.what, i
            )
            partial.unmark(i)
            self._dirty = True
            self._start_runs([i])  # its fetch finishes the flight
        self._advance_prefix_hash()

    async def _fetch_run(self, lo: int, hi: int) -> None:
        mine = {i: self.flights[i] for i in range(lo, hi) if i in self.flights}

        async def once() -> None:
            # A retry asks only for what the failed try did not deliver.
            pending = [i for i, f in mine.items() if not f.event.is_set()]
            if pending:
                start = chunk_span(pending[0], self.size, self.chunk_bytes)[0]
                end = chunk_span(pending[-1], self.size, self.chunk_bytes)[1]
                await self._fetch_range(start, end)

        try:
            await retrying(self.what, once, self.fetcher.settings.attempts)
            for i, flight in mine.items():
                if not flight.event.is_set():
                    # The range was delivered but this chunk was not: cannot happen
                    # unless the registry cut the body short without an error.
                    raise Transient(f"{self.what}: chunk {i} missing from a complete body")
        except ModelfsError as e:
            waited = any(f.event.statistics().tasks_waiting for f in mine.values())
            # A failed readahead nobody waits for is not a problem yet; a reader's is.
            log.log(
                logging.WARNING if waited else logging.INFO,
                "%s: chunks %d-%d failed: %s",
                self.what,
                lo,
                hi - 1,
                e,
            )
            self._fail(mine, e)
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                log.exception(
                    "%s: fetch of chunks %d-%d failed unexpectedly", self.what, lo, hi - 1
                )
            self._fail(mine, ModelfsError(f"{self.what}: internal error while fetching"))
            if isinstance(e, trio.Cancelled | KeyboardInterrupt):
                raise
        finally:
            self.users -= 1
            self.maybe_close()

    def _fail(self, mine: dict[int, Flight], error: ModelfsError) -> None:
        for i, flight in mine.items():
            if not flight.event.is_set():
                if self.flights.get(i) is flight:
                    del self.flights[i]
                flight.finish(error)

    async def _fetch_range(self, start: int, end: int) -> None:
        partial = self.partial
        if partial is not None and not self._disk_failed:
            try:
                await self.fetcher.in_thread(partial.reserve, start, end)
            except (CacheFull, CacheError) as e:
                self._disk_failure(e)
        token = trio.lowlevel.current_trio_token()
        index = self.index
        chunk_bytes = self.chunk_bytes

        def on_piece(offset: int, view: memoryview) -> None:
            # Worker thread: verify, write, then tell the trio side.
            i = offset // chunk_bytes
            if index is not None and not index.verify(i, view):
                trio.from_thread.run_sync(self._chunk_mismatch, i, trio_token=token)
                return
            if partial is not None and not self._disk_failed:
                try:
                    partial.write(offset, view)
                except (CacheFull, CacheError) as e:
                    trio.from_thread.run_sync(self._disk_failure, e, trio_token=token)
                else:
                    self._land(token, i, None, offset, view)
                    return
            self._land(token, i, bytes(view), offset, view)

        self.fetcher.stats.requests += 1
        streams = self.fetcher.streams
        async with streams.slot(self.name.host):
            await self.registry.read_range(
                self.name,
                self.digest,
                start,
                end,
                chunk_bytes,
                on_piece,
                limiter=streams.threads,
            )

    # -- trio-side callbacks from the worker thread ---------------------------------------------

    def _land(
        self,
        token: trio.lowlevel.TrioToken,
        i: int,
        data: bytes | None,
        offset: int,
        view: memoryview,
    ) -> None:
        """Worker thread: tell the trio side chunk ``i`` is here (and push it, if pushing).

        Without pushing, the fetch thread goes on receiving at once: ``_landed`` runs
        on the trio thread soon after, before the fetch's own completion is seen there
        (trio runs what threads send it in order). Pushing puts the checked chunk into
        the kernel's page cache of the inodes reading this fetch state, so streaming and
        mmap readers find it there instead of sending a READ for each piece; it waits
        for ``_landed`` to answer the READs waiting for the chunk (a store waits on the
        page locks those READs hold).
        """
        store = self.fetcher.store
        if store is None:
            token.run_sync_soon(self._landed_guarded, i, data)
            return
        for inode in trio.from_thread.run_sync(self._landed, i, data, trio_token=token):
            store(inode, offset, view)

    def _landed_guarded(self, i: int, data: bytes | None) -> None:
        try:
            self._landed(i, data)
        except Exception:  # an exception here would end trio's run, and the mount with it
            log.exception("%s: chunk %d landed, but recording it failed", self.what, i)

    def _landed(self, i: int, data: bytes | None) -> list[int]:
        """Trio side of a chunk that arrived and passed its check; the inodes to push it to."""
        start, end = chunk_span(i, self.size, self.chunk_bytes)
        self.fetcher.stats.bytes_fetched += end - start
        if data is None:
            assert self.partial is not None
            self.partial.mark(i)
            self.partial.rechecked(i)
            self._dirty = True
            self._schedule_flush()
        else:
            self.memory[i] = data
            self.memory.move_to_end(i)
            while len(self.memory) > self.fetcher.settings.memory_chunks:
                self.memory.popitem(last=False)
        flight = self.flights.pop(i, None)
        if flight is not None:
            flight.finish()
        if data is None:
            self._advance_prefix_hash()
        if self.partial is not None and self.partial.complete:
            self._start_finalize()
        # Only bytes a reader may already see: never a blob served only once whole.
        if self.verify is Verify.WHOLE or self.fetcher.push_targets is None:
            return []
        return self.fetcher.push_targets(self)

    def _hashable(self, i: int) -> bool:
        partial = self.partial
        return partial is not None and partial.has(i) and not partial.recheck_pending(i)

    def _advance_prefix_hash(self) -> None:
        ph = self._prefix
        if not ph.running and 0 <= ph.next < self.chunks and self._hashable(ph.next):
            ph.running = True
            self.users += 1
            spawn(self.fetcher.nursery, f"hash {self.what}", self._hash_prefix, ph)

    async def _hash_prefix(self, ph: _PrefixHash) -> None:
        try:
            while ph is self._prefix and 0 <= ph.next < self.chunks and self._hashable(ph.next):
                async with ph.lock:
                    if ph is not self._prefix or self.partial is None:
                        return
                    lo = hi = ph.next
                    while hi < self.chunks and hi - lo < MAX_RUN_CHUNKS and self._hashable(hi):
                        hi += 1
                    if hi == lo:
                        return
                    start = chunk_span(lo, self.size, self.chunk_bytes)[0]
                    end = chunk_span(hi - 1, self.size, self.chunk_bytes)[1]
                    fd = self.partial.fd
                    await self.fetcher.background.run(ph.catch_up, fd, lo, hi, start, end)
        except (ModelfsError, OSError) as e:
            # The check before publishing hashes whatever is left.
            log.debug("%s: hashing ahead stopped: %s", self.what, e)
        finally:
            ph.running = False
            self.users -= 1
            self.maybe_close()

    async def _whole_digest(self, partial: PartialFile) -> Digest:
        """The blob's sha256: what the prefix hash has not covered yet is hashed now."""
        ph = self._prefix
        async with ph.lock:
            try:
                hexdigest = await self.fetcher.background.run(
                    ph.finish, partial.fd, self.chunks, self.chunk_bytes, self.size
                )
            except BaseException:
                self._prefix = _PrefixHash()  # hashed part of a range: start over next time
                raise
            return Digest(hexdigest)  # type: ignore[arg-type]

    def _chunk_mismatch(self, i: int) -> None:
        start, end = chunk_span(i, self.size, self.chunk_bytes)
        self.fetcher.stats.chunk_mismatches += 1
        log.warning(
            "blob %s: chunk %d (bytes %d-%d) from %s does not match the chunk index; discarded",
            self.digest,
            i,
            start,
            end - 1,
            self.name.host,
        )
        flight = self.flights.pop(i, None)
        if flight is not None:
            flight.finish(
                DigestMismatch(f"blob {self.digest} chunk {i} does not match the chunk index")
            )

    def _disk_failure(self, e: ModelfsError) -> None:
        self.fetcher.stats.cache_write_failures += 1
        if not self._disk_failed:
            if self.fetcher.settings.serves_readers:
                log.warning(
                    "%s: cannot write the cache (%s); serving from the network", self.what, e
                )
            self._disk_error = e
        self._disk_failed = True

    # -- persistence and publishing -------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.users += 1
            spawn(self.fetcher.nursery, f"flush {self.what}", self._flush_later)

    async def _flush_later(self) -> None:
        try:
            await trio.sleep(self.fetcher.settings.state_flush_seconds)
            self._flush_pending = False
            if self._finalizing is None:
                await self.save_state()
        except ModelfsError as e:
            log.warning("%s: could not save fetch progress: %s", self.what, e)
        finally:
            self._flush_pending = False
            self.users -= 1
            self.maybe_close()

    async def save_state(self) -> None:
        """Persist which chunks are present, if anything changed since the last save."""
        with trio.CancelScope(shield=True):
            async with self._state_lock:
                if self._dirty and not self.published:
                    await self._save_state_locked()

    async def _save_state_locked(self) -> None:
        partial = self.partial
        if partial is None or self._disk_failed or partial.fd < 0:
            return
        snapshot = bytes(partial.present)
        self._dirty = False
        try:
            await self.fetcher.in_thread(partial.save_state, snapshot)
        except BaseException:
            self._dirty = True
            raise

    def _start_finalize(self) -> None:
        if self._finalizing is None and not self.published:
            self._finalizing = Flight()
            spawn(self.fetcher.nursery, f"finalize {self.what}", self._finalize)

    async def _finalize(self) -> None:
        flight = self._finalizing
        assert flight is not None and self.partial is not None
        partial = self.partial
        error: ModelfsError | None = None
        try:
            # Chunks left by an earlier run, not re-checked yet, must not reach the hash
            # unchecked (they may have been written for another manifest's index).
            await self._recheck(0, self.chunks)
            if not partial.complete:
                return  # the refetches' landing starts the next finalize
            got = await self._whole_digest(partial)
            if got != self.digest:
                self.fetcher.stats.blob_mismatches += 1
                log.warning(
                    "blob %s from %s: whole-blob sha256 is %s; discarding the fetched data",
                    self.digest,
                    self.name.host,
                    got,
                )
                self._prefix = _PrefixHash()
                await self.fetcher.in_thread(partial.discard)
                self.memory.clear()
                error = DigestMismatch(f"blob {self.digest} does not match its digest")
                self.failure = error
                if self.fetcher.on_discarded is not None:
                    # Pages already served (verify=deferred) must leave the kernel's cache.
                    self.fetcher.on_discarded(self.digest)
            else:
                await self.fetcher.in_thread(partial.publish)
                self.published = True
                self.fetcher.stats.published += 1
                log.info("blob %s: complete and verified, published", self.digest.short)
        except ModelfsError as e:
            log.warning("%s: could not publish: %s", self.what, e)
            error = e
        except Exception:
            log.exception("%s: publishing failed unexpectedly", self.what)
            error = ModelfsError(f"{self.what}: internal error while publishing")
        finally:
            self._finalizing = None
            flight.finish(error)
        if self.published:
            await self.fetcher._published(self.digest)
        self.maybe_close()

    async def complete(self, wait_seconds: float | None = None) -> None:
        """Fetch every chunk, verify the whole blob and publish it (``pull``, the WHOLE policy).

        ``wait_seconds`` bounds a reader's waits: for each next chunk, for the
        whole-blob check (plus what hashing the rest takes at VERIFY_BYTES_PER_SECOND),
        and for another fetch that holds the partial file. Past it the reader gets
        EIO while the fetch goes on. A pull waits as long as it takes (None).
        """
        busy_since: float | None = None
        while not self.published:
            if self.failure is not None:
                raise copy.copy(self.failure)
            if self._disk_failed:
                # Nothing can be checked whole without storing it: a full disk ends it here
                # (docs/reliability.md), instead of a retry loop.
                raise copy.copy(self._disk_error) if self._disk_error else CacheFull(self.what)
            if self.partial is None:
                # Another fetch holds the partial file: wait for it to publish or let go.
                if await self.fetcher.in_thread(
                    self.fetcher.cache.has_blob, self.digest, self.size
                ):
                    self.published = True
                    return
                await self.fetcher.in_thread(self._open_partial, True)
                if self.partial is None:
                    now = trio.current_time()
                    busy_since = now if busy_since is None else busy_since
                    if wait_seconds is not None and now - busy_since > wait_seconds:
                        raise Transient(
                            f"{self.what}: another fetch has been filling it for "
                            f"{wait_seconds:.0f}s; try again later"
                        )
                    await trio.sleep(self._wait_publish_seconds)
                    continue
                if self.partial.complete:
                    self._start_finalize()
            await self._recheck(0, self.chunks)
            waits, new = self._claim(0, self.chunks)
            self._start_runs(new)
            for flight in waits:
                await flight.wait(wait_seconds, self.what)
            if self.partial.complete and self._finalizing is None and not self.published:
                self._start_finalize()
            finalizing = self._finalizing
            if finalizing is not None:
                limit = None
                if wait_seconds is not None:
                    limit = wait_seconds + self.size / VERIFY_BYTES_PER_SECOND
                await finalizing.wait(limit, f"{self.what}: checking the whole blob")

    # -- reading ------------------------------------------------------------------------------

    async def read_range(self, offset: int, size: int, touched: range) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)`` (chunks ``touched``), fetched and checked if need be.

        A chunk held only in memory (the cache could not be written) may be dropped
        between ``ensure`` and ``read`` by other readers' chunks: ensure again.
        """
        for _ in range(EVICTED_RETRIES):
            await self.ensure(touched.start, touched.stop)
            try:
                return await self.read(offset, size)
            except _Evicted:
                continue
        raise ModelfsError(f"{self.what}: chunks keep being evicted before use")

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)``; the chunks must have been ensured (or published)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        partial = self.partial
        lo = offset // self.chunk_bytes
        hi = (end - 1) // self.chunk_bytes + 1
        if partial is not None and (self.published or all(partial.has(i) for i in range(lo, hi))):
            data = pread_cached(partial.fd, offset, end - offset)
            if data is not None:
                return data
            return await self.fetcher.in_thread(partial.read, offset, end - offset)  # type: ignore[return-value]
        out = bytearray()
        for i in range(lo, hi):
            cstart, cend = chunk_span(i, self.size, self.chunk_bytes)
            a, b = max(offset, cstart), min(end, cend)
            data = self.memory.get(i)
            if data is not None:
                out += data[a - cstart : b - cstart]
            elif self.partial is not None and self.partial.has(i):
                out += await self.fetcher.in_thread(self.partial.read, a, b - a)  # type: ignore[operator]
            else:
                raise _Evicted(i)
        return bytes(out)


class _Evicted(ModelfsError):
    """A chunk held in memory was evicted between ensure and read; the reader ensures again."""

    def __init__(self, i: int) -> None:
        super().__init__(f"chunk {i} was evicted before it was read")
