"""Bytes no model names (a model removed while a mount read it) are freed once nothing reads
them; nothing another program may still name is touched."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from modelfs.blobs import sharing
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.orphans import collect, free_unnamed
from modelfs.formats.digest import Digest
from modelfs.formats.names import parse_name

NAME = parse_name("registry.test/library/m:1")


def cache_with(tmp_path: Path) -> BlobCache:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    return cache


def blob(cache: BlobCache, data: bytes) -> Digest:
    digest = Digest.of_bytes(data)
    cache.store_bytes(data, digest)
    return digest


def partial(cache: BlobCache, data: bytes) -> Digest:
    digest = Digest.of_bytes(data)
    cache.partial_path(digest).write_bytes(data[:10])
    cache.state_path(digest).write_bytes(b"{}")
    return digest


def manifest_naming(cache: BlobCache, *digests: Digest) -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": str(digests[0]),
            "size": 2,
        },
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": str(d), "size": 20}
            for d in digests[1:]
        ],
    }
    cache.write_manifest(NAME, json.dumps(doc).encode(), pending=True)


def test_unnamed_partials_and_own_blobs_go_named_and_foreign_ones_stay(tmp_path: Path) -> None:
    cache = cache_with(tmp_path)
    named_blob, named_partial = blob(cache, b"config"), partial(cache, b"named partial" * 3)
    manifest_naming(cache, named_blob, named_partial)
    orphan_partial = partial(cache, b"orphan partial" * 3)
    ours = blob(cache, b"published here, named by none")
    foreign = blob(cache, b"ollama pull wrote me first")
    published = {ours, named_blob}

    done = collect(cache, set(), published)

    assert set(done.digests) == {orphan_partial, ours} and not done.waiting
    assert not cache.partial_path(orphan_partial).exists()
    assert not cache.state_path(orphan_partial).exists()
    assert not cache.has_blob(ours)
    assert cache.has_blob(foreign), "a blob another program wrote was removed"
    assert cache.has_blob(named_blob) and cache.partial_path(named_partial).exists()
    assert published == set(), "digests named or gone are still watched"


def test_what_is_read_or_locked_waits(tmp_path: Path) -> None:
    cache = cache_with(tmp_path)
    read, locked = partial(cache, b"still open" * 3), partial(cache, b"another process" * 3)
    fd = cache.lock_blob(locked)
    assert fd is not None
    try:
        pid = os.fork()
        if pid == 0:  # a lock held by another process, as a second mount's would be
            done = collect(cache, {read}, set())
            os._exit(0 if done.digests == () and done.waiting else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert cache.partial_path(read).exists() and cache.partial_path(locked).exists()
    assert set(collect(cache, set(), set()).digests) == {read, locked}


def test_a_manifest_that_does_not_parse_keeps_what_it_mentions(tmp_path: Path) -> None:
    cache = cache_with(tmp_path)
    mentioned, other = partial(cache, b"mentioned" * 4), partial(cache, b"not mentioned" * 4)
    # Not a manifest modelfs reads, but Ollama (or a newer modelfs) may: fail closed.
    cache.write_manifest(NAME, f'{{"future": "{mentioned}"'.encode(), pending=True)
    assert collect(cache, set(), set()).digests == (other,)
    assert cache.partial_path(mentioned).exists()


async def test_a_blob_published_while_orphans_are_collected_neither_fails_it_nor_is_forgotten(
    tmp_path: Path,
) -> None:
    """The daemon adds each blob it publishes (trio thread) to the set the collection reads and
    trims in a worker thread: "Set changed size during iteration" stopped eviction (an ERROR
    in the mount's log), and a blob published meanwhile must still be watched afterwards."""
    from modelfs.blobs.eviction import CacheBounds, Evictor

    cache = cache_with(tmp_path)
    ours = blob(cache, b"published here, named by none")
    named = blob(cache, b"config")
    manifest_naming(cache, named, named)
    meanwhile = Digest.of_bytes(b"published while the collection ran")

    async def inline(fn, *args):  # the worker thread, with the publish landing mid-iteration
        return fn(*args)

    evictor = Evictor(cache, CacheBounds(1 << 40, 0, None), set, inline)
    evictor.published_here.update({ours, named})
    has_blob = cache.has_blob

    def has_blob_while_publishing(digest: Digest, *rest: object) -> bool:
        evictor.published_here.add(meanwhile)
        return has_blob(digest, *rest)

    cache.has_blob = has_blob_while_publishing  # type: ignore[method-assign]
    await evictor.check()
    assert not cache.blob_path(ours).exists(), "the orphan was not freed"
    assert evictor.published_here == {meanwhile}


# -- one set of rules: what the eviction check and a cache's start both free --------------------


def test_a_scratch_file_of_a_process_gone_is_freed_and_a_running_ones_kept(tmp_path: Path) -> None:
    """Eviction's collection listed a dead process's scratch file as freed but left it: only
    the (separate) start-up sweep removed it."""
    cache = cache_with(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait(10)
    dead, live = Digest.of_bytes(b"dead scratch"), Digest.of_bytes(b"live scratch")
    dead_file = cache.partial_dir / f"{dead.filename}.{gone.pid}-1.scratch"
    dead_file.write_bytes(b"x" * 8192)
    live_file = cache.partial_dir / f"{live.filename}.{os.getpid()}-1.scratch"
    live_file.write_bytes(b"y")

    done = collect(cache, set(), set())

    assert not dead_file.exists(), "a scratch file of a process gone is still in partial/"
    assert done.freed_bytes >= 8192
    assert live_file.exists(), "removed a running process's scratch file"
    assert live not in done.digests and done.waiting


def test_the_partial_of_a_blob_already_complete_is_freed_though_its_model_names_it(
    tmp_path: Path,
) -> None:
    """A process killed between publishing a blob and closing its partial leaves its state and
    lock file: the start-up sweep freed them, eviction's collection kept them for good."""
    cache = cache_with(tmp_path)
    config, layer = blob(cache, b"config"), blob(cache, b"complete layer" * 3)
    manifest_naming(cache, config, layer)
    cache.state_path(layer).write_bytes(b"{}")
    cache.lock_path(layer).write_bytes(b"")

    done = collect(cache, set(), set())

    assert done.digests == (layer,)
    assert not cache.state_path(layer).exists() and not cache.lock_path(layer).exists()
    assert cache.has_blob(layer), "the complete blob a model names was removed"


def test_a_small_blob_another_process_fetches_keeps_its_claim(tmp_path: Path) -> None:
    """A small blob being fetched whole by another process has only a lock file (its claim):
    unlinking it let a third process claim the same blob and fetch it again."""
    cache = cache_with(tmp_path)
    digest = Digest.of_bytes(b"a small blob no manifest names yet")
    claim = sharing.claim_small(cache.lock_path(digest))
    assert claim is not None
    try:
        done = collect(cache, set(), set())
        assert done.digests == () and done.waiting
        assert cache.lock_path(digest).exists(), "the claim of a fetch in progress was unlinked"
        assert sharing.claim_small(cache.lock_path(digest)) is None
    finally:
        sharing.release_small(claim, cache.lock_path(digest), remove=True)
    assert collect(cache, set(), set()).digests == ()
    assert not cache.lock_path(digest).exists()


async def test_a_cache_without_record_locks_keeps_its_partials_and_still_evicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem without record locks (whether another process uses a partial cannot
    be known) the collection raised, so each eviction check ended in a WARNING before it
    evicted anything: the cache grew past its bound."""
    from modelfs.blobs import blobcache
    from modelfs.blobs.eviction import CacheBounds, Evictor

    cache = cache_with(tmp_path)
    orphan = partial(cache, b"no manifest names me" * 3)
    config, layer = blob(cache, b"config"), blob(cache, b"a layer of a lazy model" * 100)
    manifest_naming(cache, config, layer)
    raw = cache.read_manifest(NAME, pending=True)
    assert raw is not None
    cache.write_manifest(NAME, raw)
    cache.mark_lazy(NAME)

    def no_record_locks(fd: int) -> bool:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(blobcache, "lock_exclusive", no_record_locks)

    async def inline(fn, *args):
        return fn(*args)

    evictor = Evictor(cache, CacheBounds(max_bytes=1, min_free_percent=None), set, inline)
    await evictor.check()

    assert evictor.evicted == [NAME], "the cache over its bound evicted nothing"
    assert cache.partial_path(orphan).exists(), "removed a partial no lock could vouch for"


def test_free_unnamed_frees_only_the_given_blobs_no_manifest_names_nor_process_uses(
    tmp_path: Path,
) -> None:
    """After an upload: the blobs written only to upload go, unless a manifest names one
    (another process may have written a model naming it meanwhile) or another modelfs
    process uses it; a blob not given is never touched, whoever wrote it."""
    cache = BlobCache(tmp_path / "cache")  # push does not prepare the cache: no partial/
    cache.private_mkdir(cache.tmp_dir)
    early = blob(cache, b"uploaded before partial/ existed")
    assert free_unnamed(cache, {early}).digests == (early,)
    assert not cache.has_blob(early)
    ours, named, used, foreign = (
        blob(cache, data) for data in (b"ours", b"named since", b"used", b"foreign")
    )
    manifest_naming(cache, named)
    fd = cache.lock_blob(used)  # as another modelfs process using the blob holds it
    assert fd is not None
    try:
        pid = os.fork()
        if pid == 0:
            done = free_unnamed(cache, {ours, named, used})
            os._exit(0 if done.digests == (ours,) and done.waiting else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "freed other blobs than the one given"
    finally:
        os.close(fd)
    assert not cache.has_blob(ours), "the blob written only to upload was left in blobs/"
    for kept in (named, used, foreign):
        assert cache.has_blob(kept), f"blob {kept.short} removed"
