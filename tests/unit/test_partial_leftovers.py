"""Nothing of a blob outlives it in ``partial/`` (issue: security).

Lock files go when their blob is published or removed (a locked unlink; a process joining
checks the path still names the file it locked); a partial another process held while its
model was removed is counted (``modelfs du``) and removed once let go; scratch files of
processes gone are removed.
"""

from __future__ import annotations

import os
import subprocess

import trio
from support.hostile import build_manifest
from unit import test_blob_layer as blob_layer_tests
from unit.test_blob_layer import (
    CB,
    NAME,
    SIZE,
    blob_layer,
    index_of,
    layer_of,
    published,
    read,
    serving,
)

from modelfs.blobs import orphans, sharing
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.partial import PartialFile
from modelfs.commands.inventory import unnamed_partial_bytes
from modelfs.formats.manifest import MEDIA_TYPE_MODEL

data = blob_layer_tests.data
cache = blob_layer_tests.cache


def leftovers(cache: BlobCache) -> list[str]:
    return sorted(os.listdir(cache.partial_dir))


async def test_lock_files_go_when_their_blob_is_published(cache: BlobCache, data: bytes) -> None:
    source, layer = serving(data)
    small = os.urandom(CB // 2)
    small_layer = layer_of(small)
    source.put(NAME, small)
    async with blob_layer(cache, source) as (_fa, a), blob_layer(cache, source) as (_fb, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, a, NAME, layer, index_of(data), CB)
            nursery.start_soon(read, b, NAME, layer, index_of(data), CB)
            nursery.start_soon(read, a, NAME, small_layer, None, CB)
        await published(cache, layer)
    assert cache.has_blob(small_layer.digest)
    assert leftovers(cache) == [], "files of published blobs left in partial/"


async def test_a_partial_in_use_during_unlink_is_accounted_and_removed_once_let_go(
    cache: BlobCache, data: bytes
) -> None:
    layer = layer_of(data)
    raw = build_manifest(b"{}", [(MEDIA_TYPE_MODEL, str(layer.digest), layer.size)])
    cache.write_manifest(NAME, raw, pending=True)
    # Another process fills the partial and keeps it open while the model is removed.
    other = PartialFile(cache, layer.digest, index_of(data).layout, True, shared=True)
    other.open()
    other.write(0, data[:CB])
    other.mark(0)
    other.save_state(bytes(other.present))
    try:
        cache.unlink(NAME)
        assert cache.partial_path(layer.digest).exists(), "removed a partial another process uses"
        assert unnamed_partial_bytes(cache) >= CB, "the partial no model names is not counted"
        assert orphans.collect(cache).freed_bytes == 0
    finally:
        other.close()
    assert orphans.collect(cache).freed_bytes > 0
    assert leftovers(cache) == []
    assert unnamed_partial_bytes(cache) == 0


def test_a_scratch_file_of_a_process_gone_is_swept(cache: BlobCache) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait(10)
    pid = gone.pid  # a process that has exited
    scratch = cache.partial_dir / f"sha256-{'ab' * 32}.{pid}-1.scratch"
    scratch.write_bytes(b"x" * 4096)
    mine = cache.partial_dir / f"sha256-{'ab' * 32}.{os.getpid()}-1.scratch"
    mine.write_bytes(b"x")
    orphans.collect(cache)
    assert not scratch.exists()
    assert mine.exists(), "removed a live process's scratch file"


def test_joining_a_lock_file_unlinked_meanwhile_joins_the_new_one(cache: BlobCache) -> None:
    digest = layer_of(b"z" * SIZE).digest
    path = cache.lock_path(digest)
    a = sharing.SharedPartial.join(path, "key", 3)
    assert a is not None and a.first
    a.joined()
    # The blob is published: the only member unlinks the lock file as it leaves.
    a.close(path)
    assert not path.exists()
    b = sharing.SharedPartial.join(path, "key", 3)
    assert b is not None and b.first
    b.joined()
    try:
        assert path.exists() and os.fstat(b.fd).st_ino == os.stat(path).st_ino
        # A member leaving while another still uses the file leaves it in place.
        c = sharing.SharedPartial.join(path, "key", 3)
        assert c is not None and not c.first
        c.close(path)
        assert path.exists(), "a member unlinked the lock file another process uses"
    finally:
        b.close()
