"""What the cache holds: each model, its size, how much of it is present, and how its reads
are checked (``modelfs ls``); what it takes on disk (``modelfs du``).

How reads are checked is what the mount last used for the model's largest blob that is not
complete (its partial state says), else what the cache alone can tell: ``complete``, the
manifest's own ``index``, a ``local-index``; ``-`` when it carries neither and the mount has
not read it yet (a published index or the registry's chunksums are found on the first read).

``ls --json`` and ``du --json`` print ``ls_json``/``du_json``: their keys are an interface
(scripts read them; README lists them), added to, never renamed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.partial import present_bytes_in_state, state_source
from modelfs.errors import ManifestInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, Layer, Manifest, parse_manifest
from modelfs.formats.names import Name


@dataclass(frozen=True)
class ModelRow:
    name: Name
    display: str
    digest: Digest
    size_bytes: int
    present_bytes: int
    complete: bool
    verify: str


def inventory(cache: BlobCache) -> list[ModelRow]:
    rows = []
    for model in cache.iter_models():
        try:
            manifest = parse_manifest(model.path.read_bytes())
        except (OSError, ManifestInvalid):
            continue
        present = sum(present_bytes(cache, layer) for layer in manifest.blobs)
        rows.append(
            ModelRow(
                model.name,
                model.name.display_shortest(),
                manifest.digest,
                manifest.total_bytes,
                present,
                model.complete,
                _verification(cache, manifest),
            )
        )
    return rows


def ls_json(rows: list[ModelRow]) -> list[dict[str, object]]:
    """``modelfs ls --json``: one object per model, bytes as integers."""
    return [
        {
            "name": str(r.name),
            "display": r.display,
            "digest": str(r.digest),
            "size_bytes": r.size_bytes,
            "present_bytes": r.present_bytes,
            "complete": r.complete,
            "verify": r.verify,
        }
        for r in rows
    ]


def present_bytes(cache: BlobCache, layer: Layer) -> int:
    """How much of ``layer`` the cache holds: all of it, the checked chunks of its partial, or 0."""
    if cache.has_blob(layer.digest, layer.size):
        return layer.size
    try:
        raw = cache.state_path(layer.digest).read_bytes()
    except OSError:
        return 0
    return present_bytes_in_state(raw, layer.digest, layer.size)


def _verification(cache: BlobCache, manifest: Manifest) -> str:
    missing = [layer for layer in manifest.blobs if not cache.has_blob(layer.digest, layer.size)]
    if not missing:
        return "complete"
    largest = max(missing, key=lambda layer: layer.size)
    try:
        source = state_source(cache.state_path(largest.digest).read_bytes())
    except OSError:
        source = None
    if source is not None:
        return source
    if manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX):
        return "index"
    if cache.local_index_path(largest.digest).exists():
        return "local-index"
    return "-"


# ``modelfs du``'s row for partial blobs no model names.
UNNAMED_ROW = "(partial, no model)"


@dataclass(frozen=True)
class DiskRow:
    name: Name
    display: str
    disk_bytes: int  # its blobs, complete or partial, as allocated on disk


def _allocated(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def disk_usage(cache: BlobCache, only: Name | None = None) -> tuple[list[DiskRow], int]:
    """Bytes on disk per model (each of its blobs, complete or partly fetched), and in all,
    a blob that several models share counted once."""
    rows = []
    seen: dict[Digest, int] = {}
    for model in cache.iter_models():
        if only is not None and model.name.key != only.key:
            continue
        try:
            manifest = parse_manifest(model.path.read_bytes())
        except (OSError, ManifestInvalid):
            continue
        total = 0
        for layer in manifest.blobs:
            if layer.digest not in seen:
                complete = _allocated(cache.blob_path(layer.digest))
                seen[layer.digest] = complete or _allocated(cache.partial_path(layer.digest))
            total += seen[layer.digest]
        rows.append(DiskRow(model.name, model.name.display_shortest(), total))
    return rows, sum(seen.values())


def unnamed_partial_bytes(cache: BlobCache) -> int:
    """Bytes in ``partial/`` for blobs no manifest names (a fetch another process still holds
    after ``unlink``; removed once it lets go)."""
    named = {layer.digest for model in cache.iter_models() for layer in _layers(model.path)}
    return sum(n for d, n in cache.partial_digests().items() if d not in named)


def _layers(path: Path) -> tuple[Layer, ...]:
    try:
        return parse_manifest(path.read_bytes()).blobs
    except (OSError, ManifestInvalid):
        return ()


def du_json(rows: list[DiskRow], total: int, unnamed: int) -> dict[str, object]:
    """``modelfs du --json``: bytes on disk per model, partials no model names (another process
    still held them at ``unlink``), and in all with shared blobs once."""
    return {
        "models": [
            {"name": str(r.name), "display": r.display, "disk_bytes": r.disk_bytes} for r in rows
        ],
        "unnamed_partial_bytes": unnamed,
        "total_bytes": total + unnamed,
    }
