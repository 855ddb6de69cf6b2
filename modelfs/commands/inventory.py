"""What the cache holds: each model, its size, and how much of it is present (``modelfs ls``)."""

from __future__ import annotations

from dataclasses import dataclass

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.partial import present_bytes_in_state
from modelfs.errors import ManifestInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import Name


@dataclass(frozen=True)
class ModelRow:
    name: Name
    display: str
    digest: Digest
    size_bytes: int
    present_bytes: int
    complete: bool


def inventory(cache: BlobCache) -> list[ModelRow]:
    rows = []
    for model in cache.iter_models():
        try:
            manifest = parse_manifest(model.path.read_bytes())
        except (OSError, ManifestInvalid):
            continue
        present = 0
        for layer in manifest.blobs:
            if cache.has_blob(layer.digest, layer.size):
                present += layer.size
                continue
            try:
                raw = cache.state_path(layer.digest).read_bytes()
            except OSError:
                continue
            present += present_bytes_in_state(raw, layer.digest, layer.size)
        rows.append(
            ModelRow(
                model.name,
                model.name.display_shortest(),
                manifest.digest,
                manifest.total_bytes,
                present,
                model.complete,
            )
        )
    return rows
