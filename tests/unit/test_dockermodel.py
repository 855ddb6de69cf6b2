"""modelfs.formats.dockermodel: an Ollama model re-described as a Docker Model Runner artifact,
checked on SmolLM2 against figures worked out from Docker's code (docker/model-runner
pkg/distribution/format/gguf.go with gguf-parser-go) and against gguf-py's reading of the header."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import gguf
import pytest
from gguf_synth import SmolLM2Unavailable, smollm2_gguf_path

from modelfs.formats.digest import Digest
from modelfs.formats.dockermodel import (
    MEDIA_TYPE_DOCKER_GGUF,
    MEDIA_TYPE_DOCKER_LICENSE,
    MEDIA_TYPE_DOCKER_MMPROJ,
    MEDIA_TYPE_DOCKER_MODEL_CONFIG,
    docker_model,
    gguf_metadata,
    parameters_text,
    quantization_text,
    size_text,
)
from modelfs.formats.gguf import TYPE_ARRAY, TYPE_INT32, GGUFArray, GGUFInfo, read_gguf_file
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_TEMPLATE,
    OLLAMA_LAYER_PREFIX,
    Layer,
    Manifest,
    build_manifest,
    parse_manifest,
)

CREATED = datetime(2025, 6, 1, 12, 30, 15, tzinfo=UTC)
SMOLLM2_BYTES = 98_362_432


@pytest.fixture(scope="module")
def smollm2() -> Path:
    try:
        return smollm2_gguf_path()
    except SmolLM2Unavailable as e:
        pytest.skip(f"SmolLM2 unavailable: {e}")


@pytest.fixture(scope="module")
def info(smollm2: Path) -> GGUFInfo:
    return read_gguf_file(smollm2)


def blob(tag: str) -> Digest:
    return Digest.of_bytes(tag.encode())


def ollama_manifest(weights_bytes: int = SMOLLM2_BYTES) -> Manifest:
    """An Ollama model as ``modelfs create`` writes one: weights, chunk index, template,
    params, a license."""
    layers = [
        Layer(blob("weights"), MEDIA_TYPE_MODEL, weights_bytes),
        Layer(blob("chunks"), MEDIA_TYPE_CHUNK_INDEX, 900),
        Layer(blob("template"), MEDIA_TYPE_TEMPLATE, 120),
        Layer(blob("params"), MEDIA_TYPE_PARAMS, 20),
        Layer(blob("license"), MEDIA_TYPE_LICENSE, 11_000),
    ]
    return parse_manifest(
        build_manifest(Layer(blob("config"), MEDIA_TYPE_DOCKER_CONFIG, 300), layers)
    )


def test_smollm2_config_has_the_fields_docker_would_write(info):
    model = docker_model(ollama_manifest(), info, CREATED)
    doc = json.loads(model.config)
    assert list(doc) == ["config", "descriptor", "rootfs"]
    config = doc["config"]
    # Field order is Go's struct order (types.Config), the values what format/gguf.go derives.
    assert list(config) == [
        "format",
        "quantization",
        "parameters",
        "architecture",
        "size",
        "gguf",
        "context_size",
    ]
    assert config["format"] == "gguf"
    assert config["quantization"] == "MOSTLY_Q4_1"  # gguf-parser-go's name for file type 3
    assert config["parameters"] == "134.52M"  # 134,515,008 tensor elements
    assert config["architecture"] == "llama"
    # 98,362,432 bytes less the 1,785,664-byte header = 96,576,768 B = 92.10 MiB.
    assert config["size"] == "92.10MiB"
    assert config["context_size"] == 8192
    assert doc["descriptor"] == {"created": "2025-06-01T12:30:15Z"}
    assert doc["rootfs"] == {
        "type": "rootfs",
        "diff_ids": [str(layer.digest) for layer in model.layers],
    }


def test_smollm2_gguf_map_formats_values_as_go_does(info, smollm2):
    meta = docker_model(ollama_manifest(), info, CREATED)
    gguf_map = json.loads(meta.config)["config"]["gguf"]
    assert list(gguf_map) == sorted(gguf_map), "Go writes map keys sorted"
    assert gguf_map["general.file_type"] == "3"
    assert gguf_map["llama.context_length"] == "8192"
    assert gguf_map["llama.attention.layer_norm_rms_epsilon"] == "0.000010"  # %f of a float32
    assert gguf_map["llama.rope.freq_base"] == "100000.000000"
    assert gguf_map["tokenizer.ggml.add_bos_token"] == "false"
    assert gguf_map["general.languages"] == "en"  # a one-item array
    assert gguf_map["tokenizer.chat_template"].startswith("{% for message in messages %}")
    for long_array in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
    ):
        assert long_array not in gguf_map, "arrays of over 50 items are left out"

    # Every key gguf-py reads, formatted Go's way, is there with the same text.
    def go(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return f"{v:.6f}"
        return str(v)

    ref = gguf.GGUFReader(smollm2)
    expected = {}
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, list):
            if len(value) > 50:
                continue
            expected[key] = ", ".join(go(v) for v in value)
        else:
            expected[key] = go(value)
    assert gguf_map == expected


def test_config_bytes_are_escaped_as_go_json_marshal_writes_them(info):
    raw = docker_model(ollama_manifest(), info, CREATED).config
    # json.Marshal escapes <, > and & (the chat template is full of <|im_start|>).
    assert b"<" not in raw and b">" not in raw
    assert b"\\u003c|im_start|\\u003e" in raw
    assert b" " not in raw.split(b'"gguf"')[0], "compact JSON"


def test_weights_are_the_same_blob_relabelled():
    manifest = ollama_manifest()
    model = docker_model(manifest, _tiny_info(), CREATED)
    by_digest = {layer.digest: layer for layer in model.layers}
    weights = manifest.layers_of_type(MEDIA_TYPE_MODEL)[0]
    assert by_digest[weights.digest] == Layer(weights.digest, MEDIA_TYPE_DOCKER_GGUF, weights.size)
    lic = manifest.layers_of_type(MEDIA_TYPE_LICENSE)[0]
    assert by_digest[lic.digest].media_type == MEDIA_TYPE_DOCKER_LICENSE
    # Docker tolerates layers it has no type for: they are kept as they are, in order.
    assert [layer.media_type for layer in model.layers] == [
        MEDIA_TYPE_DOCKER_GGUF,
        MEDIA_TYPE_CHUNK_INDEX,
        MEDIA_TYPE_TEMPLATE,
        MEDIA_TYPE_PARAMS,
        MEDIA_TYPE_DOCKER_LICENSE,
    ]
    assert [layer.digest for layer in model.layers] == [layer.digest for layer in manifest.layers]
    # Ollama's config blob is not a layer of the artifact; Docker's config replaces it.
    assert manifest.config.digest not in by_digest


def test_a_projector_becomes_docker_mmproj():
    layers = [
        Layer(blob("w"), MEDIA_TYPE_MODEL, 1000),
        Layer(blob("p"), OLLAMA_LAYER_PREFIX + "projector", 500),
    ]
    manifest = parse_manifest(build_manifest(Layer(blob("c"), MEDIA_TYPE_DOCKER_CONFIG, 3), layers))
    model = docker_model(manifest, _tiny_info(), CREATED)
    assert [layer.media_type for layer in model.layers] == [
        MEDIA_TYPE_DOCKER_GGUF,
        MEDIA_TYPE_DOCKER_MMPROJ,
    ]


def test_manifest_is_an_oci_manifest_that_parses(info):
    model = docker_model(ollama_manifest(), info, CREATED)
    parsed = parse_manifest(model.manifest)
    assert parsed.media_type == MEDIA_TYPE_OCI_MANIFEST
    assert parsed.config == model.config_layer
    assert parsed.config.media_type == MEDIA_TYPE_DOCKER_MODEL_CONFIG
    assert parsed.config.digest == Digest.of_bytes(model.config)
    assert parsed.config.size == len(model.config)
    assert parsed.layers == model.layers
    doc = json.loads(model.manifest)
    # partial.ManifestForLayers: no artifactType; descriptors in Go's field order.
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers"]
    assert list(doc["config"]) == ["mediaType", "size", "digest"]


def test_same_inputs_give_the_same_bytes(info):
    a = docker_model(ollama_manifest(), info, CREATED)
    b = docker_model(ollama_manifest(), info, CREATED)
    assert a == b
    later = docker_model(ollama_manifest(), info, CREATED + timedelta(seconds=1))
    assert later.config_layer.digest != a.config_layer.digest
    assert later.layers == a.layers


def test_a_manifest_without_weights_is_refused():
    manifest = parse_manifest(
        build_manifest(
            Layer(blob("c"), MEDIA_TYPE_DOCKER_CONFIG, 3),
            [Layer(blob("t"), MEDIA_TYPE_TEMPLATE, 3)],
        )
    )
    with pytest.raises(ValueError, match="no GGUF model layer"):
        docker_model(manifest, _tiny_info(), CREATED)


def _tiny_info(**metadata: object) -> GGUFInfo:
    return GGUFInfo(3, {"general.architecture": "llama", **metadata}, (), 64)


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0"),
        (999, "999"),
        (134_515_008, "134.52M"),
        (7_000_000_000, "7B"),
        (8_030_261_248, "8.03B"),
        (1_000, "1K"),
        (1_500_000_000_000, "1.50T"),
    ],
)
def test_parameters_are_gguf_parser_scalars(count, text):
    assert parameters_text(count) == text


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0B"),
        (500, "500B"),
        (96_576_768, "92.10MiB"),
        (1 << 30, "1GiB"),
        # gguf-parser-go's table puts decimal units between binary ones: 1.05e9 < 1 GiB.
        (1_050_000_000, "1.05GB"),
        (4_920_000_000, "4.58GiB"),
    ],
)
def test_sizes_are_gguf_parser_byte_scalars(nbytes, text):
    assert size_text(nbytes) == text


@pytest.mark.parametrize(
    ("file_type", "text"),
    [
        (15, "MOSTLY_Q4_K_M"),
        (0, "MOSTLY_F32"),
        (32, "MOSTLY_BF16"),
        (38, "MOSTLY_MXFP4"),
        (39, "Unknown"),
        (40, "GGUFFileType(40)"),
        (None, "Unknown"),
    ],
)
def test_quantization_is_the_gguf_parser_file_type_name(file_type, text):
    info = _tiny_info() if file_type is None else _tiny_info(**{"general.file_type": file_type})
    assert quantization_text(info) == text


def test_gguf_map_skips_long_arrays_and_nested_items():
    info = _tiny_info(
        **{
            "a.short": GGUFArray(TYPE_INT32, 3, [1, -2, 3]),
            "a.fifty": GGUFArray(TYPE_INT32, 50, list(range(50))),
            "a.fiftyone": GGUFArray(TYPE_INT32, 51, list(range(51))),
            "a.nested": GGUFArray(TYPE_ARRAY, 1, [GGUFArray(TYPE_INT32, 1, [1])]),
            "f.nan": float("nan"),
            "f.inf": float("-inf"),
        }
    )
    meta = gguf_metadata(info)
    assert meta["a.short"] == "1, -2, 3"
    assert meta["a.fifty"].endswith(", 49")
    assert "a.fiftyone" not in meta
    assert meta["a.nested"] == ""  # Go's handleGGUFArray appends nothing for arrays
    assert meta["f.nan"] == "NaN" and meta["f.inf"] == "-Inf"
