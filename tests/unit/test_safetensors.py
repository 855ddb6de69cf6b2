"""modelfs.formats.safetensors: headers parsed with the library's checks; files laid out from
one-tensor blobs load in the safetensors library itself."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load, save
from support.modelformats import split_safetensors

from modelfs.errors import ManifestInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.safetensors import (
    DTYPE_BITS,
    SINGLE_FILENAME,
    combine,
    ollama_quantized,
    parse_header,
    safetensors_facts,
    tensors_of,
)


def st_file(header: dict, data: bytes = b"", pad: int = 0) -> bytes:
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + data


def arrays():
    rng = np.random.default_rng(7)
    return {
        "b.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.bias": rng.standard_normal(7).astype(np.float16),
        "c.ids": np.arange(12, dtype=np.int64).reshape(3, 4),
        "d.empty": np.zeros((0, 4), dtype=np.float32),
        "e.mask": np.array([True, False, True]),
    }


def blobs_of(tensors: dict) -> dict[Digest, bytes]:
    """The one-tensor blobs Ollama would store for these arrays, by digest."""
    whole = save(tensors, metadata={"format": "pt"})
    return {Digest.of_bytes(b): b for b in split_safetensors(whole).values()}


def lay_out(blobs: dict[Digest, bytes], shard_bytes: int = 1 << 40):
    sources = []
    for digest, blob in blobs.items():
        sources.extend(tensors_of(parse_header(blob, len(blob), "t"), digest))
    return combine(sources, shard_bytes)


def materialize(f, blobs) -> bytes:
    return f.prefix + b"".join(blobs[s.digest][s.offset : s.offset + s.length] for s in f.spans)


def test_combined_file_loads_in_safetensors_with_equal_arrays():
    src = arrays()
    blobs = blobs_of(src)
    files, index = lay_out(blobs)
    assert index is None
    (f,) = files
    assert f.filename == SINGLE_FILENAME
    data = materialize(f, blobs)
    assert len(data) == f.size
    (n,) = struct.unpack_from("<Q", data)
    assert n % 8 == 0 and data[8:9] == b"{"
    assert json.loads(data[8 : 8 + n])["__metadata__"] == {"format": "pt"}
    loaded = load(data)
    assert sorted(loaded) == sorted(src)
    for name, array in src.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)


def test_layout_is_deterministic_and_sorted_by_name_whatever_the_blob_order():
    blobs = blobs_of(arrays())
    reversed_blobs = dict(reversed(list(blobs.items())))
    (a,), _ = lay_out(blobs)
    (b,), _ = lay_out(reversed_blobs)
    assert a == b
    assert list(a.tensor_names) == sorted(arrays())


def test_past_the_shard_size_shards_and_an_index_load_like_transformers_writes_them():
    src = arrays()
    blobs = blobs_of(src)
    files, index = lay_out(blobs, shard_bytes=64)
    assert len(files) > 1
    assert [f.filename for f in files] == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    doc = json.loads(index)
    assert index.endswith(b"}\n") and index.startswith(b'{\n  "metadata"')
    assert doc["metadata"]["total_size"] == sum(a.nbytes for a in src.values())
    loaded = {}
    for f in files:
        part = load(materialize(f, blobs))
        assert all(doc["weight_map"][name] == f.filename for name in part)
        loaded.update(part)
    assert sorted(loaded) == sorted(src) == sorted(doc["weight_map"])
    for name, array in src.items():
        assert np.array_equal(loaded[name], array)


def test_two_tensors_of_one_name_are_refused():
    one = blobs_of({"x": np.zeros(2, np.float32)})
    other = blobs_of({"x": np.ones(2, np.float32)})
    with pytest.raises(ManifestInvalid, match="two tensors"):
        lay_out({**one, **other})


@pytest.mark.parametrize(
    ("header", "data", "why"),
    [
        ({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"0000", "dtype"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"0000", "is not 4 bytes"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"00", "past the end"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"0000", "non-negative"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"0000", "malformed"),
        ({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"0000", "integers"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
        ({"t": "nope"}, b"", "not an object"),
    ],
)
def test_invalid_headers_are_refused(header, data, why):
    blob = st_file(header, data)
    with pytest.raises(ManifestInvalid, match=why):
        parse_header(blob, len(blob), "blob")


def test_header_length_is_bounded_and_checked_against_the_file():
    with pytest.raises(ManifestInvalid, match="header of"):
        parse_header(struct.pack("<Q", 1 << 40), None, "b")
    blob = st_file({})
    with pytest.raises(ManifestInvalid, match="runs past the file"):
        parse_header(blob, len(blob) - 1, "b")
    with pytest.raises(ManifestInvalid, match="not JSON"):
        parse_header(struct.pack("<Q", 4) + b"{{{{", 12, "b")


def test_facts_from_headers_and_config_json():
    blob = save(arrays(), metadata={"format": "pt"})
    header = parse_header(blob, len(blob), "m")
    config = json.dumps(
        {"architectures": ["BertModel"], "model_type": "bert", "max_position_embeddings": 512}
    ).encode()
    facts = safetensors_facts([header], config)
    assert facts.architecture == "BertModel"
    assert facts.parameter_count == 15 + 7 + 12 + 0 + 3
    assert facts.tensor_count == 5
    assert facts.dtypes == ("F32", "I64", "F16", "BOOL")
    assert facts.context_length == 512
    assert facts.xattrs()["user.modelfs.safetensors.dtypes"] == b"F32,I64,F16,BOOL"
    bare = safetensors_facts([header], b"not json")
    assert (bare.architecture, bare.context_length) == (None, None)


def _tensors(spec: dict[str, tuple[str, list[int]]]):
    header = {}
    at = 0
    for name, (dtype, shape) in spec.items():
        n = int(np.prod(shape)) * DTYPE_BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + n]}
        at += n
    blob = st_file(header, bytes(at))
    return parse_header(blob, len(blob), "q").tensors


def test_ollama_and_mlx_quantized_tensors_are_told_from_hugging_face_ones():
    # Hugging Face: a layer's bias beside its weight; GPTQ's qweight/scales names.
    hf = {"l.weight": ("F32", [4, 4]), "l.bias": ("F32", [4]), "g.qweight": ("I32", [2, 4])}
    assert not ollama_quantized(_tensors(hf))
    # Ollama: the weight's own .scale and .bias beside it.
    ollama = {
        "l.weight": ("U8", [4, 2]),
        "l.weight.scale": ("F32", [4]),
        "l.weight.bias": ("F32", [4]),
    }
    assert ollama_quantized(_tensors(ollama))
    # MLX: weights packed in U32.
    assert ollama_quantized(_tensors({"l.weight": ("U32", [4, 1]), "l.scales": ("F16", [4, 1])}))
    facts = safetensors_facts([parse_header(st_file({}), None, "e")], None)
    assert not facts.ollama_quantized and "user.modelfs.safetensors.quantized" not in facts.xattrs()
