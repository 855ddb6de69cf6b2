"""What a GGUF header says belongs to the manifest that vouches for it (issue: security).

A victim model lives on the real docker-registry; a hostile registry's manifest names the
victim's weights digest with its own chunk index (or none) and serves its own GGUF under it,
of architecture ``evilarch``. The attacker's file reads its own header's facts; the victim's
file, read after it, must still say what the victim's own bytes say.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from mount.test_mount import wait_for
from support.hostile import HostileRegistry, build_chunk_index, build_manifest, sha256_digest
from support.mount import run_modelfs, sha256_path
from support.registry import RegistryProcess

from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, MEDIA_TYPE_MODEL

WEIGHTS_BYTES = 12 << 20  # three chunks: the model gets a chunk index
PREFIX = "user.modelfs.gguf."


@pytest.fixture(scope="module")
def victim(registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A llama model with a chunk index, pushed to the real registry: (name, its GGUF)."""
    work = tmp_path_factory.mktemp("header-victim")
    gguf = work / "victim.gguf"
    write_synthetic_gguf(gguf, WEIGHTS_BYTES, seed=61)
    name = f"{registry.host}/victim/facts:v1"
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(work / "src"))
    run_modelfs("push", name, "--cache", str(work / "src"))
    shutil.rmtree(work / "src")
    return name, gguf


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    with HostileRegistry() as reg:
        yield reg


def claim(hostile: HostileRegistry, digest: str, evil: bytes, *, with_index: bool) -> None:
    """evil/facts:latest on ``hostile`` names ``digest`` and serves ``evil`` under it."""
    hostile.put_blob(evil, digest)
    layers = [(MEDIA_TYPE_MODEL, digest, len(evil))]
    if with_index:
        index = build_chunk_index({digest: evil})  # vouches for its own chunks
        layers.append((MEDIA_TYPE_CHUNK_INDEX, hostile.put_blob(index), len(index)))
    config = b'{"model_format":"gguf"}'
    hostile.put_blob(config)
    hostile.put_manifest("evil/facts", "latest", build_manifest(config, layers))


def facts(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith(PREFIX)}


@pytest.mark.parametrize("with_index", [True, False], ids=["evil-index", "evil-noindex"])
def test_a_header_another_manifest_vouches_for_never_becomes_the_victims_facts(
    hostile, victim, mount_factory, tmp_path, with_index
):
    name, victim_gguf = victim
    good = victim_gguf.read_bytes()
    digest = sha256_digest(good)
    evil_gguf = tmp_path / "evil.gguf"
    write_synthetic_gguf(evil_gguf, len(good), seed=62, arch="evilarch", file_type=7)
    claim(hostile, digest, evil_gguf.read_bytes(), with_index=with_index)
    m = mount_factory("verify=strict")
    if with_index:
        # The victim's index refuses the attacker's chunk the header read left on disk.
        m.expect_log(r"does not match the chunk index")
    attacker = m.mountpoint / hostile.host / "evil/facts/latest/model.gguf"
    host, rest = name.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    target = m.mountpoint / host / repo / tag / "model.gguf"

    # The attacker's file tells its own header's facts (and whether its bytes were checked).
    assert os.getxattr(attacker, PREFIX + "architecture") == b"evilarch"
    assert os.getxattr(attacker, PREFIX + "header_checked") == (b"yes" if with_index else b"no")

    told = facts(target)
    assert told[PREFIX + "architecture"] == b"llama", (
        "the victim's model.gguf reported the architecture of a header another registry's "
        "manifest vouched for"
    )
    assert told[PREFIX + "quantization"] == b"Q4_0"
    assert told[PREFIX + "header_checked"] == b"yes"
    # The attacker's answer has not changed either: each manifest keeps its own facts.
    assert os.getxattr(attacker, PREFIX + "architecture") == b"evilarch"
    # The victim's bytes were never in doubt; read whole, they are published, and from then on
    # every name of the digest (the attacker's too) shares the facts of the checked blob.
    assert sha256_path(target) == digest.split(":")[1]
    wait_for(target.is_symlink, "the victim's model.gguf to become a link")
    assert "user.modelfs.digest" in os.listxattr(target, follow_symlinks=False)
    assert facts(target)[PREFIX + "architecture"] == b"llama"
    assert os.getxattr(attacker, PREFIX + "architecture") == b"llama"
