"""``modelfs push``: upload a cached model's blobs the registry lacks, then its manifest.

A blob the registry lacks in NAME's repository is first offered as a cross-repository
mount (``POST /v2/NAME/blobs/uploads/?mount=DIGEST&from=REPO``), as ``docker push`` does,
so the registry links what it already has instead of receiving it again. The repositories
tried are those that should hold it: with ``source`` (``push NAME --from OTHER``, the model
being the cached OTHER or NAME if that is cached) OTHER's first, then every repository on
the same registry whose manifest in the cache names the blob (where it was pulled from or
pushed to), at most ``MAX_MOUNT_SOURCES`` of them. The registry answers 201 when it
mounted the blob, 202 with an upload session when it would not: that session is cancelled
before the next repository is tried, and the last one's is where the blob is uploaded.
A re-run after an interruption uploads only what the registry still lacks (a HEAD per
blob before anything is sent).

With ``format="docker"`` (``push NAME --format docker``) the model goes up as a Docker
Model Runner artifact (formats/dockermodel.py): a Docker config blob, written to the
cache first, and an OCI manifest whose layers are the Ollama model's own blobs
re-labelled. The weights are the same blob, so a registry that has the Ollama model
receives only the config and the manifest, and one GGUF serves ``ollama pull`` and
``docker model pull``. The cached model itself is not changed: pushed under another
name (``--from``), the Docker model is kept in the cache under that name, as ``ollama
push`` leaves what it pushed; pushed under its own name, the config is removed from
``blobs/`` after the push unless a manifest names it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import trio

from modelfs.blobs import orphans
from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.progress import Progress, human_bytes
from modelfs.commands.pushfolder import (
    FORMAT_WORDS,
    as_format,
    is_folder_model,
    keep_laid_out,
    publish_folder_index,
)
from modelfs.errors import CacheError, ModelfsError, ModelNotFound, RegistryError, UsageError
from modelfs.formats.digest import Digest
from modelfs.formats.dockermodel import docker_model, is_docker_model, weights_layer
from modelfs.formats.gguf import read_gguf_file
from modelfs.formats.manifest import Layer, Manifest, parse_manifest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry

log = logging.getLogger(__name__)

PUSH_FORMATS = ("ollama", "docker", "cncf")
# Repositories offered a mount of one blob before it is uploaded: each costs a request (and
# with token auth a token), and a cached manifest is a good guess, not a promise.
MAX_MOUNT_SOURCES = 3


async def push(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    progress: Progress,
    *,
    source: Name | None = None,
    format: str | None = None,
    created: datetime | None = None,
) -> Manifest:
    """Push the cached model; the manifest put on the registry.

    ``format`` is None (the cached manifest as it is), ``"ollama"`` (a GGUF model as it
    is; a model folder in Ollama's tensor format), ``"docker"`` (a Docker Model Runner
    artifact: v0.1 of a GGUF model, v0.2 of a folder) or ``"cncf"`` (a ModelPack artifact
    of a folder, commands/pushfolder.py); ``created`` is the config's creation time,
    by default when the model's manifest was written to the cache, so pushing the
    same cached model again gives the same manifest.
    """
    if format is not None and format not in PUSH_FORMATS:
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
    folder = is_folder_model(manifest)
    written: frozenset[Digest] = frozenset()
    if folder and format is not None:
        if created is None:
            created = await trio.to_thread.run_sync(_cached_at, cache, cached)
        manifest, written = await as_format(cache, cached, manifest, format, created)
    elif format == "docker":
        manifest, written = await _as_docker(cache, cached, manifest, created)
    elif format == "cncf":
        raise UsageError(
            f"{cached} is not a model folder: --format cncf is for models made of files "
            "(create --dir)"
        )
    # A model laid out again is kept under the pushed name, as ``ollama push`` leaves what it
    # pushed; what was written for it is removed after the push when it is kept under none.
    if manifest.raw != raw and await trio.to_thread.run_sync(
        keep_laid_out, cache, name, cached, manifest
    ):
        written = frozenset()
    mount_from = source if source is not None and source.host.lower() == name.host.lower() else None
    if source is not None and mount_from is None:
        log.warning(
            "%s is on another registry than %s: uploading instead of mounting", source, name
        )
    try:
        found_in = await trio.to_thread.run_sync(_repositories_naming, cache, name)
        uploaded, mounted, present = await _send_blobs(
            cache, registry, name, manifest.blobs, progress, mount_from, found_in
        )
        await registry.put_manifest(name, manifest.raw, manifest.media_type)
        index = await publish_folder_index(cache, registry, name, manifest) if folder else None
    finally:
        with trio.CancelScope(shield=True):
            if written:
                await trio.to_thread.run_sync(orphans.free_unnamed, cache, written)
            if folder and manifest.raw != raw:
                # The layout's --no-chunk-index mark, unless a manifest keeps the layout.
                await trio.to_thread.run_sync(cache.drop_unindexed_mark, manifest.digest)
    parts = [f"{human_bytes(uploaded)} uploaded"]
    if mounted:
        parts.append(f"{human_bytes(mounted)} mounted")
    parts.append(f"{human_bytes(present)} already there")
    what = " as a Docker model" if format == "docker" else ""
    if folder and format is not None:
        what = " " + FORMAT_WORDS[format]
    if index is not None:
        parts.append(f"chunk index {index.short} beside it")
    progress.result(f"pushed {name}{what} ({manifest.digest}): {', '.join(parts)}")
    return manifest


async def _send_blobs(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    blobs: tuple[Layer, ...],
    progress: Progress,
    mount_from: Name | None,
    found_in: dict[Digest, list[Name]],
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
        source, session = await _mount(registry, name, layer.digest, mount_from, found_in)
        if source is not None:
            progress.skip(key, layer.size, f"mounted from {source.repository}")
            mounted += layer.size
            continue
        progress.start(key, layer.size)
        await registry.upload_blob(
            name,
            layer.digest,
            cache.blob_path(layer.digest),
            layer.size,
            lambda n, key=key, size=layer.size: progress.update(key, n, size),
            session=session,
        )
        progress.done(key, layer.size, "uploaded")
        uploaded += layer.size
    return uploaded, mounted, present


async def _mount(
    registry: Registry,
    name: Name,
    digest: Digest,
    mount_from: Name | None,
    found_in: dict[Digest, list[Name]],
) -> tuple[Name | None, str | None]:
    """Offer the registry a cross-repository mount of ``digest`` from each likely repository
    in turn: the one it mounted from, or None and the upload session the last offer opened
    (used for the upload, as docker push does; the others' sessions are cancelled)."""
    sources = [mount_from] if mount_from is not None else []
    sources += [
        s
        for s in found_in.get(digest, ())
        if mount_from is None or s.repository != mount_from.repository
    ]
    sources = sources[:MAX_MOUNT_SOURCES]
    session: str | None = None
    for source in sources:
        if session:
            await registry.cancel_upload(name, session, f"mount of {digest.short} to {name}")
        try:
            session = await registry.offer_mount(name, digest, source)
        except RegistryError as e:
            if source is mount_from:
                raise
            # A guess from the cache, say a repository these credentials cannot read (401,
            # 403): not a reason to fail the push, the blob is uploaded instead.
            log.debug("no mount of %s from %s: %s", digest.short, source.repository, e)
            session = ""
            continue
        if session is None:
            return source, None
    return None, session or None


def _repositories_naming(cache: BlobCache, name: Name) -> dict[Digest, list[Name]]:
    """For each blob, the other repositories on ``name``'s registry whose manifests in the
    cache name it (complete models first): where the registry should already have it."""
    found: dict[Digest, list[Name]] = {}
    host = name.host.lower()
    for model in cache.iter_models():
        other = model.name
        if other.host.lower() != host or other.repository == name.repository:
            continue
        try:
            raw = cache.read_manifest(other, pending=not model.complete)
            manifest = parse_manifest(raw) if raw is not None else None
        except (ModelfsError, OSError):
            continue  # not a model this push can say anything about
        if manifest is None:
            continue
        for layer in manifest.blobs:
            repos = found.setdefault(layer.digest, [])
            if all(r.repository != other.repository for r in repos):
                repos.append(other)
    return found


async def _as_docker(
    cache: BlobCache, cached: Name, manifest: Manifest, created: datetime | None
) -> tuple[Manifest, frozenset[Digest]]:
    """The Docker Model Runner artifact of the cached model ``cached``, its config blob
    stored in the cache; a model that already is one, unchanged. With it, the config if it
    was not in the cache before (the push removes it again unless a manifest names it)."""
    if is_docker_model(manifest):
        return manifest, frozenset()
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
    written: frozenset[Digest] = frozenset()
    if not await trio.to_thread.run_sync(cache.has_blob, config.digest, config.size):
        await trio.to_thread.run_sync(cache.store_bytes, docker.config, config.digest)
        written = frozenset({config.digest})
    log.info("%s as a Docker model: config %s", cached, config.digest.short)
    return parse_manifest(docker.manifest), written


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
