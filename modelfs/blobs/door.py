"""Building the blob layer: the one place its pieces are put together.

The daemon, ``pull``, ``show``, ``index`` and the benchmarks each get the door (``reader.Blobs``)
from ``blob_layer``: the cache, the registry (and the one without the owner's
credentials, for other users of an allow_other mount), the nursery its fetches live in,
the settings, and the events its owner wants to hear, all given here, at construction.
Nothing is wired onto the layer afterwards.
"""

from __future__ import annotations

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.fetchcontext import BlobEvents, BlobSource, FetchSettings, PagePush
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.reader import Blobs, BlobsSettings

__all__ = ["BlobEvents", "PagePush", "blob_layer"]


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
    fetcher = Fetcher(
        cache,
        registry,
        nursery,
        settings or FetchSettings(),
        events or BlobEvents(),
        anonymous_registry=anonymous_registry,
    )
    return Blobs(fetcher, BlobsSettings(deferred=deferred))
