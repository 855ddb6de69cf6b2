"""``modelfs create``: build an Ollama model in the cache from a GGUF file and its companions.

Writes each blob (GGUF weights, template, system prompt, params, licenses), a
chunk index for every layer larger than one chunk (so the model reads lazily and
verified through any modelfs mount), the config blob Ollama expects (family,
type and file type read from the GGUF header), and last the manifest.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from pathlib import Path

from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import CacheError, UsageError
from modelfs.formats.chunks import CHUNK_BYTES, BlobChunks, serialize_chunk_index
from modelfs.formats.digest import Digest
from modelfs.formats.gguf import ollama_config, read_gguf_file
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
    build_manifest,
    parse_manifest,
)
from modelfs.formats.names import Name

log = logging.getLogger(__name__)


def _read_text(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CacheError(f"cannot read {what} {path}: {e.strerror}") from None


def parse_params(value: str) -> bytes:
    """``--params`` is inline JSON or a path to a JSON file; it must be an object."""
    text = value
    if not value.lstrip().startswith("{"):
        text = _read_text(Path(value), "params file").decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--params is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError("--params must be a JSON object, e.g. '{\"temperature\":0.2}'")
    return json.dumps(doc, separators=(",", ":")).encode()


def create_model(
    cache: BlobCache,
    name: Name,
    gguf: Path,
    *,
    template: Path | None = None,
    system: str | None = None,
    params: str | None = None,
    licenses: tuple[Path, ...] = (),
    chunk_bytes: int = CHUNK_BYTES,
    chunk_index: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Write the model's blobs and then its manifest into the cache; return the manifest."""
    info = read_gguf_file(gguf)  # refuses a file that is not GGUF before anything is copied
    cache.prepare()
    total = gguf.stat().st_size
    imported = cache.import_file(
        gguf, chunk_bytes, (lambda n: on_progress(n, total)) if on_progress else None
    )
    layers = [Layer(imported.digest, MEDIA_TYPE_MODEL, imported.size)]
    if chunk_index and imported.size > chunk_bytes:
        index = serialize_chunk_index(
            chunk_bytes,
            [
                BlobChunks(
                    imported.digest,
                    imported.size,
                    chunk_bytes,
                    imported.chunk_hashes,
                    imported.chunk_algorithm,
                )
            ],
        )
        layers.append(_store(cache, index, MEDIA_TYPE_CHUNK_INDEX))
    if template is not None:
        layers.append(_store(cache, _read_text(template, "template"), MEDIA_TYPE_TEMPLATE))
    if system is not None:
        layers.append(_store(cache, system.encode(), MEDIA_TYPE_SYSTEM))
    if params is not None:
        layers.append(_store(cache, parse_params(params), MEDIA_TYPE_PARAMS))
    for lic in licenses:
        layers.append(_store(cache, _read_text(lic, "license"), MEDIA_TYPE_LICENSE))
    config_doc = {
        **ollama_config(info),
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
            platform.machine(), platform.machine()
        ),
        "os": platform.system().lower(),
        "rootfs": {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]},
    }
    config = _store(
        cache, json.dumps(config_doc, separators=(",", ":")).encode(), MEDIA_TYPE_DOCKER_CONFIG
    )
    raw = build_manifest(config, layers)
    manifest = parse_manifest(raw)
    cache.write_manifest(name, raw)
    cache.unmark_lazy(name)  # created on purpose: pinned
    log.info("created %s (%s)", name, manifest.digest)
    return manifest


def _store(cache: BlobCache, data: bytes, media_type: str) -> Layer:
    digest = Digest.of_bytes(data)
    if not cache.has_blob(digest, len(data)):
        cache.store_bytes(data, digest)
    return Layer(digest, media_type, len(data))
