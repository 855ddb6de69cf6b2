"""Model manifests: parse and validate registry bytes, serialize new ones, name layers as files.

A manifest is kept as the exact bytes the registry sent (its digest is the sha256
of those bytes); ``Manifest`` is the validated view of them. Everything a hostile
registry could put in a manifest (wrong types, negative or absurd sizes,
malformed digests, 100k layers) becomes ``ManifestInvalid`` here, before any
other module sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from modelfs.errors import DigestInvalid, ManifestInvalid
from modelfs.formats.digest import Digest

MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST)
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_CHUNK_INDEX = "application/vnd.modelfs.chunks.v1+json"

OLLAMA_LAYER_PREFIX = "application/vnd.ollama.image."
MEDIA_TYPE_MODEL = OLLAMA_LAYER_PREFIX + "model"
MEDIA_TYPE_TEMPLATE = OLLAMA_LAYER_PREFIX + "template"
MEDIA_TYPE_SYSTEM = OLLAMA_LAYER_PREFIX + "system"
MEDIA_TYPE_PARAMS = OLLAMA_LAYER_PREFIX + "params"
MEDIA_TYPE_LICENSE = OLLAMA_LAYER_PREFIX + "license"
MEDIA_TYPE_MESSAGES = OLLAMA_LAYER_PREFIX + "messages"
MEDIA_TYPE_ADAPTER = OLLAMA_LAYER_PREFIX + "adapter"
MEDIA_TYPE_PROJECTOR = OLLAMA_LAYER_PREFIX + "projector"

MAX_MANIFEST_BYTES = 4 << 20
MAX_LAYERS = 4096
# Far above any real model, far below where sums of sizes could overflow a signed 64-bit offset.
MAX_BLOB_BYTES = 1 << 48
MAX_MEDIA_TYPE_CHARS = 255
# Annotations and Ollama's descriptor ``name`` are kept for the formats that need them
# (file paths, file metadata); bounded so a hostile manifest cannot make them huge.
MAX_ANNOTATIONS = 64
MAX_ANNOTATION_CHARS = 64 << 10
MAX_LAYER_NAME_CHARS = 4096

# Layer media type -> (file stem, extension) in a tag directory.
_LAYER_FILES: dict[str, tuple[str, str]] = {
    MEDIA_TYPE_MODEL: ("model", ".gguf"),
    MEDIA_TYPE_PROJECTOR: ("projector", ".gguf"),
    MEDIA_TYPE_ADAPTER: ("adapter", ".gguf"),
    OLLAMA_LAYER_PREFIX + "draft": ("draft", ".gguf"),
    OLLAMA_LAYER_PREFIX + "embed": ("embed", ".gguf"),
    MEDIA_TYPE_TEMPLATE: ("template", ""),
    MEDIA_TYPE_SYSTEM: ("system", ""),
    MEDIA_TYPE_PARAMS: ("params", ".json"),
    MEDIA_TYPE_MESSAGES: ("messages", ".json"),
    MEDIA_TYPE_LICENSE: ("license", ""),
    OLLAMA_LAYER_PREFIX + "prompt": ("prompt", ""),
    OLLAMA_LAYER_PREFIX + "json": ("data", ".json"),
    MEDIA_TYPE_CHUNK_INDEX: ("chunks", ".json"),
    # Docker Model Runner / OCI model artifacts.
    "application/vnd.docker.ai.gguf.v3": ("model", ".gguf"),
    "application/vnd.docker.ai.license": ("license", ""),
    "application/vnd.docker.ai.mmproj": ("projector", ".gguf"),
}
CONFIG_FILENAME = "config.json"
MANIFEST_FILENAME = "manifest.json"
# Layers that hold GGUF files (weights, projectors, adapters ...).
GGUF_MEDIA_TYPES = frozenset(mt for mt, (_stem, ext) in _LAYER_FILES.items() if ext == ".gguf")


@dataclass(frozen=True)
class Layer:
    """One blob a manifest refers to."""

    digest: Digest
    media_type: str
    size: int
    # What the descriptor says about the file besides its bytes: OCI annotations (file path,
    # file metadata) and Ollama's non-standard ``name``. Not part of a layer's identity.
    annotations: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    name: str | None = field(default=None, compare=False)

    def annotation(self, key: str) -> str | None:
        for k, v in self.annotations:
            if k == key:
                return v
        return None


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and the exact bytes it came from."""

    raw: bytes
    digest: Digest
    media_type: str
    config: Layer
    layers: tuple[Layer, ...]
    artifact_type: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def blobs(self) -> tuple[Layer, ...]:
        """Config and layers, each digest once: what must be present for the model to be complete."""
        seen: dict[Digest, Layer] = {}
        for layer in (self.config, *self.layers):
            seen.setdefault(layer.digest, layer)
        return tuple(seen.values())

    @property
    def total_bytes(self) -> int:
        return sum(layer.size for layer in self.blobs)

    def layers_of_type(self, media_type: str) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.media_type == media_type)


def _layer(obj: object, where: str) -> Layer:
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"invalid manifest: {where} is not an object")
    media_type = obj.get("mediaType")
    if (
        not isinstance(media_type, str)
        or not media_type
        or len(media_type) > MAX_MEDIA_TYPE_CHARS
        or not media_type.isascii()
        or not media_type.isprintable()
    ):
        raise ManifestInvalid(f"invalid manifest: {where} has no usable mediaType")
    size = obj.get("size")
    # bool is an int subclass; a JSON true is not a size.
    if not isinstance(size, int) or isinstance(size, bool):
        raise ManifestInvalid(f"invalid manifest: {where} size is not an integer")
    if size < 0 or size > MAX_BLOB_BYTES:
        raise ManifestInvalid(f"invalid manifest: {where} size {size} is out of range")
    try:
        digest = Digest.parse(obj.get("digest"))
    except DigestInvalid as e:
        raise ManifestInvalid(f"invalid manifest: {where}: {e}") from None
    name = obj.get("name")
    if name is not None and (
        not isinstance(name, str) or not name or len(name) > MAX_LAYER_NAME_CHARS
    ):
        raise ManifestInvalid(f"invalid manifest: {where} name is not a usable string")
    return Layer(
        digest=digest,
        media_type=media_type,
        size=size,
        annotations=_annotations(obj.get("annotations"), where),
        name=name,
    )


def _annotations(obj: object, where: str) -> tuple[tuple[str, str], ...]:
    if obj is None:
        return ()
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"invalid manifest: {where} annotations is not an object")
    if len(obj) > MAX_ANNOTATIONS:
        raise ManifestInvalid(f"invalid manifest: {where} has {len(obj)} annotations")
    out = []
    for key, value in obj.items():
        if not isinstance(value, str) or len(key) + len(value) > MAX_ANNOTATION_CHARS:
            raise ManifestInvalid(
                f"invalid manifest: {where} annotation {key[:80]!r} is not a string"
            )
        out.append((key, value))
    return tuple(sorted(out))


def parse_manifest(raw: bytes) -> Manifest:
    """Validate registry bytes as an image manifest; raise ManifestInvalid with the reason."""
    if not isinstance(raw, bytes | bytearray):
        raise ManifestInvalid("invalid manifest: not bytes")
    raw = bytes(raw)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(
            f"invalid manifest: {len(raw)} bytes is over the {MAX_MANIFEST_BYTES} byte limit"
        )
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ManifestInvalid(f"invalid manifest: not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("invalid manifest: not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalid("invalid manifest: schemaVersion is not 2")
    media_type = doc.get("mediaType", MEDIA_TYPE_DOCKER_MANIFEST)
    if media_type not in MANIFEST_MEDIA_TYPES:
        shown = str(media_type)[:80]
        raise ManifestInvalid(f"invalid manifest: media type {shown!r} is not an image manifest")
    config = _layer(doc.get("config"), "config")
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise ManifestInvalid("invalid manifest: layers is not a list")
    if len(layers_doc) > MAX_LAYERS:
        raise ManifestInvalid(f"invalid manifest: {len(layers_doc)} layers (limit {MAX_LAYERS})")
    layers = tuple(_layer(obj, f"layer {i}") for i, obj in enumerate(layers_doc))
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and (
        not isinstance(artifact_type, str) or len(artifact_type) > MAX_MEDIA_TYPE_CHARS
    ):
        raise ManifestInvalid("invalid manifest: artifactType is not a media type")
    sizes: dict[Digest, int] = {}
    for layer in (config, *layers):
        if sizes.setdefault(layer.digest, layer.size) != layer.size:
            raise ManifestInvalid(
                f"invalid manifest: blob {layer.digest} is listed with two different sizes"
            )
    if sum(sizes.values()) > MAX_BLOB_BYTES:
        raise ManifestInvalid("invalid manifest: the layers add up to more than a model can be")
    return Manifest(
        raw=raw,
        digest=Digest.of_bytes(raw),
        media_type=media_type,
        config=config,
        layers=layers,
        artifact_type=artifact_type,
        annotations=_annotations(doc.get("annotations"), "the manifest"),
    )


def build_manifest(config: Layer, layers: list[Layer] | tuple[Layer, ...]) -> bytes:
    """Serialize a Docker v2 manifest the way Ollama writes them (compact JSON)."""

    def obj(layer: Layer) -> dict[str, object]:
        return {"mediaType": layer.media_type, "digest": str(layer.digest), "size": layer.size}

    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": obj(config),
        "layers": [obj(layer) for layer in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def layer_filenames(manifest: Manifest) -> list[tuple[str, Layer]]:
    """The files of a tag directory, in manifest order: one per layer, plus config.json.

    Known media types get their Ollama name (``model.gguf``, ``params.json`` …); a
    repeated type gets ``-2``, ``-3`` … before the extension; an unknown type is
    reachable as ``layer-<12 hex>``. ``manifest.json`` is added by the tree.
    """
    used: set[str] = {CONFIG_FILENAME, MANIFEST_FILENAME}
    out: list[tuple[str, Layer]] = []
    for layer in manifest.layers:
        stem, ext = _LAYER_FILES.get(layer.media_type, (f"layer-{layer.digest.short}", ""))
        name = stem + ext
        n = 2
        while name in used:
            name = f"{stem}-{n}{ext}"
            n += 1
        used.add(name)
        out.append((name, layer))
    out.append((CONFIG_FILENAME, manifest.config))
    return out
