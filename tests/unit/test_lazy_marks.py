"""The mark of a model the mount fetched (``.modelfs/lazy/``) goes with the orphan sweep once
the model's manifest left the cache outside modelfs (``ollama rm``, a manifest file deleted),
never while a mount is about to write that manifest: left, it made a model pulled again
under that name by another program evictable."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
import trio

from modelfs.blobs import orphans
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.blobs.orphans import LAZY_MARK_GRACE_SECONDS, collect
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name, parse_name

GONE = parse_name("registry.test/library/Removed:1")
COMPLETE = parse_name("registry.test/library/Complete:1")
PENDING = parse_name("registry.test/library/pending:1")


def mark_path(cache: BlobCache, name: Name) -> Path:
    return cache.lazy_dir.joinpath(*(p.lower() for p in name.parts))


def used_long_ago(cache: BlobCache, *names: Name) -> None:
    """Marks of ``names``, last used (touched) longer ago than the grace period."""
    then = time.time() - LAZY_MARK_GRACE_SECONDS - 60
    for name in names:
        cache.mark_lazy(name)
        os.utime(mark_path(cache, name), (then, then))


def model_manifest(cache: BlobCache, seed: bytes) -> bytes:
    config, layer = b"{}", seed * 10
    for data in (config, layer):
        cache.store_bytes(data, Digest.of_bytes(data))
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": str(Digest.of_bytes(config)),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": str(Digest.of_bytes(layer)),
                "size": len(layer),
            }
        ],
    }
    return json.dumps(doc).encode()


def lazy_names(cache: BlobCache) -> list[str]:
    return sorted(str(n) for _t, n in cache.lazy_models())


def names(*of: Name) -> list[str]:
    """As ``lazy_names`` has them: a mark's path is the name lowercased."""
    return sorted(str(n).lower() for n in of)


def test_the_mark_of_a_model_removed_outside_modelfs_goes_with_the_sweep(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    raw = model_manifest(cache, b"weights")
    for name in (GONE, COMPLETE):
        cache.write_manifest(name, raw)
    cache.write_manifest(PENDING, raw, pending=True)  # being fetched through a mount
    used_long_ago(cache, GONE, COMPLETE, PENDING)
    manifest = cache.find_manifest(GONE)
    assert manifest is not None
    manifest.unlink()  # as ollama rm, or a user, removes it

    collect(cache)

    assert lazy_names(cache) == names(COMPLETE, PENDING), (
        "the mark of a model whose manifest left the cache outside modelfs stayed (a model "
        "pulled again under that name would be evictable), or another model's mark went"
    )
    assert list(cache.tmp_dir.iterdir()) == [], "a mark taken aside was left in tmp/"


def test_a_fresh_mark_without_its_manifest_yet_stays(tmp_path: Path) -> None:
    """A mount touches the mark just before it writes the manifest: a mark used within the
    grace period may have its manifest still to come."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    cache.mark_lazy(GONE)
    collect(cache)
    assert lazy_names(cache) == names(GONE), "removed a mark whose manifest may be still to come"


def test_a_mark_touched_while_the_sweep_judges_it_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount uses the model again (touches its mark, then writes its manifest) after the
    sweep found the mark old and no manifest of it: the mark is put back."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    raw = model_manifest(cache, b"weights")
    used_long_ago(cache, GONE)
    has_manifest = orphans._has_manifest

    def mount_completes_it_meanwhile(c: BlobCache, name: Name) -> bool | None:
        found = has_manifest(c, name)
        cache.mark_lazy(GONE)  # as completion: the mark first, then the manifest
        cache.write_manifest(GONE, raw)
        return found

    monkeypatch.setattr(orphans, "_has_manifest", mount_completes_it_meanwhile)
    collect(cache)
    assert lazy_names(cache) == names(GONE), (
        "the sweep removed the mark of a model a mount had just completed: pinned for ever"
    )
    assert list(cache.tmp_dir.iterdir()) == []


def test_a_manifest_directory_that_cannot_be_listed_keeps_the_marks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    cache.write_manifest(COMPLETE, model_manifest(cache, b"weights"))
    used_long_ago(cache, GONE)
    listdir = os.listdir
    host = cache.manifests_dir / "registry.test"

    def unreadable(path):
        if Path(path) == host:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return listdir(path)

    monkeypatch.setattr(orphans.os, "listdir", unreadable)
    collect(cache)
    monkeypatch.undo()
    assert lazy_names(cache) == names(GONE), "removed a mark whose manifest may be there"


def test_eviction_leaves_a_mark_written_just_before_its_manifest(tmp_path: Path) -> None:
    """Eviction dropped every mark it found no manifest for: a mount (another process) that
    marked a model and was writing its manifest lost the mark, and the model was pinned."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    raw = model_manifest(cache, b"weights")  # its blobs are in: the cache is over its bound
    cache.mark_lazy(GONE)  # a mount's completion: the mark, then the manifest

    async def inline(fn, *args):
        return fn(*args)

    evictor = Evictor(cache, CacheBounds(max_bytes=1, min_free_percent=None), set, inline)
    trio.run(evictor.check)
    cache.write_manifest(GONE, raw)
    assert lazy_names(cache) == names(GONE), "eviction removed the mark of a model being written"
    trio.run(evictor.check)
    assert [str(n).lower() for n in evictor.evicted] == names(GONE), (
        "the model the mount fetched was never evictable"
    )
