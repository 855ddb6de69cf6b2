"""One large blob being fetched into the cache, as one manifest vouches for it (``FetchKey``).

A ``BlobFetch`` holds what its pieces share (the partial file, the ``ChunkLayout``:
fixed-size, or a registry's own ranges of any size) and composes them, one job
each: ``Present`` (where checked chunks are: the partial file, or memory when the
cache cannot be written; reading them); ``ChunkFlights`` (one flight per chunk being brought, shared
by every reader of it); ``RangeRequests`` (requests, retries, a mirror's whole-blob
body); ``Trust`` (the chunk index, re-checks, two strikes); ``Peers`` (other
processes filling the same partial file, ``NoPeers`` when none); ``Publishing``
(the whole sha256, publish or discard); ``StateSaver`` (the bitmap on disk);
``WholeCheck`` (the hash ahead). What is its own: opening and closing the partial
file (``session``, run by the ``BlobTable``, which alone counts its users),
claiming flights for the chunks a read needs (``ensure``, ``prefetch``), landing
checked chunks (and pushing them to the kernel's page cache), reading them, and
pull's ``complete``.

Its tasks run in a nursery of its own inside its session, so it is closed (state
saved, partial file and lock released) only after all of them have ended and no
user reads it. Network bodies, hashing and disk writes run in worker threads; the
bitmap and flights are only touched on the trio thread.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import trio

from modelfs.blobs import peers
from modelfs.blobs.chunkflights import ChunkFlights
from modelfs.blobs.fetchcontext import FetchContext, Verify
from modelfs.blobs.partial import PartialBusy, PartialFile, PartialGone
from modelfs.blobs.peers import NoPeers, Peers
from modelfs.blobs.present import Evicted, Present
from modelfs.blobs.publishing import Publishing
from modelfs.blobs.requests import RangeRequests
from modelfs.blobs.statesave import StateSaver
from modelfs.blobs.table import Life
from modelfs.blobs.trust import Trust
from modelfs.blobs.wholecheck import WholeCheck
from modelfs.errors import CacheError, CacheFull, ModelfsError
from modelfs.flight import Flight, poll
from modelfs.formats.chunks import BlobChunks, ChunkLayout
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name
from modelfs.tasks import TaskGroup

log = logging.getLogger(__name__)


# How often a read ensures its chunks again when those held in memory were dropped meanwhile.
EVICTED_RETRIES = 3
# A reader waiting for a whole-blob check waits READ_WAIT_SECONDS plus the time hashing
# what is left could take at this (slow) rate; then EIO, and the check goes on.
VERIFY_BYTES_PER_SECOND = 100 << 20
# Tries to join a partial that another process publishes or removes meanwhile.
OPEN_TRIES = 3


class FetchKey(NamedTuple):
    """What a blob's bytes are trusted through until it is published: one entry of the
    blob table per key, so two manifests naming one digest share bytes only once the
    whole blob is checked (docs/verification.md)."""

    digest: Digest
    repository: tuple[str, str, str]  # (host, namespace, model) the bytes come from
    anonymous: bool  # fetched without the mount owner's credentials
    verify: Verify
    index: BlobChunks | None  # the chunk index that checks them (``Verify.INDEXED`` only)

    @classmethod
    def of(
        cls, name: Name, layer: Layer, index: BlobChunks | None, verify: Verify, anonymous: bool
    ) -> FetchKey:
        """The key of ``layer``'s blob as ``name`` vouches for it; INDEXED without an index
        is WHOLE."""
        if verify is not Verify.INDEXED or index is None:
            index = None
            verify = Verify.WHOLE if verify is Verify.INDEXED else verify
        return cls(layer.digest, name.repository_key, anonymous, verify, index)


class BlobFetch:
    """Fetch state of one large blob in this process (see the module docstring)."""

    def __init__(
        self,
        ctx: FetchContext,
        name: Name,
        layer: Layer,
        key: FetchKey,
        life: Life,
    ) -> None:
        self.ctx = ctx
        self.key = key
        self.name = name
        self.registry = ctx.registry_for(key.anonymous)
        self.anonymous = key.anonymous
        self.layer = layer
        self.digest = layer.digest
        self.size = layer.size
        self.layout = (
            key.index.layout if key.index else ChunkLayout(self.size, ctx.settings.chunk_bytes)
        )
        self.count = self.layout.count  # how many chunks
        self.partial: PartialFile | None = None
        self.holds_partial = False  # this fetch state holds the digest's partial in this process
        self.present = Present(self)
        self.flights = ChunkFlights()
        self.published = False
        self.failure: ModelfsError | None = None
        self._life = life  # users and closing: the blob table's (``table.Life``)
        self._tasks: TaskGroup | None = None
        self.disk_failed = False
        self._disk_error: ModelfsError | None = None
        # Other processes sharing the partial file (``Peers`` once it is shared).
        self.peers: NoPeers = NoPeers(self)
        self.state = StateSaver(ctx, self.what)
        self.trust = Trust(self, key.index, key.verify)
        self.publishing = Publishing(self)
        self.requests = RangeRequests(self)
        self.whole = WholeCheck(ctx, self.layout, self.what, self._hashable, key.index)

    @property
    def what(self) -> str:
        return f"blob {self.digest.short}"

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def handles(self) -> int:
        """Open handles (and pulls) reading it: it stays open while there are any."""
        return self._life.users

    @property
    def closing(self) -> bool:
        return self._life.closing

    def release(self) -> None:
        """One reader less (``Fetcher.acquire`` gave it one more)."""
        self._life.release()

    def rejoined(self) -> None:
        """A first reader after all had left: a blob discarded after a whole-blob mismatch
        is fetched afresh."""
        self.failure = None

    @asynccontextmanager
    async def session(self, life: Life) -> AsyncIterator[TaskGroup]:
        """Open the blob; yield the task group its fetches, flushes, hashes and publish run
        in (a nursery of its own); close it once the table leaves (shielded: progress saved,
        partial file and lock released, also at shutdown)."""
        try:
            await self._open()
            async with trio.open_nursery() as nursery:
                self._tasks = TaskGroup(nursery, life.changed)
                try:
                    self._kick()
                except Exception:  # once open, nothing may reach the daemon's nursery
                    log.exception("%s: failed while open", self.what)
                yield self._tasks
        finally:
            await self._close()

    async def _open(self) -> None:
        for _ in range(OPEN_TRIES):
            try:
                opened = await poll(
                    self._try_open,
                    self.ctx.settings.claim_wait_seconds,
                    peers.ELSEWHERE_POLL_SECONDS,
                )
                if opened is None:
                    # Another process holds the lock file (a moment, normally): do without it.
                    log.info(
                        "%s: another modelfs process has held its lock file for %.0fs; "
                        "fetching it privately",
                        self.what,
                        self.ctx.settings.claim_wait_seconds,
                    )
                    await self.ctx.in_thread(self._open_partial, True)
                return
            except PartialGone:
                continue  # published or removed by another process meanwhile: look again
        raise CacheError(f"{self.what}: its partial file keeps going away; try again")

    async def _try_open(self) -> bool | None:
        """Published, or the partial joined: True; None while another process holds its lock."""
        self.ctx.check_stopping(self.what)
        if await self.ctx.in_thread(self.ctx.cache.has_blob, self.digest, self.size):
            self.published = True
            return True
        try:
            await self.ctx.in_thread(self._open_partial)
        except PartialBusy:
            return None
        return True

    def _kick(self) -> None:
        """What an opened blob does at once: publish what an earlier run completed, or hash
        ahead what it left."""
        if self.partial is not None and self.partial.complete:
            self.publishing.start()
        else:
            self.advance_whole()

    def _open_partial(self, private: bool = False) -> None:
        """Worker thread: join the blob's partial file (shared with other modelfs processes of
        this cache: ``sharing``), or take a scratch file (always, ``private``)."""
        cache = self.ctx.cache
        # A fetch of the same digest vouched for by another manifest in this process holds
        # the partial: fill a private scratch file instead, so neither waits for nor trusts
        # the other (other processes share it chunk by chunk, each checking what it uses).
        scratch = private or self.digest in self.ctx.partials_held
        if not scratch:
            self.ctx.partials_held.add(self.digest)
            self.holds_partial = True
        partial = PartialFile(
            cache,
            self.digest,
            self.layout,
            self.verify is Verify.INDEXED,
            early_writeback=self.ctx.settings.early_writeback,
            origin="/".join(self.name.repository_key),
            scratch=scratch,
            source=self.index.source if self.index is not None else self.verify.value,
            shared=not scratch,
            anonymous=self.anonymous,
        )
        try:
            partial.open()
        except BaseException:
            self._unlock()
            raise
        self.partial = self.state.partial = partial
        if partial.shared is not None:
            self.peers = Peers(self)

    def _unlock(self) -> None:
        if self.holds_partial:
            self.holds_partial = False
            self.ctx.partials_held.discard(self.digest)

    async def _close(self) -> None:
        # Shielded: closing saves progress and releases the lock even during shutdown.
        with trio.CancelScope(shield=True):
            try:
                await self.state.close()
            except Exception:
                log.exception("%s: closing failed", self.what)
            finally:
                self._unlock()

    @property
    def tasks(self) -> TaskGroup:
        assert self._tasks is not None, "the blob is not open"
        return self._tasks

    # -- presence -----------------------------------------------------------------------------

    def has(self, i: int) -> bool:
        return self.present.has(i)

    @property
    def present_bytes(self) -> int:
        if self.published:
            return self.size
        return self.partial.present_bytes if self.partial is not None else 0

    @property
    def arrived_bytes(self) -> int:
        """Body bytes received for this blob so far, those of chunks not yet whole and checked
        included: what a progress display shows moving between chunks."""
        return self.requests.arrived_bytes

    @property
    def finalizing(self) -> Flight | None:
        """The whole-blob check and publish under way, if any."""
        return self.publishing.finalizing

    @property
    def index(self) -> BlobChunks | None:
        """The chunk index chunks are checked against (``Trust``), None once distrusted."""
        return self.trust.index

    @property
    def verify(self) -> Verify:
        return self.trust.verify

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
                flight = self.flights.claim(i)
                new.append(i)
            waits.append(flight)
        return waits, new

    def start_runs(self, new: list[int]) -> None:
        """Fetch the chunks ``new`` (their flights are claimed) but those another process is
        fetching into the shared partial: those are waited for (``Peers.wait_for``)."""
        self.requests.start(self.peers.split(new))

    async def ensure(self, lo: int, hi: int) -> None:
        """Make chunks ``[lo, hi)`` present (verified per the policy); raise if any cannot be."""
        if self.failure is not None:
            raise copy.copy(self.failure)
        if self.published:
            return
        self.peers.adopt(lo, hi)
        await self.trust.recheck(lo, hi)
        waits, new = self._claim(lo, hi)
        self.start_runs(new)
        for flight in waits:
            await self.requests.wait(flight, self.ctx.settings.read_wait_seconds)

    def prefetch(self, lo: int, hi: int) -> None:
        """Start fetching chunks ``[lo, hi)`` without waiting for them (readahead).

        A window that slides one chunk at a time would make one small request per
        chunk: wait until a share of the window is unclaimed (a quarter of it with
        4 streams), then claim it as one run, so that the window is split across
        the streams in a few large requests.
        """
        if self.published or self.failure is not None:
            return
        lo, hi = max(lo, 0), min(hi, self.count)
        if lo >= hi:
            return
        unclaimed = [i for i in range(lo, hi) if i not in self.flights and not self.has(i)]
        batch = max(1, (hi - lo) // self.ctx.settings.max_streams)
        if len(unclaimed) < batch and hi < self.count:
            return
        _waits, new = self._claim(lo, hi)
        self.start_runs(new)

    # -- landing chunks ----------------------------------------------------------------------

    def land(
        self,
        token: trio.lowlevel.TrioToken,
        i: int,
        data: bytes | None,
        offset: int,
        view: memoryview | None,
    ) -> None:
        """Worker thread: tell the trio side chunk ``i`` is here (and push it, if pushing).

        Without pushing, the fetch thread goes on receiving at once: ``_landed`` runs
        on the trio thread soon after, before the fetch's own completion is seen there
        (trio runs what threads send it in order). Pushing puts the checked chunk into
        the kernel's page cache of the inodes reading this fetch state, so streaming and
        mmap readers find it there instead of sending a READ for each piece; it waits
        for ``_landed`` to answer the READs waiting for the chunk (a store waits on the
        page locks those READs hold). A chunk that came in pieces is not pushed.
        """
        pages = self.ctx.events.pages
        if pages is None or view is None:
            token.run_sync_soon(self._landed_guarded, i, data)
            return
        for inode in trio.from_thread.run_sync(self._landed, i, data, trio_token=token):
            pages.store(inode, offset, view)

    # -- trio side of landing chunks ----------------------------------------------------------

    def _landed_guarded(self, i: int, data: bytes | None) -> None:
        try:
            self._landed(i, data)
        except Exception:  # an exception here would end trio's run, and the mount with it
            log.exception("%s: chunk %d landed, but recording it failed", self.what, i)

    def _landed(self, i: int, data: bytes | None) -> list[int]:
        """Trio side of a chunk that arrived and passed its check; the inodes to push it to."""
        start, end = self.layout.span(i)
        self.ctx.stats.fetched(self.name.host, end - start)
        if data is None:
            assert self.partial is not None
            self.partial.mark(i)
            self.partial.rechecked(i)
            self.partial.landed(i)  # for the other processes sharing the partial
            self.state.changed(self.tasks)
        else:
            if self.partial is not None:
                self.partial.release(i)
            self.present.keep(i, data)
        self.flights.finish_chunk(i)
        self.requests.landed()
        if data is None:
            self.advance_whole()
        if self.partial is not None and self.partial.complete:
            self.publishing.start()
        # Only bytes a reader may already see: never a blob served only once whole.
        pages = self.ctx.events.pages
        if self.verify is Verify.WHOLE or pages is None:
            return []
        return pages.targets(self)

    def disk_failure(self, e: ModelfsError) -> None:
        self.ctx.stats.cache_write_failures += 1
        if not self.disk_failed:
            if self.ctx.settings.serves_readers:
                # Once per blob while the process runs, however often it is opened again
                # (each failure is counted in ``cache_write_failures``).
                told = self.digest in self.ctx.unwritable
                self.ctx.unwritable.add(self.digest)
                log.log(
                    logging.DEBUG if told else logging.WARNING,
                    "%s: cannot write the cache (%s); serving from the network",
                    self.what,
                    e,
                )
            self._disk_error = e
        self.disk_failed = True
        self.state.failed = True

    # -- the whole blob -------------------------------------------------------------------------

    def _hashable(self, i: int) -> bool:
        partial = self.partial
        return partial is not None and partial.has(i) and not partial.recheck_pending(i)

    def advance_whole(self) -> None:
        if self._tasks is not None:
            self.whole.advance(self._tasks, self.partial)

    async def complete(self, wait_seconds: float | None = None) -> None:
        """Fetch every chunk, verify the whole blob and publish it (``pull``, the WHOLE policy).

        ``wait_seconds`` bounds a reader's waits: for each next chunk, for the
        whole-blob check (plus what hashing the rest takes at VERIFY_BYTES_PER_SECOND).
        Past it the reader gets
        EIO while the fetch goes on. A pull waits as long as it takes (None).
        """
        while not self.published:
            if self.failure is not None:
                raise copy.copy(self.failure)
            if self.disk_failed:
                # Nothing can be checked whole without storing it: a full disk ends it here
                # (docs/reliability.md), instead of a retry loop.
                raise copy.copy(self._disk_error) if self._disk_error else CacheFull(self.what)
            # Not published, so open with a partial file (``_open``).
            assert self.partial is not None
            if self.peers.private and not self.flights:
                # Chunks only in memory cannot be checked whole: finish in a private file.
                await self.peers.go_private()
                self.peers = NoPeers(self)
            await self.trust.recheck(0, self.count)
            waits, new = self._claim(0, self.count)
            self.start_runs(new)
            for flight in waits:
                await self.requests.wait(flight, wait_seconds)
            if self.partial.complete and self.finalizing is None and not self.published:
                self.publishing.start()
            finalizing = self.finalizing
            if finalizing is not None:
                limit = None
                if wait_seconds is not None:
                    limit = wait_seconds + self.size / VERIFY_BYTES_PER_SECOND
                await finalizing.wait(limit, f"{self.what}: checking the whole blob")

    # -- reading ------------------------------------------------------------------------------

    async def read(self, offset: int, size: int, touched: range) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)`` (chunks ``touched``), fetched and checked if need be.

        A chunk held only in memory (the cache could not be written) may be dropped
        between ``ensure`` and reading it by other readers' chunks: ensure again.
        """
        for _ in range(EVICTED_RETRIES):
            await self.ensure(touched.start, touched.stop)
            try:
                return await self.present.read(offset, size, touched)
            except Evicted:
                continue
        raise ModelfsError(f"{self.what}: chunks keep being evicted before use")
