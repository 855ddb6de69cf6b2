"""Where a large blob's chunk digests come from, in order (docs/verification.md).

1. the manifest's own chunk index layer (``modelfs create``): vouched for by the manifest;
2. a chunk index published beside the manifest (``modelfs index``), found through the
   referrers API or the referrers tag schema;
3. the registry's own chunksums (Ollama's): its ranges, of any sizes;
4. a local index, kept when this cache verified the blob whole.

None: the blob is verified whole (or deferred). Each answer is remembered (per manifest,
or per repository and blob), a negative one too, except a failure to ask, which the next
open asks again. Digests that failed twice for their blob (``Fetcher.distrusted``) are
not used again. What does not hold up is a WARNING, and the next source is used.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.wholecheck import LOCAL_SOURCE
from modelfs.errors import DigestMismatch, ManifestInvalid, ModelfsError, ModelNotFound
from modelfs.flight import KeyedLock
from modelfs.formats.chunks import MAX_INDEX_BYTES, BlobChunks, ChunkIndex, parse_chunk_index
from modelfs.formats.chunksums import parse_chunksums
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, Layer, Manifest
from modelfs.formats.names import Name
from modelfs.formats.referrers import ARTIFACT_TYPE as REFERRER_TYPE
from modelfs.formats.referrers import SOURCE as PUBLISHED_SOURCE
from modelfs.formats.referrers import parse_index_artifact

log = logging.getLogger(__name__)

# Reads a (small) blob whole, checked against its digest: (name, layer, anonymous) -> bytes.
ReadBlob = Callable[[Name, Layer, bool], Awaitable[bytes]]
RepoBlob = tuple[tuple[str, str, str], Digest, bool]


class ChunkSources:
    def __init__(self, fetcher: Fetcher, read_blob: ReadBlob) -> None:
        self.fetcher = fetcher
        self.read_blob = read_blob
        # manifest digest -> its validated chunk index (None: it has none, or a bad one)
        self._indexes: dict[Digest, ChunkIndex | None] = {}
        self._index_loads: KeyedLock[Digest] = KeyedLock()
        # (manifest digest, anonymous) -> the chunk index published beside it (None: none)
        self._published: dict[tuple[Digest, bool], ChunkIndex | None] = {}
        self._published_loads: KeyedLock[tuple[Digest, bool]] = KeyedLock()
        # (repository, blob digest, anonymous) -> the registry's chunksums (None: it has none)
        self._chunksums: dict[RepoBlob, BlobChunks | None] = {}
        self._chunksum_loads: KeyedLock[RepoBlob] = KeyedLock()

    async def for_layer(
        self, name: Name, manifest: Manifest, layer: Layer, anonymous: bool
    ) -> BlobChunks | None:
        """The chunk digests ``layer``'s blob is checked against, from the first source
        that has them; None if none does."""
        for find in (self.manifest_index, self.published_index):
            index = await find(name, manifest, anonymous=anonymous)
            chunks = index.blobs.get(layer.digest) if index is not None else None
            if self._usable(chunks):
                return chunks
        chunks = await self.registry_chunksums(name, layer, anonymous=anonymous)
        if self._usable(chunks):
            return chunks
        chunks = await self.local_index(layer)
        return chunks if self._usable(chunks) else None

    async def manifest_index(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> ChunkIndex | None:
        """The manifest's chunk index, fetched and validated once; None if it has no usable one.

        A malformed or lying index is logged and ignored: its blobs are then
        verified whole, which is slower but never unsafe.
        """
        async with self._index_loads.hold(manifest.digest):
            if manifest.digest in self._indexes:
                return self._indexes[manifest.digest]
            layers = manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX)
            if not layers:
                return None
            layer = layers[0]
            if layer.size > MAX_INDEX_BYTES:
                log.warning("%s: chunk index of %d bytes is too large; ignored", name, layer.size)
                index = None
            else:
                raw = await self.read_blob(name, layer, anonymous)
                try:
                    index = parse_chunk_index(raw, manifest.layers)
                except ManifestInvalid as e:
                    log.warning("%s: %s; verifying its blobs whole instead", name, e)
                    index = None
            self._indexes[manifest.digest] = index
            return index

    async def local_index(self, layer: Layer) -> BlobChunks | None:
        """The chunk index kept when this blob was last verified whole here, if any: made
        from bytes that matched the digest, it serves every manifest naming it."""
        cache = self.fetcher.cache
        raw = await self.fetcher.in_thread(cache.load_local_index, layer.digest, MAX_INDEX_BYTES)
        if raw is None:
            return None
        try:
            index = parse_chunk_index(raw, [layer])  # type: ignore[arg-type]
        except ManifestInvalid as e:
            log.warning("blob %s: its local %s; not used", layer.digest.short, e)
            return None
        chunks = index.blobs.get(layer.digest)
        return None if chunks is None else dataclasses.replace(chunks, source=LOCAL_SOURCE)

    def _usable(self, chunks: BlobChunks | None) -> bool:
        # Digests that failed twice for their blob are not used again (docs/verification.md).
        return chunks is not None and chunks not in self.fetcher.distrusted

    async def published_index(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> ChunkIndex | None:
        """A chunk index published beside ``manifest`` (``modelfs index``), found through the
        referrers API or tag schema; looked for once per manifest, a negative answer too.
        One that does not hold up (not about this manifest, a bad index) is a WARNING and
        not used: the next source is."""
        key = (manifest.digest, anonymous)
        async with self._published_loads.hold(key):
            if key in self._published:
                return self._published[key]
            if manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX):
                index = None  # it carries its own
            else:
                try:
                    index = await self._find_published(name, manifest, anonymous)
                except ModelfsError as e:
                    # Not remembered: the next open looks again.
                    log.info("%s: no published chunk index (%s)", name, e)
                    return None
            self._published[key] = index
            return index

    async def _find_published(
        self, name: Name, manifest: Manifest, anonymous: bool
    ) -> ChunkIndex | None:
        source = self.fetcher.registry_for(anonymous)
        for ref in reversed(await source.referrers(name, manifest.digest, REFERRER_TYPE)):
            try:
                artifact = await source.manifest_by_digest(name, ref.digest)
                layer = parse_index_artifact(artifact, manifest.digest)
                if layer.size > MAX_INDEX_BYTES:
                    raise ManifestInvalid(f"invalid chunk index: {layer.size} bytes is too large")
                raw = await self.read_blob(name, layer, anonymous)
                index = parse_chunk_index(raw, manifest.layers)
            except (ManifestInvalid, ModelNotFound, DigestMismatch) as e:
                log.warning(
                    "%s: the chunk index published as %s is not used: %s", name, ref.digest, e
                )
                continue
            blobs = {
                d: dataclasses.replace(c, source=PUBLISHED_SOURCE) for d, c in index.blobs.items()
            }
            return ChunkIndex(index.chunk_bytes, blobs)
        return None

    async def registry_chunksums(
        self, name: Name, layer: Layer, *, anonymous: bool = False
    ) -> BlobChunks | None:
        """The registry's chunksums of ``layer``'s blob, asked for once per repository and
        blob (a registry without them answers 404, remembered too); a body that does not
        hold up is logged and not used."""
        key = (name.repository_key, layer.digest, anonymous)
        async with self._chunksum_loads.hold(key):
            if key in self._chunksums:
                return self._chunksums[key]
            source = self.fetcher.registry_for(anonymous)
            chunks = None
            try:
                answer = await source.chunksums(name, layer.digest)
                if answer is not None:
                    chunks = parse_chunksums(answer.body, layer.digest, layer.size)
                    if answer.location is not None:
                        source.use_blob_location(name, layer.digest, answer.location)
            except ManifestInvalid as e:  # remembered: the registry said what it had to say
                log.warning(
                    "%s: %s from %s; verifying blob %s another way",
                    name,
                    e,
                    name.host,
                    layer.digest.short,
                )
            except ModelfsError as e:
                # Not remembered: the next open asks again.
                log.info("%s: no chunksums for blob %s (%s)", name, layer.digest.short, e)
                return None
            self._chunksums[key] = chunks
            return chunks
