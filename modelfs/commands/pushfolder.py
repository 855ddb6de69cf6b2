"""``modelfs push`` of a model folder: the layout asked for, and its chunk index beside it.

A folder model (created with ``create --dir``, or pulled as a Docker v0.2, ModelPack or
Ollama tensor artifact) is pushed in the format it is cached in, or laid out again in
another (commands/folderstore.py ``layout_cached``). Its manifest is exactly what Docker
Model Runner, modctl or Ollama write, so the chunk index of its large layers cannot be a
layer of it (each layer there is a file of the folder): it is published beside the
manifest as ``modelfs index`` publishes one (an artifact whose subject is the manifest),
from the chunk digests kept when the blobs were written, or hashed from the cache; none
for a model created with ``--no-chunk-index``, as for a GGUF model created so.
"""

from __future__ import annotations

import logging
from datetime import datetime

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands import folderstore
from modelfs.commands.index import hash_cached, publish_index
from modelfs.errors import ManifestInvalid
from modelfs.formats.chunks import (
    CHUNK_BYTES,
    DEFAULT_CHUNK_ALGORITHM,
    MAX_INDEX_BYTES,
    BlobChunks,
    parse_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, Layer, Manifest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry

log = logging.getLogger(__name__)

FORMAT_WORDS = {
    "docker": "as a Docker model",
    "cncf": "as a ModelPack artifact",
    "ollama": "in Ollama's tensor format",
}


def is_folder_model(manifest: Manifest) -> bool:
    return folderstore.format_of(manifest) is not None


async def as_format(
    cache: BlobCache, cached: Name, manifest: Manifest, fmt: str, created: datetime
) -> tuple[Manifest, frozenset[Digest]]:
    """The cached folder model laid out as ``fmt`` (its new blobs stored in the cache), and
    the blobs written for it that were not in the cache before (``keep_laid_out``)."""
    written: set[Digest] = set()
    laid_out = await trio.to_thread.run_sync(
        folderstore.layout_cached, cache, cached, manifest, fmt, created, written
    )
    return laid_out, frozenset(written)


def keep_laid_out(cache: BlobCache, pushed: Name, cached: Name, manifest: Manifest) -> bool:
    """Before the push: keep the laid-out model in the cache under the pushed name, pinned, as
    ``ollama push`` leaves the model it pushed (``ollama create``, ``ollama cp``): every blob
    written for it is then named by a manifest (``ollama serve`` prunes blobs no manifest
    names; nothing else would ever free them). Not when ``pushed`` is the cached model
    itself, which keeps its own layout: False then (``orphans.free_unnamed`` after the push)."""
    if pushed.equal_fold(cached):
        return False
    existing = cache.read_manifest(pushed)
    if existing is not None:
        return existing == manifest.raw  # another model of that name is never replaced
    cache.write_manifest(pushed, manifest.raw)
    cache.unmark_lazy(pushed)
    log.info("%s laid out for the push is kept in the cache as %s", cached, pushed)
    return True


def _chunks(cache: BlobCache, layer: Layer) -> BlobChunks:
    """The layer's chunk digests: the local index written with the blob, else hashed now."""
    raw = cache.load_local_index(layer.digest, MAX_INDEX_BYTES)
    if raw is not None:
        try:
            index = parse_chunk_index(raw, [layer])
            found = index.blobs.get(layer.digest)
            if (
                found is not None
                and index.chunk_bytes == CHUNK_BYTES
                and found.algorithm == DEFAULT_CHUNK_ALGORITHM
            ):
                return found
        except ManifestInvalid as e:
            log.info("blob %s: its local chunk index is not used: %s", layer.digest.short, e)
    hashes = hash_cached(cache, layer)
    return BlobChunks(layer.digest, layer.size, CHUNK_BYTES, hashes, DEFAULT_CHUNK_ALGORITHM)


async def publish_folder_index(
    cache: BlobCache, registry: Registry, name: Name, manifest: Manifest
) -> Digest | None:
    """Publish the chunk index of the pushed folder model's large layers; None: none needed,
    or the model was created with ``--no-chunk-index`` (``modelfs index`` publishes one
    later if wanted)."""
    if manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX):
        return None
    if await trio.to_thread.run_sync(folderstore.is_unindexed, cache, manifest.digest):
        log.info("%s: created with --no-chunk-index: no chunk index published", name)
        return None
    large = list(
        {layer.digest: layer for layer in manifest.layers if layer.size > CHUNK_BYTES}.values()
    )
    if not large:
        return None
    blobs = [await trio.to_thread.run_sync(_chunks, cache, layer) for layer in large]
    digest, _raw = await publish_index(cache, registry, name, manifest, blobs)
    log.info("%s: chunk index of %d layers published as %s", name, len(blobs), digest.short)
    return digest
