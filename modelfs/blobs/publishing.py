"""Publishing a blob: its whole sha256 checked, then published into ``blobs/`` or discarded.

A chunk is served once it matches its chunk index; the blob's own digest is
checked once, over every byte, before it goes into ``blobs/`` (``WholeCheck``
hashes ahead as chunks land). ``Publishing`` runs that check once every chunk is
present and trusted, publishes the partial file (rename, in ``StateSaver``) or
discards it and tells the daemon (pages already served must leave the kernel's
cache), and keeps the blob's local chunk index so that, read again after an
eviction, it is lazy and verified. Its ``finalizing`` flight is what a pull, a
reader of a blob served only whole, and shutdown wait on, each with its bound.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from modelfs.errors import DigestMismatch, ModelfsError
from modelfs.flight import Flight
from modelfs.formats.chunks import serialize_chunk_index

if TYPE_CHECKING:
    from modelfs.blobs.blobfetch import BlobFetch

log = logging.getLogger(__name__)


class Publishing:
    def __init__(self, blob: BlobFetch) -> None:
        self.blob = blob
        self.ctx = blob.ctx
        self.what = blob.what
        self.finalizing: Flight | None = None  # the check and publish under way, if any

    def start(self) -> None:
        """Check and publish the blob, once (in a task of the blob), unless under way or done."""
        if self.finalizing is None and not self.blob.published:
            self.finalizing = Flight()
            self.blob.tasks.spawn(f"finalize {self.what}", self._finalize)

    async def _finalize(self) -> None:
        """Check the complete blob's sha256; publish it into ``blobs/``, or discard it."""
        flight = self.finalizing
        assert flight is not None and self.blob.partial is not None
        partial = self.blob.partial
        error: ModelfsError | None = None
        try:
            # Chunks left by an earlier run, not re-checked yet, must not reach the hash
            # unchecked (they may have been written for another manifest's index).
            await self.blob.trust.recheck(0, self.blob.count)
            if not partial.complete or self.blob.flights:
                # A chunk another reader is re-checking must not reach the hash before its
                # verdict: a refetch's landing, or that verdict, starts the next finalize.
                return
            elsewhere = partial.shared is not None and await self.ctx.in_thread(
                self.ctx.cache.has_blob, self.blob.digest, self.blob.size
            )
            # Published by another process sharing the partial: it checked the whole sha256.
            got = self.blob.digest if elsewhere else await self.blob.whole.digest(partial)
            if got != self.blob.digest:
                self.ctx.stats.blob_mismatches += 1
                log.warning(
                    "blob %s from %s: whole-blob sha256 is %s; discarding the fetched data",
                    self.blob.digest,
                    self.blob.name.host,
                    got,
                )
                self.blob.registry.distrust_mirrors(
                    self.blob.name, f"blob {self.blob.digest.short}"
                )
                self.blob.whole.reset()
                await self.ctx.in_thread(partial.discard)
                self.blob.present.memory.clear()
                error = DigestMismatch(f"blob {self.blob.digest} does not match its digest")
                self.blob.failure = error
                if self.ctx.events.discarded is not None:
                    # Pages already served (verify=deferred) must leave the kernel's cache.
                    self.ctx.events.discarded(self.blob.digest)
            else:
                await self.blob.state.publish()
                self.blob.published = True
                if not elsewhere:
                    self.ctx.stats.published += 1
                    log.info("blob %s: complete and verified, published", self.blob.digest.short)
                    await self._keep_local_index()
        except ModelfsError as e:
            log.warning("%s: could not publish: %s", self.what, e)
            error = e
        except Exception:
            log.exception("%s: publishing failed unexpectedly", self.what)
            error = ModelfsError(f"{self.what}: internal error while publishing")
        finally:
            self.finalizing = None
            flight.finish(error)
        if self.blob.published:
            await self.ctx.published(self.blob.digest)

    async def _keep_local_index(self) -> None:
        """Keep the chunk index of the blob just verified whole (a few KB in ``.modelfs/``):
        read again after an eviction, it is lazy and verified."""
        local = self.blob.whole.local_index(self.blob.digest)
        raw = serialize_chunk_index(local.chunk_bytes, [local])
        try:
            await self.ctx.in_thread(self.ctx.cache.save_local_index, self.blob.digest, raw)
        except ModelfsError as e:
            log.info("%s: its chunk index is not kept: %s", self.what, e)
