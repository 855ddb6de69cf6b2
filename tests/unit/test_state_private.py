"""modelfs's own state (``.modelfs/``) is private to the cache's owner, whatever the umask.

Another local user who can open a blob's lock file can hold its locks (issue: security);
one who can read the partials, chunk states and indexes learns which models are fetched.
Ollama's ``blobs/`` and ``manifests/`` keep their modes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit import test_blob_layer as blob_layer_tests
from unit.test_blob_layer import CB, NAME, blob_layer, index_of, published, read, serving

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.sharing import claim_small
from modelfs.formats.digest import Digest

data = blob_layer_tests.data


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes_under(root: Path) -> dict[str, int]:
    out = {}
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(top) / n
            out[str(p.relative_to(root))] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


def assert_private(root: Path) -> None:
    state = root / ".modelfs"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    modes = modes_under(state)
    assert modes, "nothing was written under .modelfs"
    opened = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not opened, f"modelfs state other users can open: {opened}"


async def test_state_is_created_private_under_a_umask_of_0(
    tmp_path: Path, data: bytes, open_umask: None
) -> None:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    source, layer = serving(data)
    async with blob_layer(cache, source) as (_fetcher, blobs):
        assert await read(blobs, NAME, layer, None, CB) == data
        await published(cache, layer)
        # A partial left open, with its state and lock file, and a small blob's claim.
        other = os.urandom(3 * CB)
        source.put(NAME, other)
        small = claim_small(cache.lock_path(Digest("ee" * 32)))
        assert small is not None
        try:
            async with blob_layer(cache, source, read_wait_seconds=5.0) as (_f, blobs2):
                _s, other_layer = serving(other)
                handle = await blob_layer_tests.open_blob(
                    blobs2, NAME, other_layer, index_of(other)
                )
                assert await handle.read(0, 10) == other[:10]
                assert_private(cache.root)
                await handle.close()
        finally:
            os.close(small)
    cache.mark_lazy(NAME)
    assert_private(cache.root)
    # Ollama's layout keeps Ollama's modes: blobs 0444, manifests as the umask lets them.
    blob = cache.blob_path(layer.digest)
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert stat.S_IMODE(cache.blobs_dir.stat().st_mode) & 0o005 == 0o005


def test_an_existing_cache_is_tightened_when_prepared(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    partial = root / ".modelfs" / "partial"
    partial.mkdir(parents=True)
    for d in (root / ".modelfs", partial):
        d.chmod(0o755)
    lock = partial / f"sha256-{'ab' * 32}.lock"
    lock.write_bytes(b"\0" * 4100)
    lock.chmod(0o644)
    (root / ".modelfs" / "modelfs.log").write_text("mounted\n")
    (root / ".modelfs" / "modelfs.log").chmod(0o644)
    lazy = root / ".modelfs" / "lazy" / "host" / "ns" / "m"
    lazy.mkdir(parents=True, mode=0o755)
    (lazy / "tag").touch(mode=0o666)
    (root / "blobs").mkdir(mode=0o755)
    (root / "blobs").chmod(0o755)
    BlobCache(root).prepare()
    assert_private(root)
    assert stat.S_IMODE((root / "blobs").stat().st_mode) == 0o755, "blobs/ lost Ollama's mode"
