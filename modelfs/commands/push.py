"""``modelfs push``: upload a cached model's blobs the registry lacks, then its manifest.

With ``source`` (``push NAME --from OTHER``) the model is the cached OTHER (or NAME if
that is cached), and blobs are first offered as a cross-repository mount from OTHER's
repository, so the registry links what it already has instead of receiving it again.
A re-run after an interruption uploads only what the registry still lacks (a HEAD per
blob before anything is sent).

``delete_remote`` deletes a manifest on the registry (``unlink --remote``).
"""

from __future__ import annotations

import logging

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.progress import Progress, human_bytes
from modelfs.errors import CacheError, DigestInvalid, ModelNotFound, RegistryError
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Manifest, parse_manifest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry

log = logging.getLogger(__name__)


async def push(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    progress: Progress,
    *,
    source: Name | None = None,
) -> Manifest:
    raw = await trio.to_thread.run_sync(cache.read_manifest, name)
    if raw is None and source is not None:
        raw = await trio.to_thread.run_sync(cache.read_manifest, source)
    if raw is None:
        which = f"{name} or {source}" if source else str(name)
        raise ModelNotFound(f"model {which} is not in the cache at {cache.root}; create or pull it")
    manifest = parse_manifest(raw)
    mount_from = source if source is not None and source.host.lower() == name.host.lower() else None
    if source is not None and mount_from is None:
        log.warning(
            "%s is on another registry than %s: uploading instead of mounting", source, name
        )
    uploaded = mounted = present = 0
    for layer in manifest.blobs:
        key = layer.digest.short
        if not await trio.to_thread.run_sync(cache.has_blob, layer.digest, layer.size):
            raise CacheError(f"blob {layer.digest} of {name} is missing from the cache")
        if await registry.has_blob(name, layer.digest):
            progress.skip(key, layer.size, "already on the registry")
            present += layer.size
            continue
        if mount_from is not None and await registry.mount_blob(name, layer.digest, mount_from):
            progress.skip(key, layer.size, f"mounted from {mount_from.repository}")
            mounted += layer.size
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
        uploaded += layer.size
    await registry.put_manifest(name, manifest.raw, manifest.media_type)
    parts = [f"{human_bytes(uploaded)} uploaded"]
    if mounted:
        parts.append(f"{human_bytes(mounted)} mounted")
    parts.append(f"{human_bytes(present)} already there")
    progress.message(f"pushed {name} ({manifest.digest}): {', '.join(parts)}")
    return manifest


async def delete_remote(cache: BlobCache, registry: Registry, name: Name) -> Digest:
    """Delete ``name``'s manifest on its registry; the digest deleted."""
    given = await registry.manifest_digest(name)
    if given is None:
        raise ModelNotFound(f"model {name} not found on {name.host}")
    try:
        digest = Digest.parse(given)
    except DigestInvalid:
        raise RegistryError(f"{name.host} gave an invalid manifest digest {given!r}") from None
    await registry.delete_manifest(name, digest)
    return digest
