"""`user.modelfs.gguf.*` on a mounted model.gguf: listed without fetching, read from the header
only (one chunk for SmolLM2), the same facts on the link once the blob is complete."""

from __future__ import annotations

import errno
import os

import gguf
import pytest
from mount.test_mount import TAG_DIR, model_records, wait_for
from support.mount import run_modelfs, sha256_path

from modelfs.formats.chunks import CHUNK_BYTES

PREFIX = "user.modelfs.gguf."


def test_gguf_facts_as_xattrs_from_the_header_only(
    proxy, mount_factory, smollm2_pushed, smollm2_gguf, model_hex
):
    m = mount_factory()
    tag = m.mountpoint / proxy.host / TAG_DIR
    model = tag / "model.gguf"
    proxy.reset()
    names = os.listxattr(model)
    assert {PREFIX + "architecture", PREFIX + "parameter_count", PREFIX + "memory_bytes"} <= set(
        names
    )
    assert model_records(proxy, model_hex) == [], "listing xattrs fetched blob bytes"

    ref = gguf.GGUFReader(smollm2_gguf)
    assert os.getxattr(model, PREFIX + "architecture") == b"llama"
    assert int(os.getxattr(model, PREFIX + "parameter_count")) == sum(
        int(t.n_elements) for t in ref.tensors
    )
    assert int(os.getxattr(model, PREFIX + "context_length")) == 8192
    assert int(os.getxattr(model, PREFIX + "tensor_count")) == len(ref.tensors)
    assert os.getxattr(model, PREFIX + "quantization") == b"Q4_1"
    assert os.getxattr(model, PREFIX + "chat_template") == b"yes"
    assert os.getxattr(model, PREFIX + "header_checked") == b"yes"
    assert proxy.blob_bytes(model_hex) == CHUNK_BYTES, "more than the header's chunk fetched"
    # Once read, the listing names the facts there are, and each one reads.
    listed = {n for n in os.listxattr(model) if n.startswith(PREFIX)}
    assert listed == {n for n in names if n.startswith(PREFIX)}  # SmolLM2 has every fact
    assert all(os.getxattr(model, n) for n in listed)

    # A file that is not GGUF has none.
    with pytest.raises(OSError) as info:
        os.getxattr(tag / "params.json", PREFIX + "architecture")
    assert info.value.errno == errno.ENODATA
    assert not any(n.startswith(PREFIX) for n in os.listxattr(tag / "params.json"))

    # Complete: model.gguf becomes a link to the blob, which carries the same facts.
    assert sha256_path(model) == model_hex
    wait_for(model.is_symlink, "model.gguf to become a link")
    assert os.getxattr(model, PREFIX + "architecture") == b"llama"
    assert os.getxattr(model, PREFIX + "memory_bytes") == os.getxattr(
        m.cache / "blobs" / f"sha256-{model_hex}", PREFIX + "memory_bytes"
    )
    assert int(os.getxattr(model, PREFIX + "memory_bytes")) == (
        smollm2_gguf.stat().st_size - ref.data_offset + 188_743_680
    )


def test_a_docker_model_runner_artifact_reads_through_the_mount(
    registry, proxy, mount_factory, smollm2_gguf, model_hex, tmp_path
):
    name = f"{registry.host}/ai/smollm2:docker"
    src = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(smollm2_gguf), "--cache", str(src))
    run_modelfs("push", name, "--format", "docker", "--cache", str(src))
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "ai/smollm2/docker"
    assert os.getxattr(tag / "model.gguf", "user.modelfs.media_type") == (
        b"application/vnd.docker.ai.gguf.v3"
    )
    assert os.getxattr(tag / "model.gguf", PREFIX + "architecture") == b"llama"
    assert sha256_path(tag / "model.gguf") == model_hex
