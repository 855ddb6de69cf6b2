"""The mount against registries that want credentials: the Ollama look-alike with its CDN,
docker-registry with Basic auth. A refusal is EACCES, never a hang or EIO storm."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from support.mount import run_modelfs, sha256_path
from support.ollama_front import CDN, OllamaFront
from support.registry import RegistryProcess

from modelfs.registry.auth import OllamaKey

MODEL_BYTES = 24 << 20


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mount-auth-gguf") / "m.gguf"
    write_synthetic_gguf(path, MODEL_BYTES, seed=21)
    return path


def push_through_front(
    front: OllamaFront, gguf: Path, tmp_path: Path, tag: str, *create_args: str
) -> tuple[dict[str, str], str]:
    """Push ``gguf`` as alice/m:<tag> with a key allowed there; (env with the key, name)."""
    key = OllamaKey(tmp_path / "id_ed25519")
    front.allow_push(key.public_line, "alice")
    env = {**os.environ, "MODELFS_KEY": str(key.path)}
    name = f"{front.host}/alice/m:{tag}"
    src = str(tmp_path / "src")
    run_modelfs("create", name, "--gguf", str(gguf), *create_args, "--cache", src, env=env)
    run_modelfs("push", name, "--cache", str(tmp_path / "src"), env=env)
    front.reset()
    return env, name


def test_mount_reads_through_ollama_auth_and_cdn(
    ollama_front: tuple[OllamaFront, CDN], mount_factory, gguf: Path, tmp_path: Path
) -> None:
    front, cdn = ollama_front
    env, _name = push_through_front(front, gguf, tmp_path, "24m")
    cdn.reset()

    m = mount_factory("links=no", env=env)
    tag = m.mountpoint / front.host / "alice" / "m" / "24m"
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert sha256_path(tag / "model.gguf") == digest
    assert cdn.requests, "the mount did not read from the CDN"
    assert not [r for r in cdn.requests if "Authorization" in r.headers]
    assert front.redirects[f"sha256:{digest}"] == 1, dict(front.redirects)
    # Every token request the front saw carried a valid signature (else no token, no bytes).
    assert all(t.status == 200 for t in front.token_requests), front.token_requests


def test_refused_credentials_are_eacces_in_the_mount(
    basic_registry: RegistryProcess, mount_factory, gguf: Path, tmp_path: Path
) -> None:
    host = basic_registry.host
    docker = tmp_path / "docker"
    docker.mkdir()
    auth = base64.b64encode(b"alice:secret").decode()
    (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    good = {**os.environ, "DOCKER_CONFIG": str(docker)}
    name = f"{host}/library/m:24m"
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(tmp_path / "src"), env=good)
    run_modelfs("push", name, "--cache", str(tmp_path / "src"), env=good)

    nobody = tmp_path / "nobody"
    nobody.mkdir()
    m = mount_factory(env={**os.environ, "DOCKER_CONFIG": str(nobody)})
    m.expect_log(r"needs a username and password")
    with pytest.raises(PermissionError) as info:
        os.listdir(m.mountpoint / host / "library" / "m" / "24m")
    assert info.value.errno == errno.EACCES

    m2 = mount_factory(env=good)
    tag = m2.mountpoint / host / "library" / "m" / "24m"
    assert sha256_path(tag / "model.gguf") == hashlib.sha256(gguf.read_bytes()).hexdigest()


def test_cdn_url_refused_mid_read_is_resolved_again(
    ollama_front: tuple[OllamaFront, CDN], mount_factory, gguf: Path, tmp_path: Path
) -> None:
    """The fault "a redirect whose target later returns 403", through the real mount."""
    front, cdn = ollama_front
    env, _name = push_through_front(front, gguf, tmp_path, "expiring")
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    m = mount_factory("links=no", env=env)
    m.expect_log(r"answered 403; resolving again")
    path = m.mountpoint / front.host / "alice" / "m" / "expiring" / "model.gguf"
    half = len(data) // 2
    with open(path, "rb") as f:
        assert f.read(4 << 20) == data[: 4 << 20]
        cdn.expire_all()
        f.seek(half)
        assert f.read() == data[half:]
        f.seek(0)
        assert f.read() == data
    assert front.redirects[f"sha256:{digest}"] == 2, dict(front.redirects)
    assert not [r for r in cdn.requests if "Authorization" in r.headers]
