"""modelfs.formats.manifest: parsing real and hostile manifests, file names of layers."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.errors import ManifestInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MAX_BLOB_BYTES,
    MAX_LAYERS,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    Layer,
    build_manifest,
    layer_filenames,
    parse_manifest,
)

D1, D2, D3, D4 = (Digest(c * 64) for c in "1234")


def doc(layers, config=None):
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config or {"mediaType": MEDIA_TYPE_DOCKER_CONFIG, "digest": str(D4), "size": 10},
        "layers": layers,
    }


def raw(d) -> bytes:
    return json.dumps(d).encode()


def test_roundtrip_keeps_exact_bytes_and_digest():
    data = build_manifest(
        Layer(D4, MEDIA_TYPE_DOCKER_CONFIG, 10),
        [Layer(D1, MEDIA_TYPE_MODEL, 1000), Layer(D2, MEDIA_TYPE_PARAMS, 20)],
    )
    m = parse_manifest(data)
    assert m.raw == data
    assert m.digest == Digest.of_bytes(data)
    assert [layer.digest for layer in m.layers] == [D1, D2]
    assert m.total_bytes == 1030


def test_ollama_registry_manifest_parses():
    # The shape registry.ollama.ai serves (pretty-printed, OCI-less Docker v2).
    text = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        '"config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
        f'"digest":"{D4}","size":487}},"layers":['
        f'{{"mediaType":"application/vnd.ollama.image.model","digest":"{D1}","size":2019377376}},'
        f'{{"mediaType":"application/vnd.ollama.image.template","digest":"{D2}","size":1429}},'
        f'{{"mediaType":"application/vnd.ollama.image.license","digest":"{D3}","size":7711}}]}}'
    )
    m = parse_manifest(text.encode())
    names = [n for n, _ in layer_filenames(m)]
    assert names == ["model.gguf", "template", "license", "config.json"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(schemaVersion=1), "schemaVersion"),
        (lambda d: d.update(mediaType="text/html"), "not an image manifest"),
        (lambda d: d.update(layers={}), "layers is not a list"),
        (lambda d: d["layers"][0].update(size=-1), "out of range"),
        (lambda d: d["layers"][0].update(size=MAX_BLOB_BYTES + 1), "out of range"),
        (lambda d: d["layers"][0].update(size="12"), "not an integer"),
        (lambda d: d["layers"][0].update(size=True), "not an integer"),
        (lambda d: d["layers"][0].update(size=1.5), "not an integer"),
        (lambda d: d["layers"][0].update(digest="sha512:" + "a" * 128), "only sha256"),
        (lambda d: d["layers"][0].update(digest="sha256:" + "A" * 64), "lowercase hex"),
        (lambda d: d["layers"][0].update(digest="sha256:../../etc/passwd"), "hex"),
        (lambda d: d["layers"][0].update(digest=None), "not a string"),
        (lambda d: d["layers"][0].update(mediaType=""), "mediaType"),
        (lambda d: d["layers"][0].update(mediaType="a\nb"), "mediaType"),
        (lambda d: d["layers"].append(1), "not an object"),
        (lambda d: d.update(config=None), "config is not an object"),
        (
            lambda d: d["layers"].append(
                {"mediaType": MEDIA_TYPE_LICENSE, "digest": str(D1), "size": 5}
            ),
            "two different sizes",
        ),
        (
            lambda d: d.update(
                layers=[
                    {"mediaType": MEDIA_TYPE_MODEL, "digest": f"sha256:{i:064x}", "size": 1}
                    for i in range(MAX_LAYERS + 1)
                ]
            ),
            "layers (limit",
        ),
        (
            lambda d: d.update(
                layers=[
                    {
                        "mediaType": MEDIA_TYPE_MODEL,
                        "digest": f"sha256:{i:064x}",
                        "size": MAX_BLOB_BYTES,
                    }
                    for i in range(3)
                ]
            ),
            "add up",
        ),
    ],
)
def test_hostile_manifests_are_clean_errors(mutate, fragment):
    d = doc([{"mediaType": MEDIA_TYPE_MODEL, "digest": str(D1), "size": 100}])
    mutate(d)
    with pytest.raises(ManifestInvalid, match=None) as info:
        parse_manifest(raw(d))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b"[]", b"{", b"\xff\xfe", b'{"schemaVersion":2}', b"[" * 100000 + b"]" * 100000],
)
def test_non_manifests_are_clean_errors(data):
    with pytest.raises(ManifestInvalid):
        parse_manifest(data)


def test_oversized_manifest_is_refused_before_parsing():
    with pytest.raises(ManifestInvalid, match="over"):
        parse_manifest(b" " * (5 << 20))


def test_same_blob_twice_is_one_blob():
    d = doc(
        [
            {"mediaType": MEDIA_TYPE_LICENSE, "digest": str(D1), "size": 5},
            {"mediaType": MEDIA_TYPE_LICENSE, "digest": str(D1), "size": 5},
        ]
    )
    m = parse_manifest(raw(d))
    assert len(m.layers) == 2
    assert [b.digest for b in m.blobs] == [D4, D1]
    assert [n for n, _ in layer_filenames(m)] == ["license", "license-2", "config.json"]


def test_layer_filenames_cover_every_layer_and_repeat_with_suffix():
    layers = [
        {"mediaType": MEDIA_TYPE_MODEL, "digest": str(D1), "size": 1},
        {"mediaType": MEDIA_TYPE_MODEL, "digest": str(D2), "size": 1},
        {"mediaType": "application/vnd.ollama.image.projector", "digest": str(D3), "size": 1},
        {"mediaType": MEDIA_TYPE_CHUNK_INDEX, "digest": f"sha256:{'5' * 64}", "size": 1},
        {"mediaType": "application/x-unknown", "digest": f"sha256:{'6' * 64}", "size": 1},
        {
            "mediaType": "application/vnd.docker.ai.gguf.v3",
            "digest": f"sha256:{'7' * 64}",
            "size": 1,
        },
    ]
    m = parse_manifest(raw(doc(layers)))
    files = layer_filenames(m)
    assert [n for n, _ in files] == [
        "model.gguf",
        "model-2.gguf",
        "projector.gguf",
        "chunks.json",
        "layer-666666666666",
        "model-3.gguf",
        "config.json",
    ]
    assert len({n for n, _ in files}) == len(files)
    assert {layer.digest for _, layer in files} == {b.digest for b in m.blobs}


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_crashes(value):
    d = doc([{"mediaType": MEDIA_TYPE_MODEL, "digest": str(D1), "size": 100}])
    for key in ("config", "layers", "schemaVersion", "mediaType"):
        mutated = dict(d)
        mutated[key] = value
        with contextlib.suppress(ManifestInvalid):
            parse_manifest(raw(mutated))


def test_annotations_name_and_artifact_type_are_kept_for_the_formats_that_need_them():
    d = doc(
        [
            {
                "mediaType": "application/vnd.cncf.model.weight.v1.raw",
                "digest": str(D1),
                "size": 5,
                "annotations": {"org.cncf.model.filepath": "a/b.safetensors", "z": "1"},
            },
            {
                "mediaType": "application/vnd.ollama.image.tensor",
                "digest": str(D2),
                "size": 9,
                "name": "model.embed.weight",
            },
        ]
    )
    d["artifactType"] = "application/vnd.cncf.model.manifest.v1+json"
    d["annotations"] = {"org.cncf.modctl.modelfile": "MODEL b.safetensors"}
    m = parse_manifest(raw(d))
    assert m.layers[0].annotation("org.cncf.model.filepath") == "a/b.safetensors"
    assert m.layers[0].annotation("missing") is None
    assert m.layers[1].name == "model.embed.weight"
    assert m.artifact_type == "application/vnd.cncf.model.manifest.v1+json"
    assert dict(m.annotations) == {"org.cncf.modctl.modelfile": "MODEL b.safetensors"}
    # What a descriptor says about the file is not part of the layer's identity.
    assert m.layers[0] == Layer(D1, "application/vnd.cncf.model.weight.v1.raw", 5)


@pytest.mark.parametrize(
    "extra",
    [
        {"annotations": ["not", "a", "map"]},
        {"annotations": {"k": 1}},
        {"annotations": {f"k{i}": "v" for i in range(100)}},
        {"name": 7},
        {"name": ""},
    ],
)
def test_malformed_annotations_or_name_refuse_the_manifest(extra):
    layer = {"mediaType": MEDIA_TYPE_MODEL, "digest": str(D1), "size": 5, **extra}
    with pytest.raises(ManifestInvalid):
        parse_manifest(raw(doc([layer])))
