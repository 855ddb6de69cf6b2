"""formats/folderpack.py: the pieces of each registry layout of a model folder."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import pytest

from modelfs.formats import artifacts as a
from modelfs.formats import folderpack as fp
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer, parse_manifest
from modelfs.formats.safetensors import TensorInfo, parse_header


def test_dmr_classify_order():
    # files.Classify: extensions first, then chat templates, then licenses, else a file.
    assert fp.dmr_media_type("model-00001-of-00002.safetensors") == a.DMR_SAFETENSORS
    assert fp.dmr_media_type("sub/Model.GGUF") == a.DMR_GGUF
    assert fp.dmr_media_type("chat_template.json") == a.DMR_CHAT_TEMPLATE
    assert fp.dmr_media_type("template.jinja") == a.DMR_CHAT_TEMPLATE
    assert fp.dmr_media_type("LICENSE") == a.DMR_LICENSE
    assert fp.dmr_media_type("NOTICE.txt") == a.DMR_LICENSE
    assert fp.dmr_media_type("license_chat_template.jinja") == a.DMR_CHAT_TEMPLATE
    assert fp.dmr_media_type("1_Pooling/config.json") == a.DMR_FILE


def test_cncf_kinds():
    assert fp.cncf_media_type(a.DMR_SAFETENSORS) == "application/vnd.cncf.model.weight.v1.raw"
    assert fp.cncf_media_type(a.DMR_MMPROJ) == "application/vnd.cncf.model.weight.v1.raw"
    assert fp.cncf_media_type(a.DMR_LICENSE) == "application/vnd.cncf.model.doc.v1.raw"
    for t in (a.DMR_FILE, a.DMR_CHAT_TEMPLATE):
        assert fp.cncf_media_type(t) == "application/vnd.cncf.model.weight.config.v1.raw"
        assert a.cncf_layer(fp.cncf_media_type(t)) == ("weight.config", "raw")


def test_file_metadata_is_go_json_and_reads_back():
    f = fp.FolderFile("1_Pooling/config.json", 190, 0o640, 1_769_671_288_123_456_789)
    text = fp.file_metadata(f)
    assert text == (
        '{"name":"config.json","mode":416,"uid":0,"gid":0,"size":190,'
        '"mtime":"2026-01-29T07:21:28.123456789Z","typeflag":0}'
    )
    layer = fp.file_layer(Layer(Digest("a" * 64), "", 190), f, fp.DOCKER)
    assert [k for k, _v in layer.annotations] == sorted(k for k, _v in layer.annotations)
    assert a.filepath_of(layer) == "1_Pooling/config.json"
    meta = a.metadata_of(layer)
    assert (meta.mode, meta.mtime_ns) == (0o640, f.mtime_ns)
    assert fp.go_time_ns(1_769_671_288_000_000_000) == "2026-01-29T07:21:28Z"
    assert fp.go_time_ns(1_769_671_288_500_000_000) == "2026-01-29T07:21:28.5Z"


def test_one_tensor_prefix_is_a_padded_header_of_the_tensor_alone():
    t = TensorInfo("encoder.layer.0.weight", "F32", (3, 5), 4000, 4060)
    prefix = fp.one_tensor_prefix(t)
    (n,) = struct.unpack_from("<Q", prefix)
    assert len(prefix) == 8 + n and n % 8 == 0
    body = b'{"encoder.layer.0.weight":{"dtype":"F32","shape":[3,5],"data_offsets":[0,60]}}'
    assert prefix[8:] == body + b" " * (-len(body) % 8)  # space-padded, as Ollama pads
    header = parse_header(prefix + bytes(60), len(prefix) + 60, "blob")
    (only,) = header.tensors
    assert (only.name, only.dtype, only.shape, only.begin, only.end) == (
        t.name,
        "F32",
        (3, 5),
        0,
        60,
    )
    assert header.metadata is None


def test_manifests_parse_as_their_kinds():
    config = Layer(Digest("c" * 64), fp.config_media_type(fp.CNCF), 10)
    f = fp.FolderFile("model.safetensors", 100, 0o644, 0)
    layer = fp.file_layer(Layer(Digest("d" * 64), "", 100), f, fp.CNCF)
    cncf = parse_manifest(fp.oci_manifest(config, [layer], a.CNCF_ARTIFACT))
    assert a.kind_of(cncf) is a.Kind.MODELPACK and cncf.artifact_type == a.CNCF_ARTIFACT
    docker_config = Layer(Digest("c" * 64), fp.config_media_type(fp.DOCKER), 10)
    docker = parse_manifest(
        fp.oci_manifest(docker_config, [fp.file_layer(layer, f, fp.DOCKER)], None)
    )
    assert a.kind_of(docker) is a.Kind.DMR_V02 and docker.artifact_type is None
    ollama_config = Layer(Digest("c" * 64), fp.config_media_type(fp.OLLAMA), 10)
    raw = fp.ollama_manifest(
        ollama_config,
        [fp.tensor_layer(layer, "w"), fp.json_layer(layer, "config.json")],
    )
    ollama = parse_manifest(raw)
    assert a.kind_of(ollama) is a.Kind.OLLAMA_TENSORS
    assert [x.name for x in ollama.layers] == ["w", "config.json"]
    assert list(json.loads(raw)["layers"][0]) == ["mediaType", "digest", "size", "name"]


def test_configs_list_the_layers_in_order():
    facts = fp.FolderFacts(
        format="safetensors",
        parameters=22_713_216,
        tensor_count=104,
        dtypes=("F32", "I64"),
        weights_bytes=90_868_376,
        architecture="bert",
        safetensors_format="pt",
        context_size=512,
    )
    layers = [Layer(Digest(c * 64), "x", 1) for c in "ab"]
    when = datetime(2026, 1, 29, 7, 21, 28, tzinfo=UTC)
    docker = json.loads(fp.dmr_config(facts, layers, when))
    assert docker["config"] == {
        "format": "safetensors",
        "quantization": "mixed",
        "parameters": "22.71M",
        "size": "90.87MB",
        "safetensors": {"format": "pt", "tensor_count": "104"},
        "context_size": 512,
    }
    assert docker["rootfs"]["diff_ids"] == [str(x.digest) for x in layers]
    cncf = json.loads(fp.cncf_config(facts, layers, when))
    assert cncf["modelfs"]["diffIds"] == [str(x.digest) for x in layers]
    assert cncf["descriptor"] == {"createdAt": "2026-01-29T07:21:28Z", "family": "bert"}
    single = fp.FolderFacts("safetensors", 10, 1, ("BF16",), 20)
    assert fp.quantization_of(single) == "BF16"


# -- a Modelfile FROM a folder ------------------------------------------------------------------

MODELFILE_LINES = (
    "FROM ./minilm\n"
    'TEMPLATE """{{ .System }} {{ .Prompt }}"""\n'
    "SYSTEM be brief\n"
    "PARAMETER temperature 0.25\n"
    "PARAMETER stop <|end|>\n"
    "LICENSE MIT\n"
    "LICENSE Apache-2.0\n"
    "MESSAGE user hi\n"
    "MESSAGE assistant hello\n"
)


def test_a_modelfile_from_a_folder_in_ollamas_format_gives_ollamas_layers():
    from modelfs.formats.manifest import (
        MEDIA_TYPE_LICENSE,
        MEDIA_TYPE_MESSAGES,
        MEDIA_TYPE_PARAMS,
        MEDIA_TYPE_SYSTEM,
        MEDIA_TYPE_TEMPLATE,
    )
    from modelfs.formats.modelfile import parse_modelfile

    extras = fp.modelfile_extras(parse_modelfile(MODELFILE_LINES), fp.OLLAMA, "Modelfile")
    assert extras.ollama_layers == (
        (MEDIA_TYPE_TEMPLATE, b"{{ .System }} {{ .Prompt }}"),
        (MEDIA_TYPE_SYSTEM, b"be brief"),
        (MEDIA_TYPE_LICENSE, b"MIT"),
        (MEDIA_TYPE_LICENSE, b"Apache-2.0"),
        (MEDIA_TYPE_PARAMS, b'{"stop":["\\u003c|end|\\u003e"],"temperature":0.25}\n'),
        (
            MEDIA_TYPE_MESSAGES,
            b'[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]\n',
        ),
    )
    assert not extras.licenses and extras.context_size is None


def test_a_modelfile_from_a_folder_as_docker_or_cncf_keeps_licenses_and_docker_num_ctx():
    from modelfs.formats.modelfile import parse_modelfile

    mf = parse_modelfile("FROM ./m\nLICENSE MIT\nLICENSE BSD\nPARAMETER num_ctx 4096\n")
    extras = fp.modelfile_extras(mf, fp.DOCKER, "Modelfile")
    assert extras.licenses == (b"MIT", b"BSD") and extras.context_size == 4096
    assert extras.license_files({"config.json"}) == [("LICENSE", b"MIT"), ("LICENSE-2", b"BSD")]
    cncf = fp.modelfile_extras(parse_modelfile("FROM ./m\nLICENSE MIT\n"), fp.CNCF, "Modelfile")
    assert cncf.licenses == (b"MIT",) and cncf.context_size is None


@pytest.mark.parametrize(
    ("fmt", "line", "said"),
    [
        ("docker", "TEMPLATE {{ .Prompt }}", "TEMPLATE cannot go into a docker model"),
        ("docker", "SYSTEM hi", "SYSTEM cannot go into a docker model"),
        ("docker", "MESSAGE user hi", "MESSAGE cannot go into a docker model"),
        (
            "docker",
            "PARAMETER temperature 0.2",
            "PARAMETER temperature cannot go into a docker model",
        ),
        ("cncf", "TEMPLATE {{ .Prompt }}", "TEMPLATE cannot go into a cncf (ModelPack) model"),
        ("cncf", "SYSTEM hi", "SYSTEM cannot go into a cncf (ModelPack) model"),
        ("cncf", "MESSAGE user hi", "MESSAGE cannot go into a cncf (ModelPack) model"),
        ("cncf", "PARAMETER num_ctx 4096", "PARAMETER num_ctx cannot go into a cncf (ModelPack)"),
        ("ollama", "ADAPTER ./lora.gguf", "ADAPTER cannot go with FROM a folder"),
        ("docker", "ADAPTER ./lora.gguf", "ADAPTER cannot go with FROM a folder"),
        ("docker", "RENDERER qwen3", "RENDERER cannot go into a docker model"),
        ("docker", "PARSER qwen3", "PARSER cannot go into a docker model"),
        ("cncf", "RENDERER qwen3", "RENDERER cannot go into a cncf (ModelPack) model"),
        ("cncf", "PARSER qwen3", "PARSER cannot go into a cncf (ModelPack) model"),
        ("ollama", "REQUIRES 0.12.0", "REQUIRES cannot go with FROM a folder"),
    ],
)
def test_a_modelfile_line_a_folder_format_has_no_place_for_is_refused_in_one_line(fmt, line, said):
    from modelfs.formats.modelfile import ModelfileInvalid, parse_modelfile

    mf = parse_modelfile(f"FROM ./m\n{line}\n")
    with pytest.raises(ModelfileInvalid) as e:
        fp.modelfile_extras(mf, fmt, "/x/Modelfile")
    assert str(e.value).startswith(f"/x/Modelfile: {said}"), str(e.value)
    assert "\n" not in str(e.value)


def test_renderer_and_parser_go_into_the_ollama_config_where_ollama_writes_them():
    from modelfs.formats.modelfile import parse_modelfile

    mf = parse_modelfile("FROM ./m\nRENDERER qwen3-coder\nPARSER qwen3-coder\nSYSTEM hi\n")
    extras = fp.modelfile_extras(mf, fp.OLLAMA, "Modelfile")
    assert extras.config_names == (("parser", "qwen3-coder"), ("renderer", "qwen3-coder"))
    facts = fp.FolderFacts("safetensors", 10, 1, ("F32",), 40)
    body = fp.ollama_config(facts, extras.config_names)
    # ConfigV2's fields as x/create's manifest writer fills them (resolveParserName,
    # resolveRendererName), after "requires"; none without the lines.
    assert body == (
        b'{"model_format":"safetensors","file_type":"","capabilities":["completion"],'
        b'"requires":"0.19.0","parser":"qwen3-coder","renderer":"qwen3-coder",'
        b'"architecture":"","os":""}'
    )
    bare = fp.modelfile_extras(parse_modelfile("FROM ./m\nPARSER harmony\n"), fp.OLLAMA, "M")
    assert json.loads(fp.ollama_config(facts, bare.config_names))["parser"] == "harmony"
    assert "renderer" not in json.loads(fp.ollama_config(facts, bare.config_names))
    assert b"parser" not in fp.ollama_config(facts)


def test_a_license_line_goes_beside_the_folders_license_file():
    from modelfs.formats.modelfile import parse_modelfile

    mf = parse_modelfile("FROM ./m\nLICENSE MIT\nLICENSE BSD\n")
    extras = fp.modelfile_extras(mf, fp.CNCF, "M")
    assert extras.license_files({"LICENSE", "LICENSE-3", "model.safetensors"}) == [
        ("LICENSE-2", b"MIT"),
        ("LICENSE-4", b"BSD"),
    ]
