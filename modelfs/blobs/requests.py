"""Range requests of one blob: chunks fetched in runs, retried, landed by the receiver.

``RangeRequests`` turns chunks whose flights are claimed into a few large range
requests (``max_run_chunks``/``max_run_bytes`` each), retries what a failed try
did not deliver, and fails the flights of what cannot be had. It sends no second
request before the first has an answer: a pull-through mirror that answers a
range with the whole blob (docs/reliability.md) would copy the blob from its
origin for each. Such a body is taken as the blob's fill (``WholeStream``): the
chunks nobody has are claimed by it, and readers wait for it while it moves.
Received bytes go to a ``RangeReceiver`` (receive.py), which checks each chunk and
hands it to the blob's landing (``BlobFetch._land``).
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from modelfs.blobs.fetchcontext import RangeRequest
from modelfs.blobs.receive import RangeReceiver
from modelfs.blobs.wholestream import WholeStream
from modelfs.errors import CacheError, CacheFull, ModelfsError, ShuttingDown, Transient
from modelfs.flight import Flight
from modelfs.registry.retry import retrying

if TYPE_CHECKING:
    from modelfs.blobs.blobfetch import BlobFetch

log = logging.getLogger(__name__)

# Range bodies of a registry's large chunks are delivered in pieces of at most this.
PIECE_BYTES = 4 << 20


class _Arriving:
    """Body bytes one range request has received so far. Equal only to itself: two requests
    under way with the same count are still two counters."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class RangeRequests:
    """The range requests of one blob (see the module docstring)."""

    def __init__(self, blob: BlobFetch) -> None:
        self.blob = blob
        self.ctx = blob.ctx
        self.what = blob.what
        self.layout = blob.layout
        self._stream: WholeStream | None = None  # a whole-blob body being taken as the fill
        # Set once the first range request of this blob has an answer: until then no other
        # is sent (a mirror that answers with the whole blob would copy it once per request).
        self._first_answer: Flight | None = None
        # Body bytes received: of requests that ended, and one counter per request under
        # way (each written only by its worker thread, so no update is lost).
        self._arrived_bytes = 0
        self._arriving: list[_Arriving] = []

    @property
    def arrived_bytes(self) -> int:
        """Body bytes received for this blob so far, those of chunks not yet whole and checked
        included: what a progress display shows moving between chunks."""
        return self._arrived_bytes + sum(counter.n for counter in self._arriving)

    def landed(self) -> None:
        """A chunk landed (trio thread): the first request has its answer, and readers
        waiting on a whole-blob body look again."""
        if self._first_answer is not None:
            self._first_answer.finish()
        if self._stream is not None:
            self._stream.landed()

    async def wait(self, flight: Flight, seconds: float | None) -> None:
        """Wait for a chunk's flight; one a whole-blob body brings, while that body moves."""
        stream = self._stream
        if stream is not None and stream.owns(flight):
            await stream.wait(flight, seconds, self.what)
        else:
            await flight.wait(seconds, self.what)

    def start(self, new: list[int]) -> None:
        """Fetch chunks ``new`` (their flights are claimed) in runs of a few large requests."""
        settings = self.ctx.settings
        for rlo, rhi in self.layout.runs(new, settings.max_run_chunks, settings.max_run_bytes):
            self.blob.tasks.spawn(
                f"fetch {self.what} chunks {rlo}-{rhi - 1}", self._fetch_run, rlo, rhi
            )

    async def _fetch_run(self, lo: int, hi: int) -> None:
        mine = self.blob.flights.of(range(lo, hi))

        async def once() -> None:
            # A retry asks only for what the failed try did not deliver.
            pending = [i for i, f in mine.items() if not f.done]
            if pending:
                start = self.layout.span(pending[0])[0]
                end = self.layout.span(pending[-1])[1]
                await self._fetch_range(start, end)

        try:
            await retrying(self.what, once, self.ctx.settings.attempts)
            if any(not f.done and i in self.blob.trust.mismatched for i, f in mine.items()):
                # A chunk that failed its check is fetched once more (a second failure
                # ends its flight: ``Trust.mismatch``).
                await retrying(self.what, once, self.ctx.settings.attempts)
            for i, flight in mine.items():
                if not flight.done:
                    # The range was delivered but this chunk was not: cannot happen
                    # unless the registry cut the body short without an error.
                    raise Transient(f"{self.what}: chunk {i} missing from a complete body")
        except ModelfsError as e:
            waited = any(f.has_waiters for f in mine.values())
            # A failed readahead nobody waits for is not a problem yet; a reader's is,
            # unless modelfs is shutting down under it.
            log.log(
                logging.WARNING if waited and not isinstance(e, ShuttingDown) else logging.INFO,
                "%s: chunks %d-%d failed: %s",
                self.what,
                lo,
                hi - 1,
                e,
            )
            self._fail(mine, e)
        except trio.Cancelled:
            # The fetch context's nursery ends only when modelfs does (unmount, a signal, a
            # pull's Ctrl-C): its readers are told so, not of an internal error.
            self._fail(mine, ShuttingDown(f"{self.what}: fetch ended: modelfs is shutting down"))
            raise
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):
                log.exception(
                    "%s: fetch of chunks %d-%d failed unexpectedly", self.what, lo, hi - 1
                )
            self._fail(mine, ModelfsError(f"{self.what}: internal error while fetching"))
            if isinstance(e, KeyboardInterrupt):
                raise

    def _fail(self, mine: dict[int, Flight], error: ModelfsError) -> None:
        for i, flight in mine.items():
            if not flight.done:
                if self.blob.partial is not None:
                    self.blob.partial.release(i)
                self.blob.flights.finish(i, flight, error)

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
                await stream.bring(asked, self.blob.has)
                missing = [i for i in asked if not self.blob.has(i)]
                if not missing:
                    return
                start, end = self.layout.span(missing[0])[0], self.layout.span(missing[-1])[1]
            await self._request_range(start, end)
        finally:
            if first:
                gate.finish()

    async def _request_range(self, start: int, end: int) -> None:
        partial = self.blob.partial
        if partial is not None and not self.blob.disk_failed:
            try:
                await self.ctx.in_thread(partial.reserve, start, end)
            except (CacheFull, CacheError) as e:
                self.blob.disk_failure(e)
        token = trio.lowlevel.current_trio_token()
        layout = self.layout
        asked = layout.covering(start, end - start)
        receiver = RangeReceiver(
            layout,
            self.blob.index,
            partial,
            writable=lambda i: not self.blob.disk_failed and i not in self.blob.peers.private,
            landed=functools.partial(self.blob.land, token),
            mismatch=lambda i: trio.from_thread.run_sync(
                self.blob.trust.mismatch, i, trio_token=token
            ),
            disk_failed=lambda e: trio.from_thread.run_sync(
                self.blob.disk_failure, e, trio_token=token
            ),
            asked=asked,
        )
        started: list[WholeStream] = []

        def on_whole(length: int | None) -> bool:
            # Worker thread: the answer is the whole blob. Take it if it is this blob's size.
            if length is not None and length != self.blob.size:
                return False
            extra = trio.from_thread.run_sync(self._whole_started, asked, trio_token=token)
            if extra is None:
                return False
            started.append(extra)
            receiver.extra = extra.takes
            if partial is not None and not self.blob.disk_failed:
                try:
                    partial.reserve(0, self.blob.size)
                except (CacheFull, CacheError) as e:
                    trio.from_thread.run_sync(self.blob.disk_failure, e, trio_token=token)
            return True

        arriving = _Arriving()

        def on_bytes(n: int) -> None:
            arriving.n += n  # worker thread

        # Fixed chunks arrive as one piece each; a registry's ranges in bounded pieces.
        piece_bytes = layout.chunk_bytes if layout.fixed else min(layout.largest_bytes, PIECE_BYTES)
        self._arriving.append(arriving)
        try:
            await self.ctx.request(
                self.blob.registry,
                RangeRequest(
                    self.blob.name,
                    self.blob.digest,
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

    def _whole_started(self, asked: range) -> WholeStream | None:
        """Trio side of a whole-blob answer: claim every chunk nobody has or is fetching, so
        that readers wait for this body instead of asking that mirror for more ranges."""
        if (
            self._stream is not None
            or self.blob.published
            or self.blob.failure is not None
            or self.blob.partial is None
            or self.blob.disk_failed
        ):
            return None  # only the asked range is taken from this body
        claimed: dict[int, Flight] = {}
        partial = self.blob.partial
        for i in range(self.blob.count):
            if (
                i in asked
                or i in self.blob.flights
                or self.blob.has(i)
                or i in self.blob.peers.private
            ):
                continue
            if not partial.claim_unmarked(i):
                continue  # another process fetches it, or has it: taken when read (``Peers.adopt``)
            claimed[i] = self.blob.flights.claim(i)
        self._stream = WholeStream(claimed)
        if self._first_answer is not None:
            self._first_answer.finish()
        log.info(
            "%s: %s answered a range request with the whole blob (a mirror filling its cache?); "
            "taking it as the fill, %d chunks from it, no other range requests meanwhile",
            self.what,
            self.blob.name.host,
            len(claimed),
        )
        return self._stream

    def _whole_ended(self, stream: WholeStream) -> None:
        if self._stream is stream:
            self._stream = None
        missing = stream.end()
        if (
            missing
            and not self.blob.closing
            and self.blob.failure is None
            and not self.blob.published
        ):
            log.info(
                "%s: the whole-blob body ended without %d chunks; fetching them as ranges",
                self.what,
                len(missing),
            )
            self.blob.start_runs(missing)
