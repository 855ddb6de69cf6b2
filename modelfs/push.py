"""``modelfs push``: upload a cached model's blobs the registry lacks, then its manifest."""

from __future__ import annotations

import logging

import trio

from modelfs.blobcache import BlobCache
from modelfs.errors import CacheError, ModelNotFound
from modelfs.manifest import Manifest, parse_manifest
from modelfs.names import Name
from modelfs.progress import Progress
from modelfs.registry import Registry

log = logging.getLogger(__name__)


async def push(cache: BlobCache, registry: Registry, name: Name, progress: Progress) -> Manifest:
    raw = await trio.to_thread.run_sync(cache.read_manifest, name)
    if raw is None:
        raise ModelNotFound(f"model {name} is not in the cache at {cache.root}; create or pull it")
    manifest = parse_manifest(raw)
    for layer in manifest.blobs:
        key = layer.digest.short
        if not await trio.to_thread.run_sync(cache.has_blob, layer.digest, layer.size):
            raise CacheError(f"blob {layer.digest} of {name} is missing from the cache")
        if await registry.has_blob(name, layer.digest):
            progress.skip(key, layer.size, "already on the registry")
            continue
        progress.start(key, layer.size)
        await registry.upload_blob(
            name,
            layer.digest,
            cache.blob_path(layer.digest),
            layer.size,
            lambda n, key=key, size=layer.size: progress.update(key, n, size),
        )
        progress.done(key, layer.size, "uploaded")
    await registry.put_manifest(name, manifest.raw, manifest.media_type)
    progress.message(f"pushed {name} ({manifest.digest})")
    return manifest
