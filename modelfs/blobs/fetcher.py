"""Every blob this process fetches: the blob table, the small blobs, and the context they share.

Large blobs are fetched chunk by chunk by a ``BlobFetch`` (blobs/blobfetch.py), one
per blob *and* what vouches for its bytes (``FetchKey``): the repository they are
fetched from, whose credentials fetch them, the verification policy and the chunk
index. Two manifests naming the same digest share bytes only once the whole
blob's sha256 has matched and it is in ``blobs/`` (docs/verification.md). The
``BlobTable`` owns each one's users and life (tasks of the nursery given at
construction, so a reader that goes away does not cancel a fetch other readers
share); readers only wait, each wait with a deadline. Small blobs (at most one
chunk) are ``SmallBlobs``'. Both are given the process's ``FetchContext``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.blobfetch import BlobFetch, FetchKey
from modelfs.blobs.fetchcontext import (
    BlobEvents,
    BlobSource,
    FetchContext,
    FetchSettings,
    RangeRequest,
    Stats,
    Verify,
)
from modelfs.blobs.small import SmallBlobs
from modelfs.blobs.table import BlobTable
from modelfs.errors import ModelfsError
from modelfs.formats.chunks import BlobChunks
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name

log = logging.getLogger(__name__)

# At shutdown, a blob whose every chunk has arrived gets this long to be checked and published.
PUBLISH_WAIT_SECONDS = 30.0


class Fetcher:
    """Every fetch of this process: the blob table and small blobs, over one shared context."""

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
        """``events``: what the owner hears (``BlobEvents``), given now and only now."""
        self.ctx = FetchContext(
            cache, registry, nursery, settings, events, anonymous_registry=anonymous_registry
        )
        self.table: BlobTable[FetchKey, BlobFetch] = BlobTable(nursery)
        self.small = SmallBlobs(self.ctx)

    # -- the shared context, as the daemon and the layer's other modules use it ---------------

    @property
    def cache(self) -> BlobCache:
        return self.ctx.cache

    @property
    def settings(self) -> FetchSettings:
        return self.ctx.settings

    @property
    def stats(self) -> Stats:
        return self.ctx.stats

    @property
    def distrusted(self) -> set[BlobChunks]:
        return self.ctx.distrusted

    def registry_for(self, anonymous: bool) -> BlobSource:
        return self.ctx.registry_for(anonymous)

    async def in_thread(self, fn: Callable[..., object], *args: object) -> object:
        return await self.ctx.in_thread(fn, *args)

    def stop_waiting(self) -> None:
        self.ctx.stop_waiting()

    async def request(self, registry: BlobSource, req: RangeRequest) -> None:
        """One range request, under a stream slot (``FetchContext.request``)."""
        await self.ctx.request(registry, req)

    # -- fetching ------------------------------------------------------------------------------

    def is_small(self, layer: Layer) -> bool:
        """Whether a blob is fetched whole, in one request, checked against its digest
        (``fetch_small``); a larger one is fetched in chunks (``acquire``)."""
        return self.small.is_small(layer)

    async def fetch_small(
        self, name: Name, layer: Layer, *, anonymous: bool = False, wait: bool = True
    ) -> bytes:
        """A small blob's bytes, checked (``SmallBlobs.fetch``)."""
        return await self.small.fetch(name, layer, anonymous=anonymous, wait=wait)

    async def acquire(
        self,
        name: Name,
        layer: Layer,
        index: BlobChunks | None,
        verify: Verify,
        *,
        anonymous: bool = False,
    ) -> BlobFetch:
        """The fetch state of ``layer``'s blob as ``name`` vouches for it, open, with one more
        reader (``release`` it)."""
        key = FetchKey.of(name, layer, index, verify, anonymous)
        return await self.table.acquire(
            key, lambda life: BlobFetch(self.ctx, name, layer, key, life)
        )

    @property
    def blobs(self) -> dict[FetchKey, BlobFetch]:
        """The large blobs open now (a snapshot)."""
        return {bf.key: bf for bf, _life in self.table}

    def busy_digests(self) -> set[Digest]:
        """Blobs open for reading or with fetches in flight."""
        busy = {bf.digest for bf, life in self.table if life.users > 0 or bf.flights}
        return busy | self.small.busy_digests()

    async def save_all(self, publish_wait_seconds: float = PUBLISH_WAIT_SECONDS) -> None:
        """At shutdown: let publishes in progress finish, persist every blob's progress."""
        deadline = trio.current_time() + publish_wait_seconds
        for bf, _life in self.table:
            finalizing = bf.finalizing
            if finalizing is not None:
                await finalizing.settled(max(0.0, deadline - trio.current_time()))
        for bf, _life in self.table:
            try:
                await bf.state.save()
            except ModelfsError as e:
                log.warning("%s: could not save fetch progress: %s", bf.what, e)
