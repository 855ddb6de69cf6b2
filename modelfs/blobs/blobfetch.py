"""One large blob being fetched into the cache: its chunks, their flights, and its lifetime.

A ``BlobFetch`` owns, for one blob as one manifest vouches for it (its
``FetchKey``): which chunks are present, the in-flight fetches (one ``Flight`` per
chunk, shared by every reader of that chunk: 16 readers of one chunk make one
request), retries, verification of each chunk against the chunk index before
anyone may read it, and the reading of present chunks. Its chunks follow a
``ChunkLayout``: fixed-size, or a registry's own ranges of any size (a chunk that
arrives in several pieces is hashed as they come and trusted when complete).
Persisting progress is ``Progress``'s job, the whole-blob sha256 ``WholeCheck``'s;
this class decides when each runs, and publishes the blob once it is whole and
its digest matches.

Its lifetime is a task (``live``) of the fetcher's nursery that holds a nursery
of its own: every fetch, flush, hash and publish of the blob runs in it, so the
blob is closed (progress saved, partial file and lock released) only after all of
them have ended and no handle reads it. Network bodies, hashing and disk writes
run in worker threads; the bitmap and flights are only touched on the trio thread.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import trio

from modelfs.blobs.blobcache import pread_cached
from modelfs.blobs.chunkflights import ChunkFlights
from modelfs.blobs.fetchcontext import FetchContext, RangeRequest, Verify
from modelfs.blobs.partial import PartialBusy, PartialFile, PartialGone
from modelfs.blobs.progress import Progress
from modelfs.blobs.receive import RangeReceiver
from modelfs.blobs.table import Life
from modelfs.blobs.wholecheck import WholeCheck
from modelfs.blobs.wholestream import WholeStream
from modelfs.errors import CacheError, CacheFull, DigestMismatch, ModelfsError, Transient
from modelfs.flight import Flight, poll
from modelfs.formats.chunks import BlobChunks, ChunkLayout, serialize_chunk_index
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name
from modelfs.registry.retry import retrying
from modelfs.tasks import TaskGroup

log = logging.getLogger(__name__)


class _Arriving:
    """Body bytes one range request has received so far. Equal only to itself: two requests
    under way with the same count are still two counters."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


# How often a read ensures its chunks again when those held in memory were dropped meanwhile.
EVICTED_RETRIES = 3
# A reader waiting for a whole-blob check waits READ_WAIT_SECONDS plus the time hashing
# what is left could take at this (slow) rate; then EIO, and the check goes on.
VERIFY_BYTES_PER_SECOND = 100 << 20
# How often what another process holds (its chunk claims, the lock file) is looked at again
# (doubling from the first to the last).
ELSEWHERE_POLL_SECONDS = (0.005, 0.05)
# Tries to join a partial that another process publishes or removes meanwhile.
OPEN_TRIES = 3
# Range bodies of a registry's large chunks are delivered in pieces of at most this.
PIECE_BYTES = 4 << 20


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
        self.index = key.index
        self.verify = key.verify
        self.layout = (
            self.index.layout if self.index else ChunkLayout(self.size, ctx.settings.chunk_bytes)
        )
        self.count = self.layout.count  # how many chunks
        self.partial: PartialFile | None = None
        self.holds_partial = False  # this fetch state holds the digest's partial in this process
        self.memory: OrderedDict[int, bytes] = OrderedDict()
        self.flights = ChunkFlights()
        self.published = False
        self.failure: ModelfsError | None = None
        self._life = life  # users and closing: the blob table's (``table.Life``)
        self._tasks: TaskGroup | None = None
        self._finalizing: Flight | None = None
        self._mismatched: set[int] = set()  # chunks that failed their check once
        self._stream: WholeStream | None = None  # a whole-blob body being taken as the fill
        # Set once the first range request of this blob has an answer: until then no other
        # is sent (a mirror that answers with the whole blob would copy it once per request).
        self._first_answer: Flight | None = None
        self._disk_failed = False
        self._disk_error: ModelfsError | None = None
        # Chunks another process marked in the shared partial that failed this fetch's
        # check while that process used the file: fetched into memory, never written over.
        self._private: set[int] = set()
        # When a chunk was last taken from another process, and last waited for: another
        # process that made no progress for ``claim_wait_seconds`` is stalled (stopped?) and
        # its chunks are fetched here, privately (``_wait_elsewhere``).
        self._progress_at = 0.0
        self._waited_at = -float("inf")
        # Body bytes received: of requests that ended, and one counter per request under
        # way (each written only by its worker thread, so no update is lost).
        self._arrived_bytes = 0
        self._arriving: list[_Arriving] = []
        self.progress = Progress(ctx, self.what)
        self.whole = WholeCheck(ctx, self.layout, self.what, self._hashable)

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
                    self._try_open, self.ctx.settings.claim_wait_seconds, ELSEWHERE_POLL_SECONDS
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
            self._start_finalize()
        else:
            self._advance_whole()

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
        self.partial = self.progress.partial = partial

    def _unlock(self) -> None:
        if self.holds_partial:
            self.holds_partial = False
            self.ctx.partials_held.discard(self.digest)

    async def _close(self) -> None:
        # Shielded: closing saves progress and releases the lock even during shutdown.
        with trio.CancelScope(shield=True):
            try:
                await self.progress.close()
            except Exception:
                log.exception("%s: closing failed", self.what)
            finally:
                self._unlock()

    @property
    def _group(self) -> TaskGroup:
        assert self._tasks is not None, "the blob is not open"
        return self._tasks

    # -- presence -----------------------------------------------------------------------------

    def has(self, i: int) -> bool:
        return i in self.memory or (self.partial is not None and self.partial.has(i))

    @property
    def present_bytes(self) -> int:
        if self.published:
            return self.size
        return self.partial.present_bytes if self.partial is not None else 0

    @property
    def arrived_bytes(self) -> int:
        """Body bytes received for this blob so far, those of chunks not yet whole and checked
        included: what a progress display shows moving between chunks."""
        return self._arrived_bytes + sum(counter.n for counter in self._arriving)

    @property
    def finalizing(self) -> Flight | None:
        """The whole-blob check and publish under way, if any."""
        return self._finalizing

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

    def _start_runs(self, new: list[int]) -> None:
        """Fetch the chunks ``new`` (their flights are set) but those another process is
        fetching into the shared partial: those are waited for (``_wait_elsewhere``)."""
        partial = self.partial
        if partial is not None and partial.shared is not None:
            mine: list[int] = []
            theirs: list[int] = []
            for i in new:
                if i in self._private or partial.claim_unmarked(i):
                    mine.append(i)
                else:
                    theirs.append(i)
            if theirs:
                self._group.spawn(
                    f"wait for {self.what} chunks {theirs[0]}-{theirs[-1]} from another process",
                    self._wait_elsewhere,
                    theirs,
                )
            new = mine
        self._spawn_runs(new)

    def _spawn_runs(self, new: list[int]) -> None:
        settings = self.ctx.settings
        for rlo, rhi in self.layout.runs(new, settings.max_run_chunks, settings.max_run_bytes):
            self._group.spawn(
                f"fetch {self.what} chunks {rlo}-{rhi - 1}", self._fetch_run, rlo, rhi
            )

    async def ensure(self, lo: int, hi: int) -> None:
        """Make chunks ``[lo, hi)`` present (verified per the policy); raise if any cannot be."""
        if self.failure is not None:
            raise copy.copy(self.failure)
        if self.published:
            return
        self._adopt(lo, hi)
        await self._recheck(lo, hi)
        waits, new = self._claim(lo, hi)
        self._start_runs(new)
        for flight in waits:
            await self._wait(flight, self.ctx.settings.read_wait_seconds)

    async def _wait(self, flight: Flight, seconds: float | None) -> None:
        """Wait for a chunk's flight; one a whole-blob body brings, while that body moves."""
        stream = self._stream
        if stream is not None and stream.owns(flight):
            await stream.wait(flight, seconds, self.what)
        else:
            await flight.wait(seconds, self.what)

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
        self._start_runs(new)

    # -- chunks other processes fetch into the shared partial (``sharing``) ------------------

    def _adopt(self, lo: int, hi: int) -> None:
        """Take the chunks of ``[lo, hi)`` another process marked (an indexed blob re-checks
        them before their first use: ``_recheck``)."""
        partial = self.partial
        if partial is None or partial.shared is None:
            return
        got = partial.adopt(lo, hi, skip=lambda i: i in self.flights or i in self._private)
        for i in got:
            start, end = self.layout.span(i)
            self.ctx.stats.bytes_from_processes += end - start
        if got:
            self._progress_at = trio.current_time()
            self.progress.changed(self._group)
            if not partial.indexed:
                self._advance_whole()
                if partial.complete and not self.flights:
                    self._start_finalize()

    async def _wait_elsewhere(self, chunks: list[int]) -> None:
        """Wait for chunks another process is fetching into the shared partial; take them
        when it marks them, fetch them here if it lets go without (it failed or died), and
        fetch them here privately (into memory, never into the file) if it holds them without
        progress (``_stalled_elsewhere``) or for twice ``claim_wait_seconds`` in all."""
        partial = self.partial
        assert partial is not None
        pending = self.flights.of(chunks)

        def over() -> bool:
            return self.closing or self.failure is not None or self.published or self.ctx.stopping

        async def look() -> bool | None:
            if over():
                return True
            mine: list[int] = []
            for i in list(pending):
                if partial.marked_elsewhere(i):
                    flight = pending[i]
                    if await self._take_elsewhere(i, flight):
                        del pending[i]
                        continue
                    del pending[i]
                    if i in self._private or partial.claim(i):
                        mine.append(i)
                    else:
                        pending[i] = flight  # another process refetches it meanwhile
                elif partial.claim_unmarked(i):  # marked just now: taken on the next look
                    del pending[i]
                    mine.append(i)
            if mine:
                self._spawn_runs(mine)
            if not pending or self._stalled_elsewhere():
                return True
            return None

        try:
            await poll(look, 2 * self.ctx.settings.claim_wait_seconds, ELSEWHERE_POLL_SECONDS)
            if pending and not over():
                log.info(
                    "%s: chunks %s: the modelfs process fetching them made no progress; "
                    "fetching them here, privately",
                    self.what,
                    ", ".join(map(str, sorted(pending))),
                )
                self._private.update(pending)
                taken = list(pending)
                pending.clear()
                self._spawn_runs(taken)  # their flights stay: these runs finish them
        finally:
            # Published (readers read it whole), failed, closing, or checking a chunk failed.
            error = copy.copy(self.failure) if self.failure is not None else None
            for i, flight in pending.items():
                self.flights.finish(
                    i,
                    flight,
                    None
                    if self.published
                    else error
                    or Transient(
                        f"{self.what}: stopped waiting for chunk {i} from another process"
                    ),
                )

    def _stalled_elsewhere(self) -> bool:
        """Whether no chunk was taken from another process for ``claim_wait_seconds`` of
        waiting for one (its holder is stopped, or slower than the read bound allows)."""
        now = trio.current_time()
        wait = self.ctx.settings.claim_wait_seconds
        if now - self._waited_at > wait:
            self._progress_at = now  # nobody waited meanwhile: this wait starts the clock
        self._waited_at = now
        return now - self._progress_at >= wait

    async def _take_elsewhere(self, i: int, flight: Flight) -> bool:
        """Chunk ``i``, marked by another process, becomes present here once it passes this
        fetch's own check. False: it must be fetched here (the flight stays)."""
        partial = self.partial
        assert partial is not None
        if self.index is not None:
            good = await self.ctx.in_thread(partial.verify_chunk, i, self.index)
            if not good:
                self._distrust_elsewhere(i)
                return False
        partial.mark(i)
        partial.rechecked(i)
        self._progress_at = trio.current_time()
        start, end = self.layout.span(i)
        self.ctx.stats.bytes_from_processes += end - start
        self.flights.finish(i, flight)
        self.progress.changed(self._group)
        self._advance_whole()
        if partial.complete and not self.flights:
            self._start_finalize()
        return True

    def _distrust_elsewhere(self, i: int) -> None:
        """Chunk ``i`` on disk fails this fetch's check: fetch it again into the file if no
        other process uses the file, else into memory (another may have checked those bytes
        by its own index and serve them: they are never written over)."""
        partial = self.partial
        assert partial is not None
        partial.unmark(i)
        if partial.may_rewrite(i):
            log.warning(
                "%s: chunk %d on disk does not match the chunk index; refetching", self.what, i
            )
            return
        self._private.add(i)
        log.warning(
            "%s: chunk %d another modelfs process wrote does not match this model's chunk "
            "index; fetching it again into memory, leaving that process's copy alone",
            self.what,
            i,
        )

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
            flight = self.flights.claim(i)
            try:
                good = await self.ctx.in_thread(partial.verify_chunk, i, index)
            except BaseException as e:
                error = e if isinstance(e, ModelfsError) else None
                self.flights.finish(
                    i, flight, error or ModelfsError(f"{self.what}: re-checking chunk {i} failed")
                )
                raise
            partial.rechecked(i)
            if good:
                self.flights.finish(i, flight)
                if partial.complete and not self.flights:
                    # A whole-blob check that found this chunk still in question waits for it.
                    self._start_finalize()
                continue
            self._distrust_elsewhere(i)
            self.progress.changed(self._group)
            self._start_runs([i])  # its fetch finishes the flight
        self._advance_whole()

    async def _fetch_run(self, lo: int, hi: int) -> None:
        mine = self.flights.of(range(lo, hi))

        async def once() -> None:
            # A retry asks only for what the failed try did not deliver.
            pending = [i for i, f in mine.items() if not f.done]
            if pending:
                start = self.layout.span(pending[0])[0]
                end = self.layout.span(pending[-1])[1]
                await self._fetch_range(start, end)

        try:
            await retrying(self.what, once, self.ctx.settings.attempts)
            if any(not f.done and i in self._mismatched for i, f in mine.items()):
                # A chunk that failed its check is fetched once more (a second failure
                # ends its flight: ``_chunk_mismatch``).
                await retrying(self.what, once, self.ctx.settings.attempts)
            for i, flight in mine.items():
                if not flight.done:
                    # The range was delivered but this chunk was not: cannot happen
                    # unless the registry cut the body short without an error.
                    raise Transient(f"{self.what}: chunk {i} missing from a complete body")
        except ModelfsError as e:
            waited = any(f.has_waiters for f in mine.values())
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

    def _fail(self, mine: dict[int, Flight], error: ModelfsError) -> None:
        for i, flight in mine.items():
            if not flight.done:
                if self.partial is not None:
                    self.partial.release(i)
                self.flights.finish(i, flight, error)

    async def _fetch_range(self, start: int, end: int) -> None:
        gate, first = self._first_answer, False
        if gate is None:
            gate, first = Flight(), True
            self._first_answer = gate
        try:
            if not first:
                # Bounded by the first request: its stall detection and retries end it.
                await gate.settled(None)
            stream = self._stream
            if stream is not None and not stream.ended:
                # A whole-blob body is coming: it brings these chunks too; ask only for
                # what it did not bring once it ends.
                asked = self.layout.covering(start, end - start)
                await stream.bring(asked, self.has)
                missing = [i for i in asked if not self.has(i)]
                if not missing:
                    return
                start, end = self.layout.span(missing[0])[0], self.layout.span(missing[-1])[1]
            await self._request_range(start, end)
        finally:
            if first:
                gate.finish()

    async def _request_range(self, start: int, end: int) -> None:
        partial = self.partial
        if partial is not None and not self._disk_failed:
            try:
                await self.ctx.in_thread(partial.reserve, start, end)
            except (CacheFull, CacheError) as e:
                self._disk_failure(e)
        token = trio.lowlevel.current_trio_token()
        layout = self.layout
        asked = layout.covering(start, end - start)
        receiver = RangeReceiver(
            layout,
            self.index,
            partial,
            writable=lambda i: not self._disk_failed and i not in self._private,
            landed=functools.partial(self._land, token),
            mismatch=lambda i: trio.from_thread.run_sync(self._chunk_mismatch, i, trio_token=token),
            disk_failed=lambda e: trio.from_thread.run_sync(
                self._disk_failure, e, trio_token=token
            ),
            asked=asked,
        )
        started: list[WholeStream] = []

        def on_whole(length: int | None) -> bool:
            # Worker thread: the answer is the whole blob. Take it if it is this blob's size.
            if length is not None and length != self.size:
                return False
            extra = trio.from_thread.run_sync(self._whole_started, asked, trio_token=token)
            if extra is None:
                return False
            started.append(extra)
            receiver.extra = extra.takes
            if partial is not None and not self._disk_failed:
                try:
                    partial.reserve(0, self.size)
                except (CacheFull, CacheError) as e:
                    trio.from_thread.run_sync(self._disk_failure, e, trio_token=token)
            return True

        arriving = _Arriving()

        def on_bytes(n: int) -> None:
            arriving.n += n  # worker thread

        # Fixed chunks arrive as one piece each; a registry's ranges in bounded pieces.
        piece_bytes = layout.chunk_bytes if layout.fixed else min(layout.largest_bytes, PIECE_BYTES)
        self._arriving.append(arriving)
        try:
            await self.ctx.request(
                self.registry,
                RangeRequest(
                    self.name,
                    self.digest,
                    start,
                    end,
                    piece_bytes,
                    receiver.on_piece,
                    on_whole,
                    on_bytes,
                ),
            )
        finally:
            self._arriving.remove(arriving)  # this request's counter: compared by identity
            self._arrived_bytes += arriving.n
            for stream in started:
                self._whole_ended(stream)

    # -- a whole-blob body for a range request (wholestream) ---------------------------------

    def _whole_started(self, asked: range) -> WholeStream | None:
        """Trio side of a whole-blob answer: claim every chunk nobody has or is fetching, so
        that readers wait for this body instead of asking that mirror for more ranges."""
        if (
            self._stream is not None
            or self.published
            or self.failure is not None
            or self.partial is None
            or self._disk_failed
        ):
            return None  # only the asked range is taken from this body
        claimed: dict[int, Flight] = {}
        partial = self.partial
        for i in range(self.count):
            if i in asked or i in self.flights or self.has(i) or i in self._private:
                continue
            if not partial.claim_unmarked(i):
                continue  # another process fetches it, or has it: taken when read (``_adopt``)
            claimed[i] = self.flights.claim(i)
        self._stream = WholeStream(claimed)
        if self._first_answer is not None:
            self._first_answer.finish()
        log.info(
            "%s: %s answered a range request with the whole blob (a mirror filling its cache?); "
            "taking it as the fill, %d chunks from it, no other range requests meanwhile",
            self.what,
            self.name.host,
            len(claimed),
        )
        return self._stream

    def _whole_ended(self, stream: WholeStream) -> None:
        if self._stream is stream:
            self._stream = None
        missing = stream.end()
        if missing and not self.closing and self.failure is None and not self.published:
            log.info(
                "%s: the whole-blob body ended without %d chunks; fetching them as ranges",
                self.what,
                len(missing),
            )
            self._start_runs(missing)

    # -- landing chunks ----------------------------------------------------------------------

    def _land(
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
        store = self.ctx.store
        if store is None or view is None:
            token.run_sync_soon(self._landed_guarded, i, data)
            return
        for inode in trio.from_thread.run_sync(self._landed, i, data, trio_token=token):
            store(inode, offset, view)

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
            self.progress.changed(self._group)
        else:
            if self.partial is not None:
                self.partial.release(i)
            self.memory[i] = data
            self.memory.move_to_end(i)
            while len(self.memory) > self.ctx.settings.memory_chunks:
                self.memory.popitem(last=False)
        self.flights.finish_chunk(i)
        if self._first_answer is not None:
            self._first_answer.finish()
        if self._stream is not None:
            self._stream.landed()
        if data is None:
            self._advance_whole()
        if self.partial is not None and self.partial.complete:
            self._start_finalize()
        # Only bytes a reader may already see: never a blob served only once whole.
        if self.verify is Verify.WHOLE or self.ctx.push_targets is None:
            return []
        return self.ctx.push_targets(self)

    def _chunk_mismatch(self, i: int) -> None:
        """Chunk ``i`` did not match its digest: fetch it once more; twice, and the source of
        the digests is not trusted for this blob any more (docs/verification.md)."""
        start, end = self.layout.span(i)
        self.ctx.stats.chunk_mismatches += 1
        source = self.index.source if self.index is not None else "index"
        if i not in self._mismatched:
            self._mismatched.add(i)
            # Fetched again from the origin if a mirror sent them (it is set aside a while).
            self.registry.distrust_mirrors(self.name, f"chunk {i} of blob {self.digest.short}")
            log.warning(
                "blob %s: chunk %d (bytes %d-%d) from %s does not match the chunk index (%s); "
                "fetching it once more",
                self.digest,
                i,
                start,
                end - 1,
                self.name.host,
                source,
            )
            return  # its run fetches it again, under the same flight
        error = DigestMismatch(f"blob {self.digest} chunk {i} does not match the chunk index")
        if self.partial is not None:
            self.partial.release(i)
        if self.index is not None:
            log.warning(
                "blob %s: chunk %d from %s failed its check twice; not trusting the %s for this "
                "blob: it is verified whole",
                self.digest,
                i,
                self.name.host,
                source,
            )
            self.ctx.distrusted.add(self.index)
            self.index = None
            self.verify = Verify.WHOLE
        self.flights.finish_chunk(i, error)

    def _disk_failure(self, e: ModelfsError) -> None:
        self.ctx.stats.cache_write_failures += 1
        if not self._disk_failed:
            if self.ctx.settings.serves_readers:
                log.warning(
                    "%s: cannot write the cache (%s); serving from the network", self.what, e
                )
            self._disk_error = e
        self._disk_failed = True
        self.progress.failed = True

    # -- the whole blob -------------------------------------------------------------------------

    def _hashable(self, i: int) -> bool:
        partial = self.partial
        return partial is not None and partial.has(i) and not partial.recheck_pending(i)

    def _advance_whole(self) -> None:
        if self._tasks is not None:
            self.whole.advance(self._tasks, self.partial)

    def _start_finalize(self) -> None:
        if self._finalizing is None and not self.published:
            self._finalizing = Flight()
            self._group.spawn(f"finalize {self.what}", self._finalize)

    async def _finalize(self) -> None:
        """Check the complete blob's sha256; publish it into ``blobs/``, or discard it."""
        flight = self._finalizing
        assert flight is not None and self.partial is not None
        partial = self.partial
        error: ModelfsError | None = None
        try:
            # Chunks left by an earlier run, not re-checked yet, must not reach the hash
            # unchecked (they may have been written for another manifest's index).
            await self._recheck(0, self.count)
            if not partial.complete or self.flights:
                # A chunk another reader is re-checking must not reach the hash before its
                # verdict: a refetch's landing, or that verdict, starts the next finalize.
                return
            elsewhere = partial.shared is not None and await self.ctx.in_thread(
                self.ctx.cache.has_blob, self.digest, self.size
            )
            # Published by another process sharing the partial: it checked the whole sha256.
            got = self.digest if elsewhere else await self.whole.digest(partial)
            if got != self.digest:
                self.ctx.stats.blob_mismatches += 1
                log.warning(
                    "blob %s from %s: whole-blob sha256 is %s; discarding the fetched data",
                    self.digest,
                    self.name.host,
                    got,
                )
                self.registry.distrust_mirrors(self.name, f"blob {self.digest.short}")
                self.whole.reset()
                await self.ctx.in_thread(partial.discard)
                self.memory.clear()
                error = DigestMismatch(f"blob {self.digest} does not match its digest")
                self.failure = error
                if self.ctx.on_discarded is not None:
                    # Pages already served (verify=deferred) must leave the kernel's cache.
                    self.ctx.on_discarded(self.digest)
            else:
                await self.progress.publish()
                self.published = True
                if not elsewhere:
                    self.ctx.stats.published += 1
                    log.info("blob %s: complete and verified, published", self.digest.short)
                    await self._keep_local_index()
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
            await self.ctx.published(self.digest)

    async def _keep_local_index(self) -> None:
        """Keep the chunk index of the blob just verified whole (a few KB in ``.modelfs/``):
        read again after an eviction, it is lazy and verified."""
        local = self.whole.local_index(self.digest)
        raw = serialize_chunk_index(local.chunk_bytes, [local])
        try:
            await self.ctx.in_thread(self.ctx.cache.save_local_index, self.digest, raw)
        except ModelfsError as e:
            log.info("%s: its chunk index is not kept: %s", self.what, e)

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
            if self._disk_failed:
                # Nothing can be checked whole without storing it: a full disk ends it here
                # (docs/reliability.md), instead of a retry loop.
                raise copy.copy(self._disk_error) if self._disk_error else CacheFull(self.what)
            # Not published, so open with a partial file (``_open``).
            assert self.partial is not None
            if self._private and not self.flights:
                # Chunks only in memory cannot be checked whole: finish in a private file.
                await self._go_private()
            await self._recheck(0, self.count)
            waits, new = self._claim(0, self.count)
            self._start_runs(new)
            for flight in waits:
                await self._wait(flight, wait_seconds)
            if self.partial.complete and self._finalizing is None and not self.published:
                self._start_finalize()
            finalizing = self._finalizing
            if finalizing is not None:
                limit = None
                if wait_seconds is not None:
                    limit = wait_seconds + self.size / VERIFY_BYTES_PER_SECOND
                await finalizing.wait(limit, f"{self.what}: checking the whole blob")

    async def _go_private(self) -> None:
        """Some chunks are only in memory (the shared partial's copy of them is another
        process's, held or failing this fetch's check): go on in a scratch file with a copy
        of the chunks on disk, and fetch those into it, so that the blob can be checked whole.
        Only while no fetch of this blob runs (no flights)."""
        partial = self.partial
        assert partial is not None
        await self.ctx.in_thread(partial.go_private)
        for i in self._private:
            self.memory.pop(i, None)
        log.info(
            "%s: %d chunks are another modelfs process's; finishing it in a private file",
            self.what,
            len(self._private),
        )
        self._private.clear()

    # -- reading ------------------------------------------------------------------------------

    async def read(self, offset: int, size: int, touched: range | None = None) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)`` (chunks ``touched``), fetched and checked if need be.

        A chunk held only in memory (the cache could not be written) may be dropped
        between ``ensure`` and reading it by other readers' chunks: ensure again.
        """
        if touched is None:
            touched = self.layout.covering(offset, size)
        for _ in range(EVICTED_RETRIES):
            await self.ensure(touched.start, touched.stop)
            try:
                return await self._read_present(offset, size)
            except _Evicted:
                continue
        raise ModelfsError(f"{self.what}: chunks keep being evicted before use")

    async def _read_present(self, offset: int, size: int) -> bytes | bytearray:
        """Bytes ``[offset, offset+size)``; the chunks must have been ensured (or published)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        partial = self.partial
        if partial is None and self.published:
            # Published before this fetch opened (by another process, or a pull, after the
            # reader looked in blobs/): no partial to read, the blob file itself.
            return await self.ctx.in_thread(self._read_published, offset, end - offset)  # type: ignore[return-value]
        touched = self.layout.covering(offset, end - offset)
        if partial is not None and (self.published or all(partial.has(i) for i in touched)):
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
            elif self.partial is not None and self.partial.has(i):
                out += await self.ctx.in_thread(self.partial.read, a, b - a)  # type: ignore[operator]
            else:
                raise _Evicted(i)
        return bytes(out)

    def _read_published(self, offset: int, size: int) -> bytes:
        """Worker thread: bytes of the published blob file (removed since: evicted)."""
        fd = self.ctx.cache.open_blob(self.digest)
        if fd is None:
            raise _Evicted(self.layout.covering(offset, max(size, 1)).start)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)


class _Evicted(ModelfsError):
    """A chunk held in memory was evicted between ensure and read; the reader ensures again."""

    def __init__(self, i: int) -> None:
        super().__init__(f"chunk {i} was evicted before it was read")
