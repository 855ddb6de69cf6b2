"""Bytes no model names (a model removed while a mount read it) are freed once nothing reads
them; nothing another program may still name is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.orphans import collect
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
