"""What vouches for a blob's chunks, and what happens when a chunk does not match.

``Trust`` holds a blob's verification policy and its chunk index (what a chunk is
checked against before anyone reads it). A chunk left by an earlier run is
re-checked before its first use in this one (``recheck``), under a flight, so a
concurrent reader waits for the verdict. A chunk that does not match is fetched
once more (from the origin if a mirror sent it); a second failure means the index
is not trusted for this blob any more: it is remembered as distrusted for the
process, and the blob is served only once checked whole (docs/verification.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from modelfs.blobs.fetchcontext import Verify
from modelfs.errors import DigestMismatch, ModelfsError
from modelfs.formats.chunks import BlobChunks

if TYPE_CHECKING:
    from modelfs.blobs.blobfetch import BlobFetch

log = logging.getLogger(__name__)


class Trust:
    def __init__(self, blob: BlobFetch, index: BlobChunks | None, verify: Verify) -> None:
        self.blob = blob
        self.ctx = blob.ctx
        self.what = blob.what
        self.layout = blob.layout
        self.index = index
        self.verify = verify
        self.mismatched: set[int] = set()  # chunks that failed their check once

    async def recheck(self, lo: int, hi: int) -> None:
        """Re-verify chunks a previous run left, before their first use in this one.

        A chunk being re-checked has a flight, like one being fetched: a concurrent
        reader waits for the verdict instead of reading what is on disk. A chunk that
        fails is fetched again under the same flight.
        """
        partial = self.blob.partial
        index = self.index
        if partial is None or index is None:
            return
        for i in range(lo, hi):
            if not partial.recheck_pending(i) or i in self.blob.flights:
                continue
            flight = self.blob.flights.claim(i)
            try:
                good = await self.ctx.in_thread(partial.verify_chunk, i, index)
            except BaseException as e:
                error = e if isinstance(e, ModelfsError) else None
                self.blob.flights.finish(
                    i, flight, error or ModelfsError(f"{self.what}: re-checking chunk {i} failed")
                )
                raise
            partial.rechecked(i)
            if good:
                self.blob.flights.finish(i, flight)
                if partial.complete and not self.blob.flights:
                    # A whole-blob check that found this chunk still in question waits for it.
                    self.blob.publishing.start()
                continue
            self.distrust(i)
            self.blob.state.changed(self.blob.tasks)
            self.blob.start_runs([i])  # its fetch finishes the flight
        self.blob.advance_whole()

    def mismatch(self, i: int) -> None:
        """Chunk ``i`` did not match its digest: fetch it once more; twice, and the source of
        the digests is not trusted for this blob any more (docs/verification.md)."""
        start, end = self.layout.span(i)
        self.ctx.stats.chunk_mismatches += 1
        source = self.index.source if self.index is not None else "index"
        if i not in self.mismatched:
            self.mismatched.add(i)
            # Fetched again from the origin if a mirror sent them (it is set aside a while).
            self.blob.registry.distrust_mirrors(
                self.blob.name, f"chunk {i} of blob {self.blob.digest.short}"
            )
            log.warning(
                "blob %s: chunk %d (bytes %d-%d) from %s does not match the chunk index (%s); "
                "fetching it once more",
                self.blob.digest,
                i,
                start,
                end - 1,
                self.blob.name.host,
                source,
            )
            return  # its run fetches it again, under the same flight
        error = DigestMismatch(f"blob {self.blob.digest} chunk {i} does not match the chunk index")
        if self.blob.partial is not None:
            self.blob.partial.release(i)
        if self.index is not None:
            log.warning(
                "blob %s: chunk %d from %s failed its check twice; not trusting the %s for this "
                "blob: it is verified whole",
                self.blob.digest,
                i,
                self.blob.name.host,
                source,
            )
            self.ctx.distrusted.add(self.index)
            self.index = None
            self.verify = Verify.WHOLE  # served only once checked whole, from now on
        self.blob.flights.finish_chunk(i, error)

    def distrust(self, i: int) -> None:
        """Chunk ``i`` on disk fails this fetch's check: fetch it again into the file if no
        other process uses the file, else into memory (another may have checked those bytes
        by its own index and serve them: they are never written over, ``Peers.private``)."""
        partial = self.blob.partial
        assert partial is not None
        partial.unmark(i)
        if partial.may_rewrite(i):
            log.warning(
                "%s: chunk %d on disk does not match the chunk index; refetching", self.what, i
            )
            return
        self.blob.peers.private.add(i)
        log.warning(
            "%s: chunk %d another modelfs process wrote does not match this model's chunk "
            "index; fetching it again into memory, leaving that process's copy alone",
            self.what,
            i,
        )
