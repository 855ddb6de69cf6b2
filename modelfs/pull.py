"""``modelfs pull``: the whole model into the cache, every blob verified, the manifest last.

Uses the mount's fetch machinery, so a blob half-read through a mount is
finished rather than fetched again, and an interrupted pull resumes.
"""

from __future__ import annotations

import logging

import trio

from modelfs.blobcache import BlobCache
from modelfs.fetcher import Fetcher, FetchSettings
from modelfs.manifest import Layer, Manifest, parse_manifest
from modelfs.names import Name
from modelfs.progress import Progress
from modelfs.reader import Reader
from modelfs.registry import Registry

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.2


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
    await trio.to_thread.run_sync(
        lambda: (
            cache.write_manifest(name, raw, pending=True)
            if cache.read_manifest(name) != raw
            else None
        )
    )
    async with trio.open_nursery() as nursery:
        fetcher = Fetcher(
            cache,
            registry,
            nursery,
            settings or FetchSettings(early_writeback=True, serves_readers=False),
        )
        reader = Reader(fetcher)
        index = await reader.chunk_index(name, manifest)
        async with trio.open_nursery() as blobs:
            for layer in manifest.blobs:
                chunks = index.blobs.get(layer.digest) if index else None
                blobs.start_soon(_pull_blob, fetcher, reader, name, layer, chunks, progress)
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(cache.write_manifest, name, raw)
    # Pulled on purpose: pinned, never evicted to keep the cache within its bounds.
    await trio.to_thread.run_sync(cache.unmark_lazy, name)
    progress.message(f"pulled {name} ({manifest.digest})")
    return manifest


async def _pull_blob(fetcher, reader, name: Name, layer: Layer, chunks, progress: Progress) -> None:
    key = layer.digest.short
    if await trio.to_thread.run_sync(fetcher.cache.has_blob, layer.digest, layer.size):
        progress.skip(key, layer.size, "already in the cache")
        return
    progress.start(key, layer.size)
    if layer.size <= fetcher.settings.chunk_bytes:
        await fetcher.fetch_small(name, layer, wait=False)
    else:
        bf = await fetcher.acquire(name, layer, chunks, reader.policy(chunks))
        try:
            async with trio.open_nursery() as watch:
                watch.start_soon(_report, bf, key, progress)
                await bf.complete()
                watch.cancel_scope.cancel()
        finally:
            bf.release()
    progress.done(key, layer.size)


async def _report(bf, key: str, progress: Progress) -> None:
    while True:
        progress.update(key, bf.present_bytes, bf.size)
        await trio.sleep(PROGRESS_SECONDS)
