"""`user.modelfs.safetensors.*` on a mounted model of safetensors files (its tag directory):
listed without fetching, read from config.json and the weights' header only."""

from __future__ import annotations

import errno
import json
import os
import struct

import pytest
from support.modelformats import Artifact, digest_of, dmr_v02, push, quantized_folder

from modelfs.formats.chunks import (
    CHUNK_BYTES,
    DEFAULT_CHUNK_ALGORITHM,
    BlobChunks,
    chunk_hash,
    serialize_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX

PREFIX = "user.modelfs.safetensors."


def test_safetensors_facts_as_xattrs_from_the_headers_only(proxy, registry, mount_factory, minilm):
    art = dmr_v02(minilm)
    push(registry.host, "folders/minilm-xattrs", "latest", art)
    weights = (minilm / "model.safetensors").read_bytes()
    header_bytes = 8 + struct.unpack("<Q", weights[:8])[0]
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-xattrs/latest"
    assert (tag / "model.safetensors").stat().st_size == len(weights)

    proxy.reset()
    names = os.listxattr(tag)
    assert {PREFIX + "parameter_count", PREFIX + "dtypes", PREFIX + "memory_bytes"} <= set(names)
    assert proxy.blob_records() == [], "listing xattrs fetched blob bytes"

    assert os.getxattr(tag, PREFIX + "architecture") == b"BertModel"
    assert os.getxattr(tag, PREFIX + "parameter_count") == b"22713728"
    assert os.getxattr(tag, PREFIX + "dtypes") == b"F32,I64"
    assert os.getxattr(tag, PREFIX + "context_length") == b"512"
    assert int(os.getxattr(tag, PREFIX + "memory_bytes")) == len(weights) - header_bytes
    # No chunk index in this artifact: the header is read alone, unchecked, and says so.
    assert os.getxattr(tag, PREFIX + "header_checked") == b"no"
    # Fetched: the weights' header (its first 8 bytes, then all of it) and config.json.
    config = (minilm / "config.json").stat().st_size
    assert proxy.blob_bytes() == 8 + header_bytes + config, [
        (r.path, r.body_bytes) for r in proxy.blob_records()
    ]
    # Once read, the listing names the facts there are, and each one reads.
    listed = {n for n in os.listxattr(tag) if n.startswith(PREFIX)}
    assert PREFIX + "architecture" in listed and all(os.getxattr(tag, n) for n in listed)

    # The facts are the model's: not on its files, nor on a directory inside it.
    for path in (tag / "model.safetensors", tag / "1_Pooling"):
        assert not any(n.startswith(PREFIX) for n in os.listxattr(path))
        with pytest.raises(OSError) as info:
            os.getxattr(path, PREFIX + "architecture")
        assert info.value.errno == errno.ENODATA


def with_chunk_index(art: Artifact) -> Artifact:
    """The artifact with modelfs's chunk index as one more layer (as ``modelfs create`` adds)."""
    doc = json.loads(art.manifest)
    index = serialize_chunk_index(
        CHUNK_BYTES,
        [
            BlobChunks(
                Digest.parse(layer["digest"]),
                layer["size"],
                CHUNK_BYTES,
                tuple(
                    chunk_hash(DEFAULT_CHUNK_ALGORITHM, data[i : i + CHUNK_BYTES])
                    for i in range(0, max(len(data), 1), CHUNK_BYTES)
                ),
                DEFAULT_CHUNK_ALGORITHM,
            )
            for layer in doc["layers"]
            for data in [art.blobs[layer["digest"]]]
        ],
    )
    out = Artifact(b"", art.media_type, dict(art.blobs))
    index_digest = out.add(index)
    doc["layers"].append(
        {"mediaType": MEDIA_TYPE_CHUNK_INDEX, "digest": index_digest, "size": len(index)}
    )
    out.manifest = json.dumps(doc, separators=(",", ":")).encode()
    assert digest_of(index) == index_digest
    return out


def test_with_a_chunk_index_the_header_chunk_is_checked_and_kept(
    proxy, registry, mount_factory, minilm
):
    art = with_chunk_index(dmr_v02(minilm))
    push(registry.host, "folders/minilm-indexed", "latest", art)
    weights = (minilm / "model.safetensors").read_bytes()
    weights_hex = digest_of(weights).removeprefix("sha256:")
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-indexed/latest"
    assert (tag / "model.safetensors").stat().st_size == len(weights)
    proxy.reset()
    assert os.getxattr(tag, PREFIX + "parameter_count") == b"22713728"
    assert os.getxattr(tag, PREFIX + "header_checked") == b"yes"
    # The chunk the header lies in, checked against the index: not the 90 MB of weights.
    assert proxy.blob_bytes(weights_hex) == CHUNK_BYTES


def test_a_model_of_ollama_tensor_blobs_has_the_facts_and_says_ollama_quantized(
    proxy, registry, mount_factory, minilm, tmp_path
):
    """Ollama's tensor layers: the facts of the laid-out model.safetensors are MiniLM's, as
    for its folder; a model Ollama quantized (packed weights, .scale and .bias beside them)
    says so in ``user.modelfs.safetensors.quantized``, and a plain one has no such xattr."""
    from support.modelformats import ollama_tensors

    from modelfs.formats.safetensors import OLLAMA_QUANTIZED

    push(registry.host, "folders/minilm-tensor-facts", "latest", ollama_tensors(minilm))
    folder = quantized_folder(tmp_path / "quantized")
    push(registry.host, "folders/quantized-tensor-facts", "latest", ollama_tensors(folder))
    m = mount_factory()
    top = m.mountpoint / proxy.host / "folders"

    plain = top / "minilm-tensor-facts/latest"
    assert os.getxattr(plain, PREFIX + "architecture") == b"BertModel"
    assert os.getxattr(plain, PREFIX + "parameter_count") == b"22713728"
    assert os.getxattr(plain, PREFIX + "dtypes") == b"F32,I64"
    assert os.getxattr(plain, PREFIX + "context_length") == b"512"
    assert int(os.getxattr(plain, PREFIX + "memory_bytes")) == 90_856_960
    with pytest.raises(OSError) as info:
        os.getxattr(plain, PREFIX + "quantized")
    assert info.value.errno == errno.ENODATA

    quantized = top / "quantized-tensor-facts/latest"
    assert os.getxattr(quantized, PREFIX + "architecture") == b"LlamaForCausalLM"
    assert os.getxattr(quantized, PREFIX + "context_length") == b"4096"
    assert os.getxattr(quantized, PREFIX + "quantized") == OLLAMA_QUANTIZED.encode()
    assert PREFIX + "quantized" in os.listxattr(quantized)
