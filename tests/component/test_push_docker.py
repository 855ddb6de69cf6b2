"""push --format docker through a real docker-registry: one GGUF blob, an Ollama manifest and a
Docker Model Runner manifest side by side, and the Docker one pulled back whole."""

from __future__ import annotations

import io
import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.mount import run_modelfs, sha256_path

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.progress import Progress
from modelfs.commands.push import push
from modelfs.errors import CacheError
from modelfs.formats.dockermodel import (
    MEDIA_TYPE_DOCKER_GGUF,
    MEDIA_TYPE_DOCKER_LICENSE,
    MEDIA_TYPE_DOCKER_MODEL_CONFIG,
)
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_SYSTEM,
    Manifest,
    parse_manifest,
)
from modelfs.formats.names import Name, parse_name
from modelfs.registry.client import Registry

CREATED = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def create(cache: Path, name: str, gguf: Path, tmp_path: Path) -> None:
    lic = tmp_path / "LICENSE"
    lic.write_text("Apache License 2.0\n")
    run_modelfs(
        "create",
        name,
        "--gguf",
        str(gguf),
        "--system",
        "You are helpful.",
        "--license",
        str(lic),
        "--cache",
        str(cache),
    )


async def push_as(
    cache: BlobCache, name: Name, fmt: str, *, source: Name | None = None
) -> tuple[Manifest, str]:
    out = io.StringIO()
    reg = Registry()
    try:
        manifest = await push(
            cache,
            reg,
            name,
            Progress("pushing", out, out),
            source=source,
            format=fmt,
            created=CREATED,
        )
    finally:
        await reg.aclose()
    return manifest, out.getvalue()


async def fetch_manifest(name: Name) -> Manifest:
    reg = Registry()
    try:
        return parse_manifest(await reg.get_manifest(name))
    finally:
        await reg.aclose()


def fetch_blob(registry, name: Name, digest) -> bytes:
    url = f"{registry.url}/v2/{name.repository}/blobs/{digest}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


async def test_docker_push_is_a_model_runner_artifact_sharing_the_weights(
    tmp_path, registry, smollm2_gguf
):
    cache_dir = tmp_path / "c"
    ollama_name = f"{registry.host}/library/dual:ollama"
    docker_name = parse_name(f"{registry.host}/library/dual:docker")
    create(cache_dir, ollama_name, smollm2_gguf, tmp_path)
    cache = BlobCache(cache_dir)
    ollama, ollama_log = await push_as(cache, parse_name(ollama_name), "ollama")
    weights = ollama.layers_of_type(MEDIA_TYPE_MODEL)[0]
    assert f"pushing {weights.digest.short}" in ollama_log and "uploaded" in ollama_log

    # The Docker tag is pushed from the cached Ollama model (--from), as a user would.
    pushed, docker_log = await push_as(cache, docker_name, "docker", source=parse_name(ollama_name))
    # The weights went up once: the Docker push found them on the registry.
    assert f"{weights.digest.short} 98.4 MB skipped: already on the registry" in docker_log, (
        docker_log
    )
    assert "as a Docker model" in docker_log

    remote = await fetch_manifest(docker_name)
    assert remote.raw == pushed.raw
    assert remote.media_type == MEDIA_TYPE_OCI_MANIFEST
    assert json.loads(remote.raw)["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
    assert remote.config.media_type == MEDIA_TYPE_DOCKER_MODEL_CONFIG
    gguf_layers = remote.layers_of_type(MEDIA_TYPE_DOCKER_GGUF)
    assert [layer.digest for layer in gguf_layers] == [weights.digest]
    assert gguf_layers[0].digest.hex == sha256_path(smollm2_gguf)
    licenses = remote.layers_of_type(MEDIA_TYPE_DOCKER_LICENSE)
    assert [lic.digest for lic in licenses] == [
        lic.digest for lic in ollama.layers_of_type(MEDIA_TYPE_LICENSE)
    ]
    # Layers Docker has no type for ride along unchanged (its client ignores them).
    assert remote.layers_of_type(MEDIA_TYPE_CHUNK_INDEX) == ollama.layers_of_type(
        MEDIA_TYPE_CHUNK_INDEX
    )
    assert remote.layers_of_type(MEDIA_TYPE_SYSTEM) == ollama.layers_of_type(MEDIA_TYPE_SYSTEM)
    assert not remote.layers_of_type(MEDIA_TYPE_MODEL)

    config = json.loads(fetch_blob(registry, docker_name, remote.config.digest))
    assert config["config"]["format"] == "gguf"
    assert config["config"]["architecture"] == "llama"
    assert config["config"]["parameters"] == "134.52M"
    assert config["config"]["quantization"] == "MOSTLY_Q4_1"
    assert config["config"]["size"] == "92.10MiB"
    assert config["config"]["context_size"] == 8192
    assert config["config"]["gguf"]["general.architecture"] == "llama"
    assert config["descriptor"]["created"] == "2025-06-01T12:00:00Z"
    assert config["rootfs"]["diff_ids"] == [str(layer.digest) for layer in remote.layers]

    # The Ollama tag is untouched, and the cached model is still the Ollama one.
    assert (await fetch_manifest(parse_name(ollama_name))).raw == ollama.raw
    assert cache.read_manifest(parse_name(ollama_name)) == ollama.raw

    # Pushing again changes nothing and sends nothing.
    again, again_log = await push_as(cache, docker_name, "docker", source=parse_name(ollama_name))
    assert again.raw == pushed.raw
    assert "0 B uploaded" in again_log


async def test_docker_tag_pulls_back_into_a_fresh_cache(tmp_path, registry, smollm2_gguf):
    cache_dir = tmp_path / "c"
    name = f"{registry.host}/library/dockeronly:q4"
    create(cache_dir, name, smollm2_gguf, tmp_path)
    # Straight to Docker format, with nothing on the registry yet: everything is uploaded.
    pushed, log = await push_as(BlobCache(cache_dir), parse_name(name), "docker")
    assert "skipped" not in log, log

    fresh = tmp_path / "fresh"
    r = run_modelfs("pull", name, "--cache", str(fresh))
    assert "pulled" in r.stdout
    bc = BlobCache(fresh)
    raw = bc.read_manifest(parse_name(name))
    assert raw == pushed.raw
    m = parse_manifest(raw)
    for layer in m.blobs:
        assert bc.has_blob(layer.digest, layer.size)
    model = m.layers_of_type(MEDIA_TYPE_DOCKER_GGUF)[0]
    assert sha256_path(bc.blob_path(model.digest)) == sha256_path(smollm2_gguf)
    assert model.digest.hex == sha256_path(smollm2_gguf)

    # A model that already is a Docker artifact goes up as it is.
    again_name = parse_name(f"{registry.host}/library/dockeronly:again")
    run_modelfs("cp", name, str(again_name), "--cache", str(fresh))
    again, _ = await push_as(bc, again_name, "docker")
    assert again.raw == pushed.raw


async def test_docker_push_of_incomplete_weights_is_one_clear_error(
    tmp_path, registry, smollm2_gguf
):
    cache_dir = tmp_path / "c"
    name = parse_name(f"{registry.host}/library/partial:docker")
    create(cache_dir, str(name), smollm2_gguf, tmp_path)
    cache = BlobCache(cache_dir)
    manifest = parse_manifest(cache.read_manifest(name))
    weights = manifest.layers_of_type(MEDIA_TYPE_MODEL)[0]
    cache.blob_path(weights.digest).unlink()
    with pytest.raises(CacheError) as e:
        await push_as(cache, name, "docker")
    assert str(e.value) == (
        f"the weights of {name} ({weights.digest.short}) are not complete in the cache; "
        "pull the model first"
    )
    reg = Registry()
    try:
        assert await reg.manifest_digest(name) is None, "nothing is put on the registry"
    finally:
        await reg.aclose()


def test_the_cli_pushes_a_docker_artifact_that_show_reads_from_the_registry(
    registry, smollm2_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    name = f"{registry.host}/ai/smollm2:cli"
    create(cache, name, smollm2_gguf, tmp_path)
    run_modelfs("push", name, "--format", "docker", "--cache", str(cache))
    doc = json.loads(run_modelfs("show", name, "--json", "--cache", str(tmp_path / "cold")).stdout)
    assert doc["manifest_from"] == registry.host
    types = {layer["file"]: layer["media_type"] for layer in doc["layers"]}
    assert types["model.gguf"] == MEDIA_TYPE_DOCKER_GGUF
    assert types["license"] == MEDIA_TYPE_DOCKER_LICENSE
    assert doc["model"]["architecture"] == "llama"
    assert doc["model"]["quantization"] == "Q4_1"
    bad = run_modelfs("push", name, "--format", "tar", "--cache", str(cache), check=False)
    assert bad.returncode == 2 and "--format" in bad.stderr
