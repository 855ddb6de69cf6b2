"""modelfs.formats.modelfacts: the facts `modelfs show` prints, checked against gguf-py's reading
of the same files (SmolLM2, and files gguf-py's own writer makes with other attention shapes)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_synth import SmolLM2Unavailable, smollm2_gguf_path

from modelfs.formats.gguf import read_gguf_file
from modelfs.formats.modelfacts import XATTR_NAMES, XATTR_PREFIX, model_facts


def reference_facts(path: Path) -> dict[str, object]:
    """What gguf-py reads from the file, computed the way llama.cpp sizes its KV cache."""
    ref = gguf.GGUFReader(path)

    def value(key: str) -> object:
        field = ref.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    blocks = value(f"{arch}.block_count")
    embd = value(f"{arch}.embedding_length")
    heads = value(f"{arch}.attention.head_count")
    heads_kv = value(f"{arch}.attention.head_count_kv")
    if heads_kv is None:
        heads_kv = heads
    per_layer_kv = heads_kv if isinstance(heads_kv, list) else [heads_kv] * blocks
    max_heads = max(heads) if isinstance(heads, list) else heads
    k = value(f"{arch}.attention.key_length") or embd // max_heads
    v = value(f"{arch}.attention.value_length") or k
    return {
        "architecture": arch,
        "parameter_count": sum(int(t.n_elements) for t in ref.tensors),
        "tensor_count": len(ref.tensors),
        "context_length": value(f"{arch}.context_length"),
        "embedding_length": embd,
        "block_count": blocks,
        "chat_template": "tokenizer.chat_template" in ref.fields,
        "weights_bytes": path.stat().st_size - ref.data_offset,
        # llama.cpp: per layer, n_ctx x (n_embd_k_gqa + n_embd_v_gqa) elements of f16.
        "kv_bytes_per_token": sum(n * (k + v) * 2 for n in per_layer_kv),
    }


def ours(path: Path) -> dict[str, object]:
    facts = model_facts(read_gguf_file(path), path.stat().st_size).as_dict()
    return {key: facts[key] for key in reference_facts(path)}


def test_smollm2_facts_match_gguf_py() -> None:
    try:
        path = smollm2_gguf_path()
    except SmolLM2Unavailable as e:
        pytest.skip(f"SmolLM2 unavailable: {e}")
    assert ours(path) == reference_facts(path)
    facts = model_facts(read_gguf_file(path), path.stat().st_size)
    # The figures a user sees, worked out by hand: 30 layers x 3 KV heads x (64 + 64) x 2 bytes.
    assert facts.kv_bytes_per_token == 30 * 3 * 128 * 2 == 23_040
    assert facts.kv_cache_bytes(8192) == 188_743_680  # llama.cpp: "KV self size = 180.00 MiB"
    assert facts.quantization == "Q4_1"
    assert facts.name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert facts.head_count == 9 and facts.head_count_kv == 3
    assert facts.memory_bytes(8192) == facts.weights_bytes + 188_743_680


def write_model(
    path: Path,
    *,
    arch: str = "llama",
    blocks: int = 4,
    embd: int = 256,
    heads: int | list[int] | None = 8,
    heads_kv: int | list[int] | None = None,
    key_length: int | None = None,
    value_length: int | None = None,
    chat_template: bool = False,
) -> Path:
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(blocks)
    w.add_context_length(4096)
    w.add_embedding_length(embd)
    if heads is not None:
        w.add_head_count(heads)
    if heads_kv is not None:
        w.add_head_count_kv(heads_kv)
    if key_length is not None:
        w.add_key_length(key_length)
    if value_length is not None:
        w.add_value_length(value_length)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if chat_template:
        w.add_chat_template("{{ messages }}")
    rng = np.random.default_rng(1)
    w.add_tensor("token_embd.weight", rng.random((64, embd), dtype=np.float32))
    for i in range(blocks):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.random((embd, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    "shape",
    [
        {},  # no head_count_kv: as many KV heads as heads
        {"heads_kv": 2},  # grouped-query attention
        {"heads_kv": 1, "key_length": 128, "value_length": 64},  # explicit head sizes
        {"heads_kv": [2, 0, 2, 4]},  # per-layer KV heads (layers without attention)
        {"heads": [8, 8, 4, 4], "heads_kv": [4, 4, 2, 2]},
        {"chat_template": True, "blocks": 2},
    ],
)
def test_synthetic_facts_match_gguf_py(tmp_path: Path, shape: dict) -> None:
    path = write_model(tmp_path / "m.gguf", **shape)
    assert ours(path) == reference_facts(path)


def test_a_header_without_attention_gets_no_kv_estimate(tmp_path: Path) -> None:
    path = write_model(tmp_path / "rnn.gguf", arch="mamba", heads=None)
    facts = model_facts(read_gguf_file(path), path.stat().st_size)
    assert facts.architecture == "mamba" and facts.block_count == 4
    assert facts.kv_bytes_per_token is None
    assert facts.kv_cache_bytes(4096) is None and facts.memory_bytes(4096) is None
    assert XATTR_PREFIX + "memory_bytes" not in facts.xattrs()
    assert XATTR_PREFIX + "kv_bytes_per_token" not in facts.xattrs()


def test_xattrs_are_text_and_listed(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", heads_kv=2, chat_template=True)
    facts = model_facts(read_gguf_file(path), path.stat().st_size)
    x = facts.xattrs()
    assert x[XATTR_PREFIX + "architecture"] == b"llama"
    assert x[XATTR_PREFIX + "chat_template"] == b"yes"
    assert x[XATTR_PREFIX + "context_length"] == b"4096"
    assert int(x[XATTR_PREFIX + "memory_bytes"]) == facts.memory_bytes(4096)
    assert set(x) <= set(XATTR_NAMES)
