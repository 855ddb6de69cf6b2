"""``modelfs pull``: the whole model into the cache, every blob verified, the manifest last.

Uses the mount's fetch machinery, so a blob half-read through a mount is
finished rather than fetched again, and an interrupted pull resumes.
"""

from __future__ import annotations

import logging

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.door import blob_layer
from modelfs.blobs.fetchcontext import FetchSettings
from modelfs.blobs.reader import Blobs
from modelfs.commands.progress import Progress
from modelfs.errors import ManifestInvalid
from modelfs.formats.manifest import Layer, Manifest, parse_manifest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.2
# Interrupted: a blob being published (its whole digest checked) is waited for this long.
INTERRUPTED_PUBLISH_WAIT_SECONDS = 2.0


async def pull(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    progress: Progress,
    settings: FetchSettings | None = None,
) -> Manifest:
    await trio.to_thread.run_sync(cache.prepare)
    raw = await registry.get_manifest(name)
    manifest = parse_manifest(raw)
    if name.digest is not None and manifest.digest != name.digest:
        raise ManifestInvalid(
            f"invalid manifest: {name} resolved to {manifest.digest}, not the pinned digest"
        )
    await trio.to_thread.run_sync(
        lambda: (
            cache.write_manifest(name, raw, pending=True)
            if cache.read_manifest(name) != raw
            else None
        )
    )
    async with trio.open_nursery() as nursery:
        blobs = blob_layer(
            cache,
            registry,
            nursery,
            settings or FetchSettings(early_writeback=True, serves_readers=False),
        )
        try:
            async with trio.open_nursery() as each:
                for layer in manifest.blobs:
                    each.start_soon(_pull_blob, cache, blobs, name, manifest, layer, progress)
        except BaseException:
            # Ctrl-C or a failure: the worker threads reading bodies cannot be cancelled and
            # would read on to the end of their ranges; end their transfers so the pull stops
            # now, and save which chunks are checked, so the next pull resumes from them.
            registry.abort_transfers()
            with trio.CancelScope(shield=True):
                await blobs.save_all(INTERRUPTED_PUBLISH_WAIT_SECONDS)
            raise
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(cache.write_manifest, name, raw)
    # Pulled on purpose: pinned, never evicted to keep the cache within its bounds.
    await trio.to_thread.run_sync(cache.unmark_lazy, name)
    progress.result(f"pulled {name} ({manifest.digest})")
    return manifest


async def _pull_blob(
    cache: BlobCache, blobs: Blobs, name: Name, manifest: Manifest, layer: Layer, progress: Progress
) -> None:
    key = layer.digest.short
    if await trio.to_thread.run_sync(cache.has_blob, layer.digest, layer.size):
        progress.skip(key, layer.size, "already in the cache")
        return
    progress.start(key, layer.size)
    await blobs.fetch(
        name,
        manifest,
        layer,
        lambda present: progress.update(key, present, layer.size),
        PROGRESS_SECONDS,
    )
    progress.done(key, layer.size)
