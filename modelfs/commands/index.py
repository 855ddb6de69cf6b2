"""``modelfs index``: publish a chunk index beside a model that has none, leaving the model as is.

One artifact covers every layer of the model over one chunk: a GGUF's weights, each
file of a model folder, a tar layer, each of Ollama's tensor blobs (the mount looks up
each layer's blob in it, by digest). The model's large layers are read once (from the cache when they are there, else
streamed from the registry) and checked against their digests while their chunk
digests (BLAKE3, as ``modelfs create`` writes them) are computed. The index is
pushed as an OCI artifact whose ``subject`` is the model's manifest
(formats/referrers.py): the manifest and its digest do not change, so every
client keeps pulling the same model, and a mount finds the index through the
referrers API, or the referrers tag schema on a registry without it.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial

import blake3
import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.door import blob_layer
from modelfs.blobs.fetchcontext import FetchSettings
from modelfs.blobs.reader import Blobs
from modelfs.commands.progress import Progress, human_bytes
from modelfs.errors import DigestMismatch, ModelfsError
from modelfs.formats.chunks import CHUNK_BYTES, BlobChunks, serialize_chunk_index
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Layer,
    Manifest,
    parse_manifest,
)
from modelfs.formats.names import Name
from modelfs.formats.referrers import (
    EMPTY_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    add_referrer,
    build_index_artifact,
    referrers_tag,
)
from modelfs.registry.client import Registry
from modelfs.registry.retry import retrying

log = logging.getLogger(__name__)

READ_BYTES = CHUNK_BYTES


async def index(
    cache: BlobCache, registry: Registry, name: Name, progress: Progress
) -> Digest | None:
    """Publish a chunk index of ``name``; the artifact's digest (None: nothing to index)."""
    manifest = parse_manifest(await registry.get_manifest(name))
    if manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX):
        progress.result(f"{name} carries its own chunk index: nothing to publish")
        return None
    # Every layer over a chunk, whatever the model's layout (a weights file, a tar layer, a
    # tensor blob), once per blob: a file a model lists at two paths is indexed once.
    large = list(
        {layer.digest: layer for layer in manifest.layers if layer.size > CHUNK_BYTES}.values()
    )
    if not large:
        progress.result(f"{name} has no layer over {human_bytes(CHUNK_BYTES)}: nothing to index")
        return None
    await trio.to_thread.run_sync(cache.prepare)
    indexed = []
    async with trio.open_nursery() as nursery:
        blobs = blob_layer(cache, registry, nursery, FetchSettings(serves_readers=False))
        for layer in large:
            progress.start(layer.digest.short, layer.size)
            hashes = await _chunk_hashes(cache, blobs, name, layer, progress)
            progress.done(layer.digest.short, layer.size, "indexed")
            indexed.append(BlobChunks(layer.digest, layer.size, CHUNK_BYTES, hashes, "blake3"))
        nursery.cancel_scope.cancel()
    digest, raw_index = await publish_index(cache, registry, name, manifest, indexed)
    chunks = sum(len(b.hashes) for b in indexed)
    progress.result(
        f"published a chunk index of {name} ({chunks} chunks, {human_bytes(len(raw_index))}) "
        f"beside {manifest.digest} as {digest}"
    )
    return digest


async def publish_index(
    cache: BlobCache, registry: Registry, name: Name, manifest: Manifest, blobs: list[BlobChunks]
) -> tuple[Digest, bytes]:
    """Push the chunk index of ``blobs`` as an artifact whose subject is ``manifest`` (on the
    registry already); its digest and the index's bytes."""
    raw_index = serialize_chunk_index(CHUNK_BYTES, blobs)
    index_layer = Layer(Digest.of_bytes(raw_index), MEDIA_TYPE_CHUNK_INDEX, len(raw_index))
    for data in (raw_index, EMPTY_CONFIG):
        digest = Digest.of_bytes(data)
        if not await registry.has_blob(name, digest):
            await _upload_bytes(cache, registry, name, digest, data)
    artifact = build_index_artifact(manifest, index_layer)
    digest = Digest.of_bytes(artifact)
    answer = await registry.put_manifest(
        name, artifact, MEDIA_TYPE_OCI_MANIFEST, reference=str(digest)
    )
    if "OCI-Subject" not in answer:
        # No referrers API: list the artifact under the referrers tag, as the spec asks.
        held = await registry.referrers_index(name, manifest.digest)
        await registry.put_manifest(
            name,
            add_referrer(held, artifact),
            MEDIA_TYPE_OCI_INDEX,
            reference=referrers_tag(manifest.digest),
        )
    return digest, raw_index


async def _upload_bytes(
    cache: BlobCache, registry: Registry, name: Name, digest: Digest, data: bytes
) -> None:
    """Upload a blob held in memory from a temp file of ``.modelfs/``, never from ``blobs/``:
    no manifest of the cache names the artifact's blobs, and Ollama expects every blob
    there to belong to a model (``ollama serve`` prunes the others). A crash leaves the
    temp file to the next ``prepare``."""
    path = cache.temp_path()
    await trio.to_thread.run_sync(cache.atomic_write, path, data)
    try:
        await registry.upload_blob(name, digest, path, len(data))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(path.unlink, missing_ok=True))


async def _chunk_hashes(
    cache: BlobCache, blobs: Blobs, name: Name, layer: Layer, progress: Progress
) -> tuple[bytes, ...]:
    """The BLAKE3 digest of each chunk of ``layer``'s blob, whose sha256 is checked on the way
    (streamed through the blob door unchecked, never cached: checked here, whole)."""
    if await trio.to_thread.run_sync(cache.has_blob, layer.digest, layer.size):
        return await trio.to_thread.run_sync(hash_cached, cache, layer)
    hashes: list[bytes] = []
    whole = hashlib.sha256()
    received = 0
    arrived = 0  # bytes in, of whole chunks or not: what the progress shows

    def on_piece(offset: int, view: memoryview) -> None:
        # Worker thread. Pieces are whole chunks, in order; a retry resumes after the last.
        nonlocal received
        if offset != received:
            raise ModelfsError(f"blob {layer.digest.short}: bytes out of order while indexing")
        hashes.append(blake3.blake3(view).digest())
        whole.update(view)
        received += len(view)

    def on_bytes(n: int) -> None:
        # Worker thread: on a slow link a whole chunk takes long; show the bytes as they come.
        nonlocal arrived
        arrived += n
        progress.update(layer.digest.short, min(arrived, layer.size), layer.size)

    async def once() -> None:
        nonlocal arrived
        arrived = received
        if received < layer.size:
            await blobs.stream_unchecked(
                name, layer.digest, received, layer.size, READ_BYTES, on_piece, on_bytes=on_bytes
            )

    await retrying(f"blob {layer.digest.short}", once)
    if whole.hexdigest() != layer.digest.hex:
        raise DigestMismatch(f"blob {layer.digest} from {name.host} does not match its digest")
    return tuple(hashes)


def hash_cached(cache: BlobCache, layer: Layer) -> tuple[bytes, ...]:
    hashes: list[bytes] = []
    whole = hashlib.sha256()
    with open(cache.blob_path(layer.digest), "rb") as f:
        while piece := f.read(READ_BYTES):
            hashes.append(blake3.blake3(piece).digest())
            whole.update(piece)
    if whole.hexdigest() != layer.digest.hex:
        raise DigestMismatch(f"blob {layer.digest} in the cache does not match its digest")
    return tuple(hashes)
