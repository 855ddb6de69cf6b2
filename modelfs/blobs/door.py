"""Building the blob layer: the one place its pieces are put together.

The daemon, ``pull``, ``show``, ``index`` and the benchmarks each get the door (``reader.Blobs``)
from ``blob_layer``: the cache, the registry (and the one without the owner's
credentials, for other users of an allow_other mount), the nursery its fetches live in,
the settings, and the events its owner wants to hear, all given here, at construction.
Nothing is wired onto the layer afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.fetchcontext import BlobSource, FetchSettings
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.reader import Blobs, BlobsSettings
from modelfs.formats.digest import Digest


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


def blob_layer(
    cache: BlobCache,
    registry: BlobSource,
    nursery: trio.Nursery,
    settings: FetchSettings | None = None,
    *,
    deferred: bool = False,
    events: BlobEvents | None = None,
    anonymous_registry: BlobSource | None = None,
) -> Blobs:
    """The blob door over ``cache`` and ``registry``; its fetches live in ``nursery``.

    ``deferred``: -o verify=deferred (a blob without chunk digests is served as it lands,
    checked when complete). ``anonymous_registry``: where the requests made for other
    users of an allow_other mount go (None: those of ``registry``). The owner calls
    ``stop_waiting`` and ``save_all`` on the door before the nursery ends.
    """
    events = events or BlobEvents()
    fetcher = Fetcher(
        cache,
        registry,
        nursery,
        settings or FetchSettings(),
        events.published,
        events.discarded,
        anonymous_registry=anonymous_registry,
    )
    if events.pages is not None:
        fetcher.push_targets = events.pages.targets
        fetcher.store = events.pages.store
    fetcher.stats.on_range_seconds = events.range_seconds
    return Blobs(fetcher, BlobsSettings(deferred=deferred))
