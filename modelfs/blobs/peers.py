"""Other modelfs processes of the cache sharing a blob's partial file: theirs, mine, adopt, take over.

A partial file is shared chunk by chunk between the processes of one cache
(``sharing``: a claim per chunk, a mark once it is written). ``Peers`` is the
fetch's side of that: which of the chunks it needs another process is bringing
(``split``), taking what others marked (``adopt``: re-checked by this fetch's own
index before first use), waiting for their claims within ``claim_wait_seconds``
and taking over from one that stalled or died (``wait_for``), and the chunks whose
copy on disk is another process's and must not be written over (``private``).
``NoPeers`` is the same for a partial nobody else uses (a scratch file, or a
cache that cannot be shared): everything is this fetch's.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import trio

from modelfs.errors import ModelfsError, ShuttingDown, Transient
from modelfs.flight import Flight, poll

if TYPE_CHECKING:
    from modelfs.blobs.blobfetch import BlobFetch

log = logging.getLogger(__name__)

# How often what another process holds (its chunk claims, the lock file) is looked at again
# (doubling from the first to the last).
ELSEWHERE_POLL_SECONDS = (0.005, 0.05)


class NoPeers:
    """A partial file only this fetch uses."""

    def __init__(self, blob: BlobFetch) -> None:
        self.blob = blob
        # Chunks whose copy on disk is another process's (never written over): none here.
        self.private: set[int] = set()

    def split(self, new: list[int]) -> list[int]:
        """The chunks of ``new`` this fetch brings itself: all."""
        return new

    def adopt(self, lo: int, hi: int) -> None:
        """Nothing to take from anyone."""


class Peers(NoPeers):
    """A partial file shared with other modelfs processes of the cache."""

    def __init__(self, blob: BlobFetch) -> None:
        super().__init__(blob)
        self.ctx = blob.ctx
        self.what = blob.what
        self.layout = blob.layout
        # ``private``: chunks another process marked in the shared partial that failed this
        # fetch's check while that process used the file (``Trust.distrust``): fetched into
        # memory, never written over.
        # When a chunk was last taken from another process, and last waited for: another
        # process that made no progress for ``claim_wait_seconds`` is stalled (stopped?) and
        # its chunks are fetched here, privately (``wait_for``).
        self._took_at = 0.0
        self._waited_at = -float("inf")

    def split(self, new: list[int]) -> list[int]:
        """The chunks of ``new`` (their flights claimed) this fetch brings itself; those another
        process is fetching into the shared partial are waited for (``wait_for``)."""
        partial = self.blob.partial
        if partial is None or partial.shared is None:
            return new
        mine: list[int] = []
        theirs: list[int] = []
        for i in new:
            if i in self.private or partial.claim_unmarked(i):
                mine.append(i)
            else:
                theirs.append(i)
        if theirs:
            self.blob.tasks.spawn(
                f"wait for {self.what} chunks {theirs[0]}-{theirs[-1]} from another process",
                self.wait_for,
                theirs,
            )
        return mine

    def adopt(self, lo: int, hi: int) -> None:
        """Take the chunks of ``[lo, hi)`` another process marked (an indexed blob re-checks
        them before their first use: ``Trust.recheck``)."""
        partial = self.blob.partial
        if partial is None or partial.shared is None:
            return
        got = partial.adopt(lo, hi, skip=lambda i: i in self.blob.flights or i in self.private)
        for i in got:
            start, end = self.layout.span(i)
            self.ctx.stats.bytes_from_processes += end - start
        if got:
            self._took_at = trio.current_time()
            self.blob.state.changed(self.blob.tasks)
            if not partial.indexed:
                self.blob.advance_whole()
                if partial.complete and not self.blob.flights:
                    self.blob.publishing.start()

    async def wait_for(self, chunks: list[int]) -> None:
        """Wait for chunks another process is fetching into the shared partial; take them
        when it marks them, fetch them here if it lets go without (it failed or died), and
        fetch them here privately (into memory, never into the file) if it holds them without
        progress (``_stalled``) or for twice ``claim_wait_seconds`` in all."""
        partial = self.blob.partial
        assert partial is not None
        pending = self.blob.flights.of(chunks)

        def over() -> bool:
            return (
                self.blob.closing
                or self.blob.failure is not None
                or self.blob.published
                or self.ctx.stopping
            )

        async def look() -> bool | None:
            if over():
                return True
            mine: list[int] = []
            for i in list(pending):
                if partial.marked_elsewhere(i):
                    flight = pending[i]
                    if await self._take(i, flight):
                        del pending[i]
                        continue
                    del pending[i]
                    if i in self.private or partial.claim(i):
                        mine.append(i)
                    else:
                        pending[i] = flight  # another process refetches it meanwhile
                elif partial.claim_unmarked(i):  # marked just now: taken on the next look
                    del pending[i]
                    mine.append(i)
            if mine:
                self.blob.requests.start(mine)
            if not pending or self._stalled():
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
                self.private.update(pending)
                taken = list(pending)
                pending.clear()
                self.blob.requests.start(taken)  # their flights stay: these runs finish them
        finally:
            # Published (readers read it whole), failed, closing, or checking a chunk failed.
            error = copy.copy(self.blob.failure) if self.blob.failure is not None else None
            for i, flight in pending.items():
                self.blob.flights.finish(
                    i,
                    flight,
                    None if self.blob.published else error or self._stopped_waiting(i),
                )

    def _stopped_waiting(self, i: int) -> ModelfsError:
        if self.ctx.stopping:
            return ShuttingDown(f"{self.what}: chunk {i}: modelfs is shutting down")
        return Transient(f"{self.what}: stopped waiting for chunk {i} from another process")

    def _stalled(self) -> bool:
        """Whether no chunk was taken from another process for ``claim_wait_seconds`` of
        waiting for one (its holder is stopped, or slower than the read bound allows)."""
        now = trio.current_time()
        wait = self.ctx.settings.claim_wait_seconds
        if now - self._waited_at > wait:
            self._took_at = now  # nobody waited meanwhile: this wait starts the clock
        self._waited_at = now
        return now - self._took_at >= wait

    async def _take(self, i: int, flight: Flight) -> bool:
        """Chunk ``i``, marked by another process, becomes present here once it passes this
        fetch's own check. False: it must be fetched here (the flight stays)."""
        partial = self.blob.partial
        assert partial is not None
        if self.blob.index is not None:
            good = await self.ctx.in_thread(partial.verify_chunk, i, self.blob.index)
            if not good:
                self.blob.trust.distrust(i)
                return False
        partial.mark(i)
        partial.rechecked(i)
        self._took_at = trio.current_time()
        start, end = self.layout.span(i)
        self.ctx.stats.bytes_from_processes += end - start
        self.blob.flights.finish(i, flight)
        self.blob.state.changed(self.blob.tasks)
        self.blob.advance_whole()
        if partial.complete and not self.blob.flights:
            self.blob.publishing.start()
        return True

    async def go_private(self) -> None:
        """Some chunks are only in memory (the shared partial's copy of them is another
        process's, held or failing this fetch's check): go on in a scratch file with a copy
        of the chunks on disk, and fetch those into it, so that the blob can be checked whole.
        Only while no fetch of this blob runs (no flights)."""
        partial = self.blob.partial
        assert partial is not None
        await self.ctx.in_thread(partial.go_private)
        for i in self.private:
            self.blob.present.memory.pop(i, None)
        log.info(
            "%s: %d chunks are another modelfs process's; finishing it in a private file",
            self.what,
            len(self.private),
        )
        self.private.clear()
