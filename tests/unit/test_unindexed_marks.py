"""The ``--no-chunk-index`` mark of a folder model's manifest (``.modelfs/unindexed/``) goes
with the last manifest of that digest, whether ``modelfs rm`` or eviction removes it; a mark
another manifest of the same digest still needs stays."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from modelfs.blobs import blobcache
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.blobs.orphans import UNKNOWN_WRITER_MARK_SECONDS, collect
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


# -- marks left behind: swept by orphans.collect ---------------------------------------------


def gone_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait(10)
    return child.pid


def left_mark(cache: BlobCache, seed: bytes, body: bytes, age_seconds: float = 0) -> Digest:
    """A mark no manifest has the digest of, as a crash or an older modelfs leaves one."""
    digest = Digest.of_bytes(seed)
    path = cache.unindexed_path(digest)
    cache.atomic_write(path, body)
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(path, (then, then))
    return digest


def test_collect_removes_marks_no_manifest_has_whose_writer_is_gone(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    kept = folder_model(cache, FIRST)  # a model in the cache: its mark stays
    cache.atomic_write(cache.unindexed_path(kept), f"{gone_pid()}\n".encode())
    crashed = left_mark(cache, b"crashed", f"{gone_pid()}\n".encode())
    older = left_mark(cache, b"older modelfs", b"", age_seconds=UNKNOWN_WRITER_MARK_SECONDS + 60)
    other_file = cache.unindexed_dir / "not-a-mark"
    other_file.write_bytes(b"")

    collect(cache)

    assert not is_unindexed(cache, crashed), (
        "the mark of a manifest no longer in the cache, whose writer is gone, was never removed"
    )
    assert not is_unindexed(cache, older), "a day-old mark of an older modelfs was never removed"
    assert is_unindexed(cache, kept), "collect removed the mark of a model still in the cache"
    assert other_file.exists(), "collect removed a file that is not a mark"
    assert sorted(p.name for p in cache.unindexed_dir.iterdir()) == sorted(
        [kept.filename, "not-a-mark"]
    )
    assert list(cache.tmp_dir.iterdir()) == [], "a mark taken aside was left in tmp/"


def test_collect_keeps_marks_of_manifests_being_written(tmp_path: Path) -> None:
    """A mark is written before its manifest (a layout's lives while its push runs): one whose
    writer runs, or an older modelfs's written less than a day ago, may be work in progress."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    in_progress = Digest.of_bytes(b"being created")
    mark_unindexed(cache, in_progress)  # this process: a create or push running
    recent = left_mark(cache, b"older modelfs, now", b"", age_seconds=60)
    other = subprocess.Popen(["sleep", "60"])  # another process's create or push
    try:
        theirs = left_mark(cache, b"theirs", f"{other.pid}\n".encode())
        collect(cache)
        assert is_unindexed(cache, theirs), "removed the mark of another process's create"
    finally:
        other.kill()
        other.wait(10)
    assert is_unindexed(cache, in_progress), "removed the mark of a create still running"
    assert is_unindexed(cache, recent), "removed a fresh mark whose writer cannot be known"
    collect(cache)
    assert not is_unindexed(cache, theirs), "the mark outlived its writer with no manifest"


def test_a_manifest_that_cannot_be_read_keeps_every_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    stale = left_mark(cache, b"crashed", f"{gone_pid()}\n".encode())
    digest = folder_model(cache, FIRST)
    broken = cache.find_manifest(FIRST)
    read = blobcache._read_manifest_file

    def disk_error(path: Path) -> bytes | None:
        if path == broken:
            raise OSError(errno.EIO, "Input/output error")
        return read(path)

    monkeypatch.setattr(blobcache, "_read_manifest_file", disk_error)
    collect(cache)
    assert is_unindexed(cache, stale), "removed a mark a manifest that cannot be read may have"
    assert is_unindexed(cache, digest)
    monkeypatch.undo()
    collect(cache)
    assert not is_unindexed(cache, stale), "the mark stayed once every manifest could be read"


def test_a_mark_written_again_while_collect_reads_the_manifests_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create of the same digest writes its mark (then its manifest) after collect read the
    old one: the new mark is not the one collect found stale."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    digest = left_mark(cache, b"created again", f"{gone_pid()}\n".encode())
    read_manifests = cache.manifest_digests

    def create_lands_meanwhile() -> frozenset[Digest] | None:
        held = read_manifests()
        cache.write_unindexed_mark(digest)  # the create's mark, its manifest still to come
        return held

    monkeypatch.setattr(cache, "manifest_digests", create_lands_meanwhile)
    collect(cache)
    assert is_unindexed(cache, digest), "removed the mark a create had just written"
    assert cache.unindexed_path(digest).read_bytes() == f"{os.getpid()}\n".encode()
    assert list(cache.tmp_dir.iterdir()) == []
