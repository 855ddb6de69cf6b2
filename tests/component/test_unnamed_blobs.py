"""What modelfs commands leave in the cache's ``blobs/`` is named by a manifest of the cache.

The cache is Ollama's (``$OLLAMA_MODELS``): ``ollama serve`` prunes blobs no manifest names,
and a user expects each file in ``blobs/`` to belong to a model ``modelfs ls`` (or
``ollama list``) shows. Blobs a command needs only to upload (a published chunk index and
its empty config, the Docker config of a GGUF model pushed under its own name) are not
left there; modelfs's own state (``.modelfs/``) stays private and out of this count.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from component.test_create_folder import skopeo_raw
from gguf_synth import write_synthetic_gguf
from support.mount import run_modelfs

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.formats.digest import Digest
from modelfs.formats.dockermodel import MEDIA_TYPE_DOCKER_MODEL_CONFIG
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import parse_name

MODEL_BYTES = 10 << 20


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unnamed-gguf") / "m.gguf"
    write_synthetic_gguf(path, MODEL_BYTES, seed=43)
    return path


async def _inline(fn, *args):  # the daemon's worker thread, here the test's own
    return fn(*args)


def unnamed_blobs(cache_dir: Path) -> list[str]:
    """Files of ``blobs/`` that no manifest of the cache (complete or pending) names."""
    cache = BlobCache(cache_dir)
    named = cache.referenced_blobs()
    left = []
    for path in sorted(cache.blobs_dir.iterdir()) if cache.blobs_dir.is_dir() else []:
        hex_ = path.name.removeprefix("sha256-")
        if not path.name.startswith("sha256-") or len(hex_) != 64 or Digest(hex_) not in named:
            left.append(path.name)
    return left


def test_index_leaves_no_blob_no_manifest_names(registry, gguf: Path, tmp_path: Path) -> None:
    name = f"{registry.host}/unnamed/indexed:plain"
    src = str(tmp_path / "src")
    run_modelfs("create", name, "--gguf", str(gguf), "--no-chunk-index", "--cache", src)
    run_modelfs("push", name, "--cache", src)
    for cache_dir in (tmp_path / "empty", tmp_path / "src"):
        result = run_modelfs("index", name, "--cache", str(cache_dir))
        assert "published a chunk index of" in result.stdout + result.stderr
        left = unnamed_blobs(cache_dir)
        assert not left, f"modelfs index left blobs no model of {cache_dir.name} names: {left}"


def test_a_folder_push_leaves_no_blob_no_manifest_names(registry, minilm, tmp_path) -> None:
    cache_dir = tmp_path / "cache"
    name = f"{registry.host}/unnamed/minilm:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--cache", str(cache_dir))
    result = run_modelfs("push", name, "--cache", str(cache_dir))
    assert "chunk index" in result.stdout + result.stderr, "no chunk index was published"
    left = unnamed_blobs(cache_dir)
    assert not left, f"the push of a folder model left blobs no model names: {left}"


def test_a_docker_push_under_its_own_name_leaves_no_config_unnamed(
    registry, gguf: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    name = f"{registry.host}/unnamed/gguf:own"
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(cache_dir))
    cache = BlobCache(cache_dir)
    created = cache.read_manifest(parse_name(name))
    result = run_modelfs("push", name, "--format", "docker", "--cache", str(cache_dir))
    assert "as a Docker model" in result.stdout + result.stderr
    assert cache.read_manifest(parse_name(name)) == created, "the cached model was changed"
    left = unnamed_blobs(cache_dir)
    assert not left, f"push --format docker left blobs no model names: {left}"
    # The registry has the config the cache no longer holds: the push put it there.
    remote = parse_manifest(skopeo_raw(registry, "unnamed/gguf", "own"))
    assert remote.config.media_type == MEDIA_TYPE_DOCKER_MODEL_CONFIG


def test_a_docker_push_under_a_new_name_keeps_the_docker_model_in_the_cache(
    registry, gguf: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    source = f"{registry.host}/unnamed/gguf:ollama"
    pushed = f"{registry.host}/unnamed/gguf:docker"
    run_modelfs("create", source, "--gguf", str(gguf), "--cache", str(cache_dir))
    run_modelfs("push", pushed, "--from", source, "--format", "docker", "--cache", str(cache_dir))
    cache = BlobCache(cache_dir)
    on_registry = skopeo_raw(registry, "unnamed/gguf", "docker")
    assert cache.read_manifest(parse_name(pushed)) == on_registry, (
        "the Docker model pushed is not in the cache under the name pushed"
    )
    assert not unnamed_blobs(cache_dir)
    config = parse_manifest(on_registry).config
    # What a daemon of this cache does at each check, the config counted as its own and the
    # cache far over its bound: the pushed model is pinned and names its config.
    evictor = Evictor(cache, CacheBounds(max_bytes=1, min_free_percent=None), set, _inline)
    evictor.published_here.add(config.digest)
    trio.run(evictor.check)
    assert evictor.evicted == []
    assert cache.has_blob(config.digest, config.size), "the pushed model's config was removed"
    assert "unnamed/gguf" in run_modelfs("ls", "--cache", str(cache_dir)).stdout


def test_no_chunk_index_marks_go_with_their_manifests(registry, minilm, tmp_path) -> None:
    """``.modelfs/unindexed/`` holds one mark per manifest of the cache created with
    ``--no-chunk-index``: none for a layout pushed and kept under no name, none after rm."""
    cache_dir = tmp_path / "cache"
    name = f"{registry.host}/unnamed/minilm-plain:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--no-chunk-index", "--cache", str(cache_dir))
    cache = BlobCache(cache_dir)
    created = parse_manifest(cache.read_manifest(parse_name(name)) or b"")
    # A mark as its manifest's digest (its file name adds who wrote it).
    marks = lambda: sorted(p.name.split(".")[0] for p in cache.unindexed_dir.iterdir())  # noqa: E731
    assert marks() == [created.digest.filename]
    result = run_modelfs("push", name, "--format", "ollama", "--cache", str(cache_dir))
    assert "chunk index" not in result.stdout + result.stderr
    assert marks() == [created.digest.filename], "the mark of a layout no manifest keeps stayed"
    run_modelfs("rm", name, "--cache", str(cache_dir))
    assert marks() == [], "rm left the mark of the model it removed"


def test_marks_left_behind_are_swept_by_the_next_command_that_prepares_the_cache(
    minilm, small_gguf, tmp_path
) -> None:
    """A mark whose manifest left without it (``ollama rm``, a modelfs before the drop, a crash
    between the two) goes at the next command that prepares the cache; a mark whose writer
    may still be at work stays."""
    cache_dir = tmp_path / "cache"
    name = "localhost:1/unnamed/minilm-removed:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--no-chunk-index", "--cache", str(cache_dir))
    cache = BlobCache(cache_dir)
    created = cache.find_manifest(parse_name(name))
    assert created is not None
    removed = Digest.of_bytes(created.read_bytes())
    created.unlink()  # as ollama rm (or an older modelfs rm) leaves it
    older = Digest.of_bytes(b"an older modelfs's mark")
    cache.atomic_write(cache.unindexed_path(older), b"")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(cache.unindexed_path(older), (two_days_ago, two_days_ago))
    recent = Digest.of_bytes(b"an older modelfs's create, now")
    cache.atomic_write(cache.unindexed_path(recent), b"")
    marks = lambda: sorted(p.name.split(".")[0] for p in cache.unindexed_dir.iterdir())  # noqa: E731
    assert marks() == sorted([removed.filename, older.filename, recent.filename])

    result = run_modelfs(
        "create",
        "localhost:1/unnamed/other:latest",
        "--gguf",
        str(small_gguf),
        "--cache",
        str(cache_dir),
    )

    assert marks() == [recent.filename], (
        "marks of manifests no longer in the cache stayed in .modelfs/unindexed/ after the "
        "next create"
    )
    assert "WARNING" not in result.stderr and "Traceback" not in result.stderr, result.stderr
