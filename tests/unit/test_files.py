"""modelfs.formats.files: each artifact kind's paths, the clash and escape rules, the side files,
the byte requests, and reads across extents."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from modelfs.errors import ManifestInvalid
from modelfs.formats.artifacts import Kind, rfc3339_ns
from modelfs.formats.digest import Digest
from modelfs.formats.files import (
    SIDE_CONFIG,
    SIDE_MANIFEST,
    BlobBytes,
    ByteRequest,
    Extent,
    Generated,
    HeaderBytes,
    ModelFile,
    ModelTree,
    Needs,
    contradicted,
    files_of,
    read_file,
    resting_on,
)
from modelfs.formats.manifest import layer_filenames, parse_manifest

OCI = "application/vnd.oci.image.manifest.v1+json"
DMR = "application/vnd.docker.ai."
V01, V02 = DMR + "model.config.v0.1+json", DMR + "model.config.v0.2+json"
CNCF = "application/vnd.cncf.model."
PATH = "org.cncf.model.filepath"
META = "org.cncf.model.file.metadata+json"


def dg(i: int) -> str:
    return f"sha256:{i:064x}"


def layer(i: int, media_type: str, size: int = 10, path: str | None = None, **extra) -> dict:
    d = {"mediaType": media_type, "digest": dg(i), "size": size, **extra}
    if path is not None:
        d.setdefault("annotations", {})[PATH] = path
    return d


def manifest(layers, config_type=V02, **extra):
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": {"mediaType": config_type, "digest": dg(999), "size": 50},
        "layers": layers,
        **extra,
    }
    return parse_manifest(json.dumps(doc).encode())


def tree_of(m, known=None) -> ModelTree:
    found = files_of(m, known)
    assert isinstance(found, ModelTree), found
    return found


def paths(tree: ModelTree) -> list[str]:
    return sorted(f.path for f in tree.files)


def test_dmr_v02_files_sit_at_their_paths_with_nested_directories():
    m = manifest(
        [
            layer(1, DMR + "model.file", path="1_Pooling/config.json"),
            layer(2, DMR + "model.file", path="config.json"),
            layer(3, DMR + "safetensors", 1000, path="model.safetensors"),
        ]
    )
    tree = tree_of(m)
    assert tree.kind is Kind.DMR_V02
    assert paths(tree) == [
        SIDE_CONFIG,
        SIDE_MANIFEST,
        "1_Pooling/config.json",
        "config.json",
        "model.safetensors",
    ]
    assert tree.directories == {"", "1_Pooling", ".modelfs"}
    f = tree.file("model.safetensors")
    assert f.extents == (Extent(Digest(f"{3:064x}"), 0, 1000),) and f.size == 1000
    # config.json is the model's; the artifact's config is beside it.
    assert tree.file("config.json").layer.digest == Digest(f"{2:064x}")
    assert tree.file(SIDE_CONFIG).layer.digest == Digest(f"{999:064x}")


@pytest.mark.parametrize(
    ("given", "cleaned"),
    [("../../config.json", "config.json"), ("./a/./b.json", "a/b.json"), ("a//b", "a/b")],
)
def test_paths_are_cleaned_as_docker_cleans_them(given, cleaned):
    tree = tree_of(manifest([layer(1, DMR + "safetensors", path=given)]))
    assert tree.file(cleaned) is not None


@pytest.mark.parametrize("bad", ["/etc/passwd", "a/../../b", "..", "x/../..", "a\0b"])
def test_an_escaping_path_refuses_the_manifest(bad):
    with pytest.raises(ManifestInvalid, match="layer 0"):
        files_of(manifest([layer(1, DMR + "safetensors", path=bad)]))


@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        (
            "model.safetensors",
            "./model.safetensors",
            r"two files have the path \(the other from layer 0\)",
        ),
        ("a", "a/b", r"a file's directory is another file \(from layer 0\)"),
        ("a/b", "a", "directory of others"),
    ],
)
def test_two_layers_on_one_path_refuse_the_manifest(first, second, why):
    m = manifest(
        [layer(1, DMR + "safetensors", path=first), layer(2, DMR + "model.file", path=second)]
    )
    with pytest.raises(ManifestInvalid, match=why):
        files_of(m)


def test_mode_and_mtime_from_the_file_metadata_annotation_and_older_cnai_names():
    meta = json.dumps(
        {"name": "x", "mode": 0o100755, "mtime": "2025-11-02T10:20:30.123456789+01:00"}
    )
    m = manifest(
        [
            layer(1, CNCF + "weight.v1.raw", annotations={PATH: "w.safetensors", META: meta}),
            layer(
                2,
                "application/vnd.cnai.model.weight.config.v1.raw",
                annotations={"org.cnai.model.filepath": "c.json", META: "not json"},
            ),
        ],
        config_type=CNCF + "config.v1+json",
    )
    tree = tree_of(m)
    assert tree.kind is Kind.MODELPACK
    w = tree.file("w.safetensors")
    assert w.mode == 0o755
    assert w.mtime_ns == rfc3339_ns("2025-11-02T09:20:30.123456789Z") == 1762075230123456789
    assert (tree.file("c.json").mode, tree.file("c.json").mtime_ns) == (None, None)
    # The pre-CNCF spelling of both annotations, as older modctl artifacts carry them.
    old = manifest(
        [
            layer(
                1,
                "application/vnd.cnai.model.weight.v1.raw",
                annotations={
                    "org.cnai.model.filepath": "../sub/w.safetensors",
                    "org.cnai.model.file.metadata+json": json.dumps(
                        {"mode": 0o640, "mtime": "2024-02-29T23:59:59Z"}
                    ),
                },
            )
        ],
        config_type="application/vnd.cnai.model.config.v1+json",
    )
    w = tree_of(old).file("sub/w.safetensors")
    assert (w.mode, w.mtime_ns) == (0o640, rfc3339_ns("2024-02-29T23:59:59Z"))


def test_the_models_own_files_win_the_side_names():
    m = manifest(
        [
            layer(1, DMR + "safetensors", path="model.safetensors"),
            layer(2, DMR + "model.file", path=".modelfs/config.json"),
        ]
    )
    tree = tree_of(m)
    assert tree.file(SIDE_CONFIG).layer.digest == Digest(f"{2:064x}")
    assert tree.file(SIDE_MANIFEST) is not None
    clash = manifest(
        [layer(1, DMR + "safetensors", path="w"), layer(2, DMR + "model.file", path=".modelfs")]
    )
    assert paths(tree_of(clash)) == [".modelfs", "w"]


def test_dmr_v01_names_are_the_unpackers():
    m = manifest(
        [
            layer(1, DMR + "gguf.v3", 100),
            layer(2, DMR + "gguf.v3", 200),
            layer(3, DMR + "gguf.v3", 300, path="ignored-for-gguf.gguf"),
            layer(4, DMR + "mmproj"),
            layer(5, DMR + "chat.template.jinja"),
            layer(6, DMR + "license"),
            layer(7, "application/vnd.ollama.image.params"),
            layer(8, DMR + "model.file", path="tokenizer_config.json"),
        ],
        config_type=V01,
    )
    tree = tree_of(m)
    assert tree.kind is Kind.DMR_V01
    assert paths(tree) == [
        SIDE_CONFIG,
        SIDE_MANIFEST,
        "license",
        "model-00001-of-00003.gguf",
        "model-00002-of-00003.gguf",
        "model-00003-of-00003.gguf",
        "model.mmproj",
        "params.json",
        "template.jinja",
        "tokenizer_config.json",
    ]
    # Shards in manifest order.
    assert [tree.file(f"model-0000{i}-of-00003.gguf").size for i in (1, 2, 3)] == [100, 200, 300]


def test_dmr_v01_safetensors_take_their_annotation_else_the_fixed_names():
    plain = manifest(
        [layer(1, DMR + "safetensors"), layer(2, DMR + "safetensors")], config_type=V01
    )
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} <= set(
        paths(tree_of(plain))
    )
    one = manifest([layer(1, DMR + "safetensors", path="sub/w.safetensors")], config_type=V01)
    assert "sub/w.safetensors" in paths(tree_of(one))


def test_classic_ollama_models_keep_their_names():
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": dg(9),
            "size": 5,
        },
        "layers": [
            layer(1, "application/vnd.ollama.image.model", 1000),
            layer(2, "application/vnd.ollama.image.template"),
            layer(3, "application/vnd.ollama.image.params"),
        ],
    }
    m = parse_manifest(json.dumps(doc).encode())
    tree = tree_of(m)
    assert tree.kind is Kind.OLLAMA
    expected = [name for name, _ in layer_filenames(m)] + ["manifest.json"]
    assert [f.path for f in tree.files] == expected
    assert [f.path for f in tree.files] == [
        "model.gguf",
        "template",
        "params.json",
        "config.json",
        "manifest.json",
    ]
    assert read_file(tree.file("manifest.json"), None) == m.raw


def test_compressed_tar_layers_are_listed_as_skipped():
    m = manifest(
        [layer(1, CNCF + "weight.v1.raw", path="w"), layer(2, CNCF + "doc.v1.tar+gzip")],
        config_type=CNCF + "config.v1+json",
    )
    tree = tree_of(m)
    assert paths(tree) == [SIDE_CONFIG, SIDE_MANIFEST, "w"]
    ((skipped, why),) = tree.skipped
    assert skipped.digest == Digest(f"{2:064x}") and "tar+gzip" in why


# -- Ollama tensor layers ----------------------------------------------------------------------


def tensor_blob(name: str, nbytes: int, pad_to: int = 0) -> bytes:
    header = json.dumps(
        {name: {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}}
    ).encode()
    header += b" " * max(-len(header) % 8, pad_to - len(header))
    return struct.pack("<Q", len(header)) + header + b"\x07" * nbytes


def tensor_manifest(blobs: dict[str, bytes], extra_layers=()) -> tuple:
    layers = [
        {
            "mediaType": "application/vnd.ollama.image.tensor",
            "digest": str(Digest.of_bytes(b)),
            "size": len(b),
            "name": name,
        }
        for name, b in blobs.items()
    ]
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": dg(9),
            "size": 5,
        },
        "layers": [*layers, *extra_layers],
    }
    by_digest = {Digest.of_bytes(b): b for b in blobs.values()}
    return parse_manifest(json.dumps(doc).encode()), by_digest


def test_tensor_headers_are_asked_for_in_one_round_and_a_long_header_in_a_second():
    blobs = {"b": tensor_blob("b", 10), "a": tensor_blob("a", 5, pad_to=6000)}
    m, by_digest = tensor_manifest(blobs)
    first = files_of(m)
    assert isinstance(first, Needs)
    assert sorted(first.reads, key=lambda r: r.length) == sorted(
        [ByteRequest(d, 0, min(len(b), 4096)) for d, b in by_digest.items()],
        key=lambda r: r.length,
    )
    known = BlobBytes()
    for r in first.reads:
        known.add(r.digest, r.offset, by_digest[r.digest][r.offset : r.offset + r.length])
    second = files_of(m, known)
    long_digest = Digest.of_bytes(blobs["a"])
    assert second == Needs((ByteRequest(long_digest, 0, len(blobs["a"]) - 5),))
    known.add(long_digest, 0, blobs["a"][: len(blobs["a"]) - 5])
    tree = files_of(m, known)
    f = tree.file("model.safetensors")
    data = read_file(f, lambda d, o, n: by_digest[d][o : o + n])
    assert data.endswith(b"\x07" * 15)
    # A read across the generated header and the first tensor's extent.
    header = f.extents[0]
    assert isinstance(header, Generated)
    piece = read_file(f, lambda d, o, n: by_digest[d][o : o + n], header.length - 3, 6)
    assert piece == data[header.length - 3 : header.length + 3]


def test_json_layers_sit_at_their_name_and_an_escaping_name_is_refused():
    blobs = {"w": tensor_blob("w", 4)}
    good = {"mediaType": "application/vnd.ollama.image.json", "digest": dg(5), "size": 3}
    m, by_digest = tensor_manifest(blobs, [dict(good, name="tokenizer.json")])
    known = BlobBytes()
    for d, b in by_digest.items():
        known.add(d, 0, b)
    tree = files_of(m, known)
    assert [f.path for f in tree.files][:2] == ["model.safetensors", "tokenizer.json"]
    bad, _ = tensor_manifest(blobs, [dict(good, name="../../../etc/x/../../..")])
    with pytest.raises(ManifestInvalid, match="leaves"):
        files_of(bad, known)


def test_a_tensor_blob_that_is_not_safetensors_refuses_the_model():
    m, by_digest = tensor_manifest({"w": struct.pack("<Q", 1 << 50) + b"{}" * 10})
    known = BlobBytes()
    for d, b in by_digest.items():
        known.add(d, 0, b)
    with pytest.raises(ManifestInvalid, match="safetensors header"):
        files_of(m, known)


def test_pieces_cover_exactly_the_range_asked():
    d = Digest("a" * 64)
    f = ModelFile("x", (Generated(b"HEAD"), Extent(d, 100, 10), Extent(d, 50, 5)), "")
    assert f.size == 19
    got = [(type(p).__name__, at, n) for p, at, n in f.pieces(2, 14)]
    assert got == [("Generated", 2, 2), ("Extent", 0, 10), ("Extent", 0, 2)]
    assert list(f.pieces(19, 5)) == [] and list(f.pieces(25, 1)) == []


def test_tensor_headers_are_bounded_per_blob_and_in_total(monkeypatch):
    import modelfs.formats.files as files

    big = tensor_blob("w", 4, pad_to=(1 << 20) + 8)
    m, by_digest = tensor_manifest({"w": big})
    known = BlobBytes()
    for d, b in by_digest.items():
        known.add(d, 0, b)
    with pytest.raises(ManifestInvalid, match="is not one tensor's"):
        files_of(m, known)
    monkeypatch.setattr(files, "MAX_TENSOR_HEADERS_BYTES", 200)
    m, by_digest = tensor_manifest({f"t{i}": tensor_blob(f"t{i}", 4, pad_to=64) for i in range(4)})
    known = BlobBytes()
    for d, b in by_digest.items():
        known.add(d, 0, b)
    with pytest.raises(ManifestInvalid, match="add up to"):
        files_of(m, known)


def test_kitops_tar_layers_are_served_member_by_member():
    import io
    import tarfile

    def tar(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    model = tar({"models/w.safetensors": b"W" * 3000})
    docs = tar({"README.md": b"# hi"})
    blobs = {Digest.of_bytes(b): b for b in (model, docs)}
    kit = "application/vnd.kitops.modelkit."
    m = manifest(
        [
            {
                "mediaType": kit + "model.v1.tar",
                "digest": str(Digest.of_bytes(model)),
                "size": len(model),
            },
            {
                "mediaType": kit + "docs.v1.tar",
                "digest": str(Digest.of_bytes(docs)),
                "size": len(docs),
            },
            layer(7, kit + "dataset.v1.tar+gzip"),
        ],
        config_type="application/vnd.kitops.modelkit.config.v1+json",
    )
    first = files_of(m)
    assert isinstance(first, Needs)
    known = BlobBytes()
    for r in first.reads:
        known.add(r.digest, r.offset, blobs[r.digest][r.offset : r.offset + r.length])
    tree = tree_of(m, known)
    assert tree.kind is Kind.KITOPS
    assert paths(tree) == [SIDE_CONFIG, SIDE_MANIFEST, "README.md", "models/w.safetensors"]
    read = lambda d, o, n: blobs[d][o : o + n]  # noqa: E731
    assert read_file(tree.file("models/w.safetensors"), read) == b"W" * 3000
    assert [why for _layer, why in tree.skipped] == [
        "a compressed tar (tar+gzip) cannot be read in place"
    ]


def test_children_list_a_directory_of_the_tree():
    m = manifest(
        [
            layer(1, DMR + "model.file", path="1_Pooling/config.json"),
            layer(2, DMR + "model.file", path="a/b/c.json"),
            layer(3, DMR + "safetensors", path="model.safetensors"),
        ]
    )
    tree = tree_of(m)
    top = tree.children()
    assert list(top) == [".modelfs", "1_Pooling", "a", "model.safetensors"]
    assert top["a"] is None and top["model.safetensors"].path == "model.safetensors"
    assert list(tree.children("a")) == ["b"]
    assert list(tree.children("a/b")) == ["c.json"]
    assert tree.children("nope") == {}


@pytest.mark.parametrize(
    ("quant_type", "packed", "scale"),
    [("int4", "U32", "F16"), ("nvfp4", "U32", "U8"), ("mxfp8", "U8", "U8")],
)
def test_ollama_quantized_tensors_are_laid_out_as_they_are(quant_type, packed, scale):
    """One blob of a weight Ollama quantized (packed, ``.scale`` and ``.bias`` beside it, its
    ``quant_type`` in ``__metadata__``), as ``x/create/quantize.go`` writes it: the laid-out
    file keeps each tensor's name, dtype, shape and bytes (no dequantizing, no renaming), and
    the facts say it is Ollama/MLX-quantized."""
    from safetensors.numpy import load, save

    from modelfs.formats.safetensors import OLLAMA_QUANTIZED, parse_header, safetensors_facts

    dtypes = {"U32": np.uint32, "U8": np.uint8, "F16": np.float16}
    rng = np.random.default_rng(7)
    arrays = {
        "blk.0.w.weight": rng.integers(0, 255, (16, 4)).astype(dtypes[packed]),
        "blk.0.w.weight.scale": rng.integers(0, 255, (16, 2)).astype(dtypes[scale]),
        "blk.0.w.weight.bias": rng.integers(0, 255, (16, 2)).astype(dtypes[scale]),
    }
    quantized = save(arrays, metadata={"quant_type": quant_type, "group_size": "32"})
    norm = save({"norm.weight": np.ones(16, np.float32)})
    m, by_digest = tensor_manifest({"blk.0.w.weight": quantized, "norm.weight": norm})
    known = BlobBytes()
    for d, b in by_digest.items():
        known.add(d, 0, b)
    tree = tree_of(m, known)
    data = read_file(tree.file("model.safetensors"), lambda d, o, n: by_digest[d][o : o + n])
    got = load(data)
    assert sorted(got) == sorted([*arrays, "norm.weight"])
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert np.array_equal(got[name], want), name
    facts = safetensors_facts([parse_header(data, len(data), "laid out")], None)
    assert facts.ollama_quantized
    assert facts.xattrs()["user.modelfs.safetensors.quantized"] == OLLAMA_QUANTIZED.encode()


def _laid_out_from(m, by_digest) -> tuple[ModelTree, BlobBytes]:
    known = BlobBytes()
    while isinstance(found := files_of(m, known), Needs):
        for r in found.reads:
            known.add(r.digest, r.offset, by_digest[r.digest][r.offset : r.offset + r.length])
    return found, known


def test_an_assembled_file_rests_on_the_unchecked_heads_of_its_tensor_blobs():
    blobs = {"a": tensor_blob("a", 5), "b": tensor_blob("b", 10)}
    m, by_digest = tensor_manifest(blobs)
    tree, unchecked = _laid_out_from(m, by_digest)
    rested = resting_on(tree, unchecked)
    f = rested.file("model.safetensors")
    assert {(r.digest, r.offset) for r in f.unchecked} == {(d, 0) for d in by_digest}
    for r in f.unchecked:  # the bytes the layout was built from, as they were read
        assert r.data == by_digest[r.digest][: len(r.data)]
        assert not contradicted(r, by_digest[r.digest][: len(r.data)])
    # The manifest and whole layers rest on nothing; nothing read unchecked, nothing to check.
    assert rested.file(SIDE_MANIFEST).unchecked == ()
    assert resting_on(tree, BlobBytes()) is tree


def test_a_tar_member_rests_only_on_its_own_tars_headers():
    one, two = Digest.of_bytes(b"one"), Digest.of_bytes(b"two")
    member = ModelFile("w", (Extent(one, 512, 10),), "t")
    index = ModelFile("i.json", (Generated(b"{}"),), "")
    other = ModelFile("c", (Extent(two, 512, 3),), "t")
    tree = ModelTree(Kind.MODELPACK, (member, index, other))
    unchecked = BlobBytes()
    unchecked.add(one, 0, b"h1")
    unchecked.add(two, 0, b"h2")
    rested = resting_on(tree, unchecked)
    assert rested.file("w").unchecked == (HeaderBytes(one, 0, b"h1"),)
    assert rested.file("c").unchecked == (HeaderBytes(two, 0, b"h2"),)
    # Generated bytes with no extents (a shards' index) rest on every unchecked range.
    assert set(rested.file("i.json").unchecked) == {
        HeaderBytes(one, 0, b"h1"),
        HeaderBytes(two, 0, b"h2"),
    }


def test_a_lie_in_the_bytes_a_layout_was_built_from_is_a_contradiction():
    r = HeaderBytes(Digest.of_bytes(b"x"), 0, b"\x10\x00header")
    assert not contradicted(r, bytearray(b"\x10\x00header"))
    assert contradicted(r, b"\x10\x00heade\xff")
    assert contradicted(r, b"\x10\x00heade")  # shorter: never equal


# -- an Ollama draft model ---------------------------------------------------------------------


def _draft_model(blobs: dict[str, bytes], with_config: bool = True):
    """A tensor model whose ``draft.*`` tensors and ``draft/`` JSON files are a draft
    model's, as ``ollama create`` with a DRAFT writes them (x/create/draft.go)."""
    json_layers = [
        {"mediaType": "application/vnd.ollama.image.json", "digest": dg(5), "size": 2, "name": n}
        for n in ["config.json", *(["draft/config.json"] if with_config else [])]
    ]
    json_layers[-1]["digest"] = dg(6)
    m, by_digest = tensor_manifest(blobs, json_layers)
    by_digest[Digest(f"{5:064x}")] = b"{}"
    by_digest[Digest(f"{6:064x}")] = b"[]"
    tree, _known = _laid_out_from(m, by_digest)
    return tree, by_digest


def _tensors(tree: ModelTree, path: str, by_digest) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(read_file(tree.file(path), lambda d, o, n: by_digest[d][o : o + n]))


def test_a_draft_models_tensors_are_a_folder_of_their_own():
    """Ollama's draft tensors (``draft.<t>`` in the blob) are ``draft/model.safetensors``
    under their own names, beside the draft's JSON files; the model's file has its own only."""
    blobs = {
        "w": tensor_blob("w", 4),
        "norm": tensor_blob("norm", 2),
        "draft.w": tensor_blob("draft.w", 3),
        "draft.head": tensor_blob("draft.head", 5),
    }
    tree, by_digest = _draft_model(blobs)
    assert paths(tree) == [
        SIDE_CONFIG,
        SIDE_MANIFEST,
        "config.json",
        "draft/config.json",
        "draft/model.safetensors",
        "model.safetensors",
    ]
    main = _tensors(tree, "model.safetensors", by_digest)
    draft = _tensors(tree, "draft/model.safetensors", by_digest)
    assert sorted(main) == ["norm", "w"] and main["w"].shape == (4,)
    assert sorted(draft) == ["head", "w"] and draft["w"].shape == (3,)
    assert tree.children("draft") == {
        "config.json": tree.file("draft/config.json"),
        "model.safetensors": tree.file("draft/model.safetensors"),
    }


def test_a_large_draft_is_sharded_in_its_own_folder():
    blobs = {f"draft.t{i}": tensor_blob(f"draft.t{i}", 64) for i in range(3)}
    blobs["w"] = tensor_blob("w", 64)
    m, by_digest = tensor_manifest(
        blobs,
        [
            {
                "mediaType": "application/vnd.ollama.image.json",
                "digest": dg(6),
                "size": 2,
                "name": "draft/config.json",
            }
        ],
    )
    by_digest[Digest(f"{6:064x}")] = b"{}"
    known = BlobBytes()
    for d, b in by_digest.items():
        known.add(d, 0, b)
    tree = files_of(m, known, shard_bytes=100)
    draft = sorted(p for p in paths(tree) if p.startswith("draft/"))
    assert draft == [
        "draft/config.json",
        "draft/model-00001-of-00003.safetensors",
        "draft/model-00002-of-00003.safetensors",
        "draft/model-00003-of-00003.safetensors",
        "draft/model.safetensors.index.json",
    ]
    index = json.loads(read_file(tree.file("draft/model.safetensors.index.json"), None))
    assert index["weight_map"] == {
        "t0": "model-00001-of-00003.safetensors",
        "t1": "model-00002-of-00003.safetensors",
        "t2": "model-00003-of-00003.safetensors",
    }
    assert "model.safetensors" in paths(tree)


def test_draft_named_tensors_without_a_draft_config_stay_the_models():
    """No ``draft/config.json``: Ollama's runner loads no draft (x/mlxrunner/model/root.go
    ``readDraftConfig``), so ``draft.*`` tensors are the model's, as they are named."""
    blobs = {"w": tensor_blob("w", 4), "draft.w": tensor_blob("draft.w", 3)}
    tree, by_digest = _draft_model(blobs, with_config=False)
    assert "draft/model.safetensors" not in paths(tree)
    assert sorted(_tensors(tree, "model.safetensors", by_digest)) == ["draft.w", "w"]


def test_a_draft_tensor_with_no_name_of_its_own_refuses_the_model():
    blobs = {"w": tensor_blob("w", 4), "draft.": tensor_blob("draft.", 3)}
    with pytest.raises(ManifestInvalid, match=r"a draft tensor is named 'draft\.'"):
        _draft_model(blobs)
