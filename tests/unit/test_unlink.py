"""unlink (and eviction) fail closed: a blob a cached manifest we cannot parse or read may still
name is never deleted, and the user is told which manifest kept how many blobs."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from support.mount import run_modelfs

from modelfs.blobs import blobcache
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_SYSTEM,
    Layer,
    build_manifest,
)
from modelfs.formats.names import parse_name

A = parse_name("h/library/a:1")
B = parse_name("h/library/b:1")


def _blob(cache: BlobCache, data: bytes, media_type: str) -> Layer:
    digest = Digest.of_bytes(data)
    cache.store_bytes(data, digest)
    return Layer(digest, media_type, len(data))


def _model(cache: BlobCache, name, shared: Layer, tag: str) -> tuple[Layer, ...]:
    """A model of three blobs: the shared weights, and a config and system prompt of its own."""
    config = _blob(cache, f'{{"model":"{tag}"}}'.encode(), MEDIA_TYPE_DOCKER_CONFIG)
    system = _blob(cache, f"system prompt of {tag}".encode(), MEDIA_TYPE_SYSTEM)
    cache.write_manifest(name, build_manifest(config, [shared, system]))
    return config, system


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[BlobCache, Layer, tuple[Layer, ...], tuple[Layer, ...]]:
    """Models a and b sharing one weights blob, in a real cache under tmp_path."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    shared = _blob(cache, b"GGUF weights both models use" * 100, MEDIA_TYPE_MODEL)
    own_a = _model(cache, A, shared, "a")
    own_b = _model(cache, B, shared, "b")
    return cache, shared, own_a, own_b


def _present(cache: BlobCache, *layers: Layer) -> list[bool]:
    return [cache.has_blob(layer.digest) for layer in layers]


def _move_to_pending(cache: BlobCache, name) -> Path:
    raw = cache.read_manifest(name)
    assert raw is not None
    cache.remove_manifest(name)
    cache.write_manifest(name, raw, pending=True)
    path = cache.find_manifest(name, pending=True)
    assert path is not None
    return path


@pytest.mark.parametrize("pending", [False, True], ids=["complete", "pending"])
def test_a_corrupted_manifest_keeps_the_blobs_it_names(two_models, pending):
    cache, shared, own_a, own_b = two_models
    path = _move_to_pending(cache, B) if pending else cache.find_manifest(B)
    assert path is not None
    # Cut short, as a crash mid-write would leave it: no longer JSON, every digest still there.
    path.write_bytes(path.read_bytes()[:-3])

    result = cache.unlink(A)

    assert _present(cache, shared) == [True], "unlink deleted a blob another model still names"
    assert _present(cache, *own_a) == [False, False], "a's own blobs were not removed"
    assert _present(cache, *own_b) == [True, True]
    assert sorted(result.removed) == sorted(layer.digest for layer in own_a)
    assert cache.find_manifest(A) is None
    [kept] = result.kept
    assert kept.manifest.path == path
    assert kept.blobs == (shared.digest,)
    assert str(kept) == (
        f"kept 1 blob: the manifest {path} cannot be parsed "
        "(not JSON (JSONDecodeError)) and names it"
    )


def test_a_corrupted_manifest_naming_none_of_the_blobs_keeps_nothing(two_models):
    cache, shared, own_a, _own_b = two_models
    path = cache.find_manifest(B)
    assert path is not None
    path.write_bytes(b"\x00garbage without a digest\xff")

    result = cache.unlink(A)

    assert _present(cache, shared, *own_a) == [False, False, False]
    assert result.kept == ()


def test_digests_are_found_in_either_spelling_and_past_the_size_limit(two_models):
    cache, shared, own_a, _own_b = two_models
    path = cache.find_manifest(B)
    assert path is not None
    config, system = own_a
    # Not a manifest at all: bigger than any manifest may be, digests far into it, and one
    # straddling the 1 MiB reads the scan makes.
    junk = bytearray(b"x" * (MAX_MANIFEST_BYTES + 3 * blobcache.SCAN_READ_BYTES))
    straddle = MAX_MANIFEST_BYTES + blobcache.SCAN_READ_BYTES + 1 - 20
    junk[straddle : straddle + 71] = f"sha256:{config.digest.hex}".encode()
    tail = f"blobs/sha256-{system.digest.hex.upper()}"
    path.write_bytes(bytes(junk) + tail.encode())

    result = cache.unlink(A)

    assert _present(cache, *own_a) == [True, True]
    assert _present(cache, shared) == [False]
    [kept] = result.kept
    assert sorted(kept.blobs) == sorted([config.digest, system.digest])
    assert "byte limit" in kept.manifest.reason


def _fail_reading(monkeypatch: pytest.MonkeyPatch, broken: Path, err: int) -> None:
    real = blobcache.manifest_file_refs

    def refs(path: Path):
        if path == broken:
            raise OSError(err, os.strerror(err), str(path))
        return real(path)

    monkeypatch.setattr(blobcache, "manifest_file_refs", refs)


@pytest.mark.parametrize("err", [errno.EIO, errno.EACCES])
def test_an_unreadable_manifest_keeps_every_blob(two_models, monkeypatch, err):
    cache, shared, own_a, own_b = two_models
    broken = cache.find_manifest(B)
    assert broken is not None
    _fail_reading(monkeypatch, broken, err)

    result = cache.unlink(A)

    assert _present(cache, shared, *own_a, *own_b) == [True] * 5, (
        "unlink deleted blobs although a manifest it could not read may name them"
    )
    assert cache.find_manifest(A) is None, "the model's own manifest must still go"
    assert result.removed == ()
    [kept] = result.kept
    assert sorted(kept.blobs) == sorted(layer.digest for layer in (shared, *own_a))
    assert str(kept) == (
        f"kept 3 blobs: the manifest {broken} cannot be read ({os.strerror(err)}) and may name them"
    )


def test_an_unlistable_manifest_directory_keeps_every_blob(two_models, monkeypatch):
    cache, shared, own_a, _own_b = two_models
    unlistable = cache.manifests_dir / "h" / "library" / "b"
    real = os.scandir

    def scandir(path):
        if Path(path) == unlistable:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(blobcache.os, "scandir", scandir)
    result = cache.unlink(A)
    monkeypatch.undo()

    assert _present(cache, shared, *own_a) == [True] * 3
    [kept] = result.kept
    assert str(kept).startswith(f"kept 3 blobs: the manifests in {unlistable} cannot be listed")


def test_a_readable_manifest_still_wins_over_a_corrupted_one(two_models, tmp_path):
    """A blob a parsable manifest names was kept anyway: it is not reported as kept for the
    corrupted one."""
    cache, shared, own_a, _own_b = two_models
    c = parse_name("h/library/c:1")
    _model(cache, c, shared, "c")
    path = cache.find_manifest(B)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-3])

    result = cache.unlink(A)

    assert _present(cache, shared) == [True]
    assert _present(cache, *own_a) == [False, False]
    assert result.kept == ()


# -- eviction goes through the same unlink -------------------------------------------------------


def _evictor(cache: BlobCache) -> Evictor:
    # Any blob at all is over a bound of 0 bytes.
    bounds = CacheBounds(max_bytes=0, min_free_percent=None)
    return Evictor(cache, bounds, in_use=set, in_thread=None)  # type: ignore[arg-type]


def test_eviction_keeps_blobs_a_corrupted_manifest_names(two_models, caplog):
    cache, shared, own_a, _own_b = two_models
    cache.mark_lazy(A)
    path = cache.find_manifest(B)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-3])

    with caplog.at_level(logging.WARNING, logger="modelfs.blobs.eviction"):
        evicted = _evictor(cache)._evict(set())

    assert evicted == [A]
    assert _present(cache, shared) == [True], "eviction deleted a blob another model names"
    assert _present(cache, *own_a) == [False, False]
    assert [r.getMessage() for r in caplog.records] == [
        f"evicting {A}: kept 1 blob: the manifest {path} cannot be parsed "
        "(not JSON (JSONDecodeError)) and names it"
    ]


def test_eviction_stops_while_a_manifest_cannot_be_read(two_models, monkeypatch, caplog):
    cache, shared, own_a, _own_b = two_models
    cache.mark_lazy(A)
    broken = cache.find_manifest(B)
    assert broken is not None
    _fail_reading(monkeypatch, broken, errno.EIO)
    evictor = _evictor(cache)

    with caplog.at_level(logging.WARNING, logger="modelfs.blobs.eviction"):
        assert evictor._evict(set()) == []
        assert evictor._evict(set()) == []

    assert cache.find_manifest(A) is not None, "eviction dropped a model and freed nothing"
    assert _present(cache, shared, *own_a) == [True] * 3
    # Said once, not at every check.
    [record] = caplog.records
    assert str(broken) in record.getMessage() and "Input/output error" in record.getMessage()


# -- the command ---------------------------------------------------------------------------------


def test_unlink_command_keeps_blobs_of_a_corrupted_manifest_and_says_so(tmp_path, small_gguf):
    cache = tmp_path / "cache"
    for name, system in (("h/library/a:1", "one"), ("h/library/b:1", "two")):
        run_modelfs(
            "create", name, "--gguf", str(small_gguf), "--system", system, "--cache", str(cache)
        )
    b_manifest = cache / "manifests" / "h" / "library" / "b" / "1"
    b_manifest.write_bytes(b_manifest.read_bytes()[:-3])
    before = set(os.listdir(cache / "blobs"))

    r = run_modelfs("unlink", "h/library/a:1", "--cache", str(cache), check=False)

    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith("deleted h/library/a:1 (2 blobs, "), r.stdout
    # The weights and their chunk index are shared with b; only a's system prompt and config go.
    assert len(before - set(os.listdir(cache / "blobs"))) == 2
    assert r.stderr.splitlines() == [
        f"kept 2 blobs: the manifest {b_manifest} cannot be parsed "
        "(not JSON (JSONDecodeError)) and names them"
    ]
    assert not (cache / "manifests" / "h" / "library" / "a").exists()
