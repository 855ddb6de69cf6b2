"""What modelfs commands leave in the cache's ``blobs/`` is named by a manifest of the cache.

The cache is Ollama's (``$OLLAMA_MODELS``): ``ollama serve`` prunes blobs no manifest names,
and a user expects each file in ``blobs/`` to belong to a model ``modelfs ls`` (or
``ollama list``) shows. Blobs a command needs only to upload (a published chunk index and
its empty config, the Docker config of a GGUF model pushed under its own name) are not
left there; modelfs's own state (``.modelfs/``) stays private and out of this count.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from support.mount import run_modelfs

from modelfs.blobs.blobcache import BlobCache
from modelfs.formats.digest import Digest

MODEL_BYTES = 10 << 20


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unnamed-gguf") / "m.gguf"
    write_synthetic_gguf(path, MODEL_BYTES, seed=43)
    return path


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
