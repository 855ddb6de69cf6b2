"""``modelfs index``: a chunk index published beside a model it does not change.

Against docker-registry 2.8 (no referrers API: the referrers tag schema) and the Ollama
look-alike with the referrers API switched on. The mount finds the index when it
resolves the manifest and reads the model lazily, verified chunk by chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from mount.test_mount import model_records
from support.mount import run_modelfs, sha256_path
from support.ollama_front import CDN, OllamaFront
from support.proxy import Proxy
from support.registry import RegistryProcess

from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.referrers import MEDIA_TYPE_OCI_INDEX

MODEL_BYTES = 24 << 20


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("published-gguf") / "m.gguf"
    write_synthetic_gguf(path, MODEL_BYTES, seed=41)
    return path


def push_plain(host: str, repo_tag: str, gguf: Path, work: Path, env=None) -> str:
    """``gguf`` pushed without a chunk index (Ollama's layout) as ``host/repo_tag``."""
    name = f"{host}/{repo_tag}"
    cache = str(work / "src")
    run_modelfs("create", name, "--gguf", str(gguf), "--no-chunk-index", "--cache", cache, env=env)
    run_modelfs("push", name, "--cache", cache, env=env)
    return name


def test_an_index_published_without_a_referrers_api_is_found_through_the_tag_schema(
    registry: RegistryProcess, proxy: Proxy, mount_factory, gguf: Path, tmp_path: Path
) -> None:
    name = push_plain(registry.host, "library/published:24m", gguf, tmp_path)
    manifest_before = urllib.request.urlopen(
        urllib.request.Request(
            f"{registry.url}/v2/library/published/manifests/24m",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    ).read()
    result = run_modelfs("index", name, "--cache", str(tmp_path / "empty"))
    assert "published a chunk index of" in result.stderr + result.stdout
    manifest_after = urllib.request.urlopen(
        urllib.request.Request(
            f"{registry.url}/v2/library/published/manifests/24m",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
    ).read()
    assert manifest_after == manifest_before, "indexing changed the model's manifest"
    subject = hashlib.sha256(manifest_before).hexdigest()
    listed = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                f"{registry.url}/v2/library/published/manifests/sha256-{subject}",
                headers={"Accept": MEDIA_TYPE_OCI_INDEX},
            )
        ).read()
    )
    assert [m["artifactType"] for m in listed["manifests"]] == [
        "application/vnd.modelfs.chunks.v1+json"
    ]

    proxy.reset()
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "library" / "published" / "24m"
    assert os.getxattr(tag / "model.gguf", "user.modelfs.verify") == b"published-index"
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with open(tag / "model.gguf", "rb") as f:
        assert os.pread(f.fileno(), 4096, 13 << 20) == data[13 << 20 : (13 << 20) + 4096]
    fetched = sum(r.body_bytes for r in model_records(proxy, digest))
    assert fetched == CHUNK_BYTES, f"one page fetched {fetched} bytes"
    lookups = [r for r in proxy.records() if "/referrers/" in r.path or "/sha256-" in r.path]
    assert len(lookups) == 2, lookups  # the API (404, remembered), then the tag
    assert sha256_path(tag / "model.gguf") == digest


def test_an_index_published_through_the_referrers_api_is_found_there(
    ollama_front: tuple[OllamaFront, CDN], mount_factory, gguf: Path, tmp_path: Path
) -> None:
    from mount.test_mount_auth import push_through_front

    front, cdn = ollama_front
    front.referrers_api = True
    env, name = push_through_front(front, gguf, tmp_path, "refs", "--no-chunk-index")
    result = run_modelfs("index", name, "--cache", str(tmp_path / "empty"), env=env)
    assert "published a chunk index of" in result.stderr + result.stdout
    assert not [r for r in front.requests if "/manifests/sha256-" in r.path], (
        "used the tag schema on a registry with the referrers API"
    )
    front.reset()
    cdn.reset()

    m = mount_factory(env=env)
    path = m.mountpoint / front.host / "alice" / "m" / "refs" / "model.gguf"
    assert os.getxattr(path, "user.modelfs.verify") == b"published-index"
    data = gguf.read_bytes()
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 4096, 9 << 20) == data[9 << 20 : (9 << 20) + 4096]
    assert sha256_path(path) == hashlib.sha256(data).hexdigest()
    assert [r.status for r in front.requests if "/referrers/" in r.path] == [200]


def test_index_of_a_model_that_carries_its_own_says_so(
    registry: RegistryProcess, gguf: Path, tmp_path: Path
) -> None:
    name = f"{registry.host}/library/own:24m"
    cache = str(tmp_path / "src")
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", cache)
    run_modelfs("push", name, "--cache", cache)
    result = run_modelfs("index", name, "--cache", cache)
    assert "carries its own chunk index: nothing to publish" in result.stderr + result.stdout


def test_index_of_a_model_that_is_not_there_is_one_line(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    result = run_modelfs(
        "index", f"{registry.host}/library/nothere:1", "--cache", str(tmp_path), check=False
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelfs: ") and "not found" in lines[0]


def test_an_index_the_registry_refuses_is_one_line(
    ollama_front: tuple[OllamaFront, CDN], gguf: Path, tmp_path: Path
) -> None:
    from mount.test_mount_auth import push_through_front

    from modelfs.registry.auth import OllamaKey

    front, _cdn = ollama_front
    _env, name = push_through_front(front, gguf, tmp_path, "refused", "--no-chunk-index")
    stranger = OllamaKey(tmp_path / "stranger" / "id_ed25519")  # may pull, may not push
    env = {**os.environ, "MODELFS_KEY": str(stranger.path)}
    result = run_modelfs("index", name, "--cache", str(tmp_path / "empty"), env=env, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("modelfs: ")]
    assert len(errors) == 1 and "not allowed to push" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "indexing" in result.stderr, "no progress line while indexing"
