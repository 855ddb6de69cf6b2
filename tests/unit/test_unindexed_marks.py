"""The ``--no-chunk-index`` mark of a folder model's manifest (``.modelfs/unindexed/``) goes
with the last manifest of that digest, whether ``modelfs rm`` or eviction removes it; a mark
another manifest of the same digest still needs stays."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.commands.folderstore import is_unindexed, mark_unindexed
from modelfs.formats.digest import Digest
from modelfs.formats.names import parse_name

FIRST = parse_name("registry.test/library/folder:1")
SECOND = parse_name("registry.test/library/folder-copy:1")
THIRD = parse_name("registry.test/library/folder-pulled:1")


def folder_model(cache: BlobCache, *names, seed: bytes = b"weights") -> Digest:
    """A model whose manifest is marked as created with --no-chunk-index, under ``names``."""
    config, layer = b"{}", seed * 10
    for data in (config, layer):
        cache.store_bytes(data, Digest.of_bytes(data))
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.docker.ai.model.config.v0.2+json",
            "digest": str(Digest.of_bytes(config)),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.ai.safetensors",
                "digest": str(Digest.of_bytes(layer)),
                "size": len(layer),
            }
        ],
    }
    raw = json.dumps(doc).encode()
    digest = Digest.of_bytes(raw)
    mark_unindexed(cache, digest)
    for name in names:
        cache.write_manifest(name, raw)
    return digest


def test_rm_drops_the_mark_with_the_last_manifest_of_its_digest(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    digest = folder_model(cache, FIRST, SECOND)  # a copy (modelfs cp) has the same digest
    other = folder_model(cache, parse_name("registry.test/x/other:1"), seed=b"other")
    cache.unlink(FIRST)
    assert is_unindexed(cache, digest), "the mark of a model still in the cache was removed"
    raw = cache.read_manifest(SECOND)
    assert raw is not None
    cache.write_manifest(THIRD, raw, pending=True)  # being pulled or created meanwhile
    cache.unlink(SECOND)
    assert is_unindexed(cache, digest), "the mark of a model being written was removed"
    cache.unlink(THIRD)
    assert not is_unindexed(cache, digest), "the mark outlived every manifest of its digest"
    assert is_unindexed(cache, other), "the mark of another model was removed"
    assert [p.name for p in cache.unindexed_dir.iterdir()] == [other.filename]


def test_eviction_drops_the_mark_of_the_model_it_removes(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    digest = folder_model(cache, FIRST)
    cache.mark_lazy(FIRST)  # fetched through a mount: evictable

    async def inline(fn, *args):
        return fn(*args)

    evictor = Evictor(cache, CacheBounds(max_bytes=1, min_free_percent=None), set, inline)
    trio.run(evictor.check)
    assert evictor.evicted == [FIRST]
    assert not is_unindexed(cache, digest), "eviction left the mark of the model it removed"
