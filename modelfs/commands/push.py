"""``modelfs push``: upload a cached model's blobs the registry lacks, then its manifest.

With ``source`` (``push NAME --from OTHER``) the model is the cached OTHER (or NAME if
that is cached), and blobs are first offered as a cross-repository mount from OTHER's
repository, so the registry links what it already has instead of receiving it again.
A re-run after an interruption uploads only what the registry still lacks (a HEAD per
blob before anything is sent).

With ``format="docker"`` (``push NAME --format docker``) the model goes up as a Docker
Model Runner artifact (formats/dockermodel.py): a Docker config blob, written to the
cache first, and an OCI manifest whose layers are the Ollama model's own blobs
re-labelled. The weights are the same blob, so a registry that has the Ollama model
receives only the config and the manifest, and one GGUF serves ``ollama pull`` and
``docker model pull``. The cached model itself is not changed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.progress import Progress, human_bytes
from modelfs.errors import CacheError, ModelNotFound, UsageError
from modelfs.formats.dockermodel import docker_model, is_docker_model, weights_layer
from modelfs.formats.gguf import read_gguf_file
from modelfs.formats.manifest import Layer, Manifest, parse_manifest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry

log = logging.getLogger(__name__)

PUSH_FORMATS = ("ollama", "docker")


async def push(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    progress: Progress,
    *,
    source: Name | None = None,
    format: str = "ollama",
    created: datetime | None = None,
) -> Manifest:
    """Push the cached model; the manifest put on the registry.

    ``format`` is ``"ollama"`` (the cached manifest as it is) or ``"docker"`` (a Docker
    Model Runner artifact of it); ``created`` is the Docker config's creation time,
    by default when the model's manifest was written to the cache, so pushing the
    same cached model again gives the same manifest.
    """
    if format not in PUSH_FORMATS:
        raise UsageError(f"unknown push format {format!r}: use one of {', '.join(PUSH_FORMATS)}")
    cached = name
    raw = await trio.to_thread.run_sync(cache.read_manifest, name)
    if raw is None and source is not None:
        cached = source
        raw = await trio.to_thread.run_sync(cache.read_manifest, source)
    if raw is None:
        which = f"{name} or {source}" if source else str(name)
        raise ModelNotFound(f"model {which} is not in the cache at {cache.root}; create or pull it")
    manifest = parse_manifest(raw)
    if format == "docker":
        manifest = await _as_docker(cache, cached, manifest, created)
    mount_from = source if source is not None and source.host.lower() == name.host.lower() else None
    if source is not None and mount_from is None:
        log.warning(
            "%s is on another registry than %s: uploading instead of mounting", source, name
        )
    uploaded, mounted, present = await _send_blobs(
        cache, registry, name, manifest.blobs, progress, mount_from
    )
    await registry.put_manifest(name, manifest.raw, manifest.media_type)
    parts = [f"{human_bytes(uploaded)} uploaded"]
    if mounted:
        parts.append(f"{human_bytes(mounted)} mounted")
    parts.append(f"{human_bytes(present)} already there")
    what = " as a Docker model" if format == "docker" else ""
    progress.result(f"pushed {name}{what} ({manifest.digest}): {', '.join(parts)}")
    return manifest


async def _send_blobs(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    blobs: tuple[Layer, ...],
    progress: Progress,
    mount_from: Name | None,
) -> tuple[int, int, int]:
    """Put on the registry every blob it lacks; bytes (uploaded, mounted, already there)."""
    uploaded = mounted = present = 0
    for layer in blobs:
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
    return uploaded, mounted, present


async def _as_docker(
    cache: BlobCache, cached: Name, manifest: Manifest, created: datetime | None
) -> Manifest:
    """The Docker Model Runner artifact of the cached model ``cached``, its config blob
    stored in the cache; a model that already is one, unchanged."""
    if is_docker_model(manifest):
        return manifest
    weights = weights_layer(manifest)
    if weights is None:
        raise UsageError(
            f"model {cached} has no GGUF weights layer, so Docker Model Runner could not run it"
        )
    if not await trio.to_thread.run_sync(cache.has_blob, weights.digest, weights.size):
        raise CacheError(
            f"the weights of {cached} ({weights.digest.short}) are not complete in the cache; "
            "pull the model first"
        )
    info = await trio.to_thread.run_sync(read_gguf_file, cache.blob_path(weights.digest))
    if created is None:
        created = await trio.to_thread.run_sync(_cached_at, cache, cached)
    docker = docker_model(manifest, info, created)
    config = docker.config_layer
    if not await trio.to_thread.run_sync(cache.has_blob, config.digest, config.size):
        await trio.to_thread.run_sync(cache.store_bytes, docker.config, config.digest)
    log.info("%s as a Docker model: config %s", cached, config.digest.short)
    return parse_manifest(docker.manifest)


def _cached_at(cache: BlobCache, name: Name) -> datetime:
    """When ``name``'s manifest was written to the cache (whole seconds, UTC); now if unknown."""
    path = cache.find_manifest(name)
    try:
        seconds = int(path.stat().st_mtime) if path is not None else None
    except OSError:
        seconds = None
    if seconds is None:
        return datetime.now(UTC).replace(microsecond=0)
    return datetime.fromtimestamp(seconds, UTC)
