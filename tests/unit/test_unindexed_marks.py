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
from modelfs.blobs.orphans import collect
from modelfs.blobs.unindexed import UNKNOWN_WRITER_MARK_SECONDS
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


def marked(cache: BlobCache) -> list[str]:
    """The file names of what ``unindexed/`` holds, a mark's as its digest's (``sha256-<hex>``)."""
    return sorted(p.name.split(".")[0] for p in cache.unindexed_dir.iterdir())


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
    assert marked(cache) == [other.filename]


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
    assert marked(cache) == sorted([kept.filename, kept.filename, "not-a-mark"])
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


def test_an_older_modelfs_mark_written_again_while_collect_reads_the_manifests_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older modelfs's create of the same digest writes its mark again, in place (then its
    manifest), after collect read the old one: the new mark is not the one collect found
    stale."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    digest = left_mark(cache, b"created again", f"{gone_pid()}\n".encode())
    read_manifests = cache.manifest_digests

    def create_lands_meanwhile() -> frozenset[Digest] | None:
        held = read_manifests()
        # The older create's mark, its manifest still to come.
        cache.atomic_write(cache.unindexed_path(digest), f"{os.getpid()}\n".encode())
        return held

    monkeypatch.setattr(cache, "manifest_digests", create_lands_meanwhile)
    collect(cache)
    assert is_unindexed(cache, digest), "removed the mark a create had just written"
    assert cache.unindexed_path(digest).read_bytes() == f"{os.getpid()}\n".encode()
    assert list(cache.tmp_dir.iterdir()) == []


# -- a create of the same manifest while rm removes it -----------------------------------------


@pytest.mark.parametrize("when", ["before the drop looks", "while the drop reads the manifests"])
def test_rm_keeps_the_mark_a_concurrent_create_of_the_same_manifest_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """rm of a folder model and a create (another process, or another task) of the same
    manifest under another name: the create writes its mark, then its manifest. rm, which
    found no manifest of that digest left, removed the mark the create had just written: the
    new model then lost its --no-chunk-index mark (push would publish a chunk index beside
    it). A mark goes only by its owner, or once its writer is gone or its manifest landed."""
    remover = BlobCache(tmp_path / "cache")
    remover.prepare()
    creator = BlobCache(tmp_path / "cache")
    digest = folder_model(remover, FIRST)
    raw = remover.read_manifest(FIRST)
    assert raw is not None

    def create_writes_its_mark() -> None:
        mark_unindexed(creator, digest)  # the create's mark; its manifest comes after rm

    if when == "before the drop looks":
        # The manifest of FIRST is gone, its mark not dropped yet.
        unmark = remover.unmark_lazy

        def unmark_then_create(name):
            unmark(name)
            create_writes_its_mark()

        monkeypatch.setattr(remover, "unmark_lazy", unmark_then_create)
    else:
        read_manifests = remover.manifest_digests

        def create_meanwhile() -> frozenset[Digest] | None:
            held = read_manifests()
            create_writes_its_mark()
            return held

        monkeypatch.setattr(remover, "manifest_digests", create_meanwhile)
    remover.unlink(FIRST)
    monkeypatch.undo()

    assert is_unindexed(creator, digest), "rm removed the mark of a create of the same manifest"
    creator.write_manifest(SECOND, raw)  # the create's manifest lands
    collect(remover)
    assert is_unindexed(remover, digest), "collect removed the mark of a model in the cache"
    assert marked(remover) == [digest.filename], "the removed model's own mark stayed"
    remover.unlink(SECOND)
    assert not is_unindexed(remover, digest), "the mark outlived the create's model"
    assert marked(remover) == []


def test_a_mark_being_written_goes_only_by_its_owner_while_its_writer_runs(
    tmp_path: Path,
) -> None:
    """A mark whose manifest is still to come (a push's layout, kept under no name, while the
    push runs) stays through rm, collect and the drop of another BlobCache of the same process;
    its own BlobCache's drop removes it."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    pushing = BlobCache(tmp_path / "cache")
    layout = Digest.of_bytes(b"a layout being pushed")
    mark_unindexed(pushing, layout)
    collect(cache)
    cache.drop_unindexed_mark(layout)
    assert is_unindexed(cache, layout), "removed a mark its writer, still running, owns"
    pushing.drop_unindexed_mark(layout)  # the push ends, the layout kept under no name
    assert not is_unindexed(cache, layout), "the push left the mark of its layout behind"


def test_a_mark_whose_writer_died_before_its_manifest_goes(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    digest = Digest.of_bytes(b"a create killed before its manifest")
    dead = cache.unindexed_dir / f"{digest.filename}.{'ab' * 8}.{gone_pid()}"
    cache.atomic_write(dead, b"")
    assert is_unindexed(cache, digest)
    collect(cache)
    assert not is_unindexed(cache, digest), "the mark of a create killed before its manifest"
