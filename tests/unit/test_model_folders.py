"""A real model folder (all-MiniLM-L6-v2) pushed as each tool pushes it comes back, through
``files_of`` and extents over the blobs, as the same folder an engine loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from support.modelformats import (
    Artifact,
    dmr_v01,
    dmr_v02,
    lay_out,
    modelpack,
    ollama_tensors,
    walk,
    with_created,
)

from modelfs.formats.artifacts import Kind
from modelfs.formats.files import (
    SIDE_CONFIG,
    SIDE_MANIFEST,
    BlobBytes,
    ByteRequest,
    ModelTree,
    files_of,
    model_time_ns,
    read_file,
    with_config_read,
)
from modelfs.formats.manifest import parse_manifest


def materialize(tree: ModelTree, art: Artifact, dest: Path) -> Path:
    for f in tree.files:
        path = dest / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read_file(f, art.read))
        assert path.stat().st_size == f.size
    return dest


def model_files(tree: ModelTree) -> list[str]:
    return sorted(f.path for f in tree.files if not f.path.startswith(".modelfs/"))


def assert_same_files(tree: ModelTree, art: Artifact, folder: Path, paths: list[str]) -> None:
    for p in paths:
        f = tree.file(p)
        assert read_file(f, art.read) == (folder / p).read_bytes(), f"{p} differs"


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (dmr_v02, Kind.DMR_V02),
        (modelpack, Kind.MODELPACK),
        (lambda folder: modelpack(folder, raw=False), Kind.MODELPACK),
        (dmr_v01, Kind.DMR_V01),
    ],
    ids=["dmr-v0.2", "modelpack-raw", "modelpack-tar", "dmr-v0.1"],
)
def test_every_file_of_the_folder_comes_back_byte_for_byte(minilm, build, kind):
    art = build(minilm)
    tree, rounds, asked = lay_out(art)
    assert tree.kind is kind
    assert model_files(tree) == sorted(walk(minilm))
    assert_same_files(tree, art, minilm, walk(minilm))
    # Tar layers cost header reads only, never the members' data (90 MB here for modctl's tar).
    assert asked < 4 << 20
    assert rounds <= 2
    # The artifact's config and manifest are beside the model, never its config.json.
    config = tree.file(SIDE_CONFIG)
    assert read_file(config, art.read) == art.blobs[str(parse_manifest(art.manifest).config.digest)]
    assert read_file(tree.file(SIDE_MANIFEST), art.read) == art.manifest


@pytest.mark.parametrize("build", [dmr_v02, modelpack, lambda f: modelpack(f, raw=False)])
def test_mode_and_mtime_come_from_the_artifact(minilm, build):
    tree, _, _ = lay_out(build(minilm))
    for p in walk(minilm):
        st = (minilm / p).stat()
        f = tree.file(p)
        assert f.mode == st.st_mode & 0o777
        assert f.mtime_ns == int(st.st_mtime) * 1_000_000_000


def test_a_v02_file_is_its_whole_layer(minilm):
    art = dmr_v02(minilm)
    tree, rounds, asked = lay_out(art)
    assert (rounds, asked) == (0, 0)
    weights = tree.file("model.safetensors")
    assert weights.layer is not None and weights.layer.size == weights.size
    assert weights.layer.media_type == "application/vnd.docker.ai.safetensors"


def test_ollama_tensors_become_a_safetensors_file_engines_load(minilm, tmp_path):
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    art = ollama_tensors(minilm)
    tree, rounds, asked = lay_out(art)
    assert tree.kind is Kind.OLLAMA_TENSORS
    # Only the tensor blobs' headers were read: one round, a few KiB per tensor.
    tensor_layers = [
        layer
        for layer in parse_manifest(art.manifest).layers
        if layer.media_type.endswith(".tensor")
    ]
    assert rounds == 1 and asked <= 4096 * len(tensor_layers)
    # Ollama keeps the top-level JSON files only.
    top_json = [p for p in walk(minilm) if "/" not in p and p.endswith(".json")]
    assert model_files(tree) == sorted([*top_json, "model.safetensors"])
    assert_same_files(tree, art, minilm, top_json)

    out = materialize(tree, art, tmp_path / "model")
    loaded = load_file(out / "model.safetensors")
    source = load_file(minilm / "model.safetensors")
    assert sorted(loaded) == sorted(source)
    for name, array in source.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name
    # The same manifest gives the same bytes.
    again, _, _ = lay_out(art)
    assert again.file("model.safetensors") == tree.file("model.safetensors")

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert (
        tok.encode("hello world").ids
        == Tokenizer.from_file(str(minilm / "tokenizer.json")).encode("hello world").ids
    )
    config = transformers.AutoConfig.from_pretrained(out)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert auto("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_an_ollama_draft_model_is_a_folder_engines_load(minilm, tmp_path):
    """A model created with a DRAFT (here MiniLM as its own draft): the draft's tensors
    (``draft.<t>``) are ``draft/model.safetensors`` under their own names beside its JSON
    files, a folder transformers loads as it loads the model's; the model's file has none."""
    transformers = pytest.importorskip("transformers")
    art = ollama_tensors(minilm, draft=minilm)
    tree, rounds, _asked = lay_out(art)
    assert rounds == 1
    top_json = [p for p in walk(minilm) if "/" not in p and p.endswith(".json")]
    assert model_files(tree) == sorted(
        [
            *top_json,
            "model.safetensors",
            *(f"draft/{p}" for p in top_json),
            "draft/model.safetensors",
        ]
    )
    out = materialize(tree, art, tmp_path / "model")
    source = load_file(minilm / "model.safetensors")
    for path in ("model.safetensors", "draft/model.safetensors"):
        loaded = load_file(out / path)
        assert sorted(loaded) == sorted(source), path
        for name, array in source.items():
            assert np.array_equal(loaded[name], array), (path, name)
    draft = transformers.AutoConfig.from_pretrained(out / "draft")
    assert (draft.model_type, draft.num_hidden_layers) == ("bert", 6)
    auto = transformers.AutoTokenizer.from_pretrained(out / "draft")
    assert auto("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_ollama_tensors_shard_past_the_size_with_an_index_transformers_reads(minilm, tmp_path):
    art = ollama_tensors(minilm)
    tree, _, _ = lay_out(art, shard_bytes=32 << 20)
    out = materialize(tree, art, tmp_path / "model")
    index = json.loads((out / "model.safetensors.index.json").read_bytes())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 1
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()
    source = load_file(minilm / "model.safetensors")
    loaded = {}
    for shard in shards:
        part = load_file(out / shard)
        # Over the shard size only when one tensor alone is (the 47 MB word embeddings).
        assert len(part) == 1 or sum(a.nbytes for a in part.values()) <= 32 << 20
        assert os.path.getsize(out / shard) == tree.file(shard).size
        loaded.update(part)
    assert sorted(loaded) == sorted(source) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in source.values())
    for name, array in source.items():
        assert np.array_equal(loaded[name], array), name


def test_transformers_loads_the_materialized_folders(minilm, tmp_path):
    transformers = pytest.importorskip("transformers")
    for i, build in enumerate((dmr_v02, dmr_v01, modelpack)):
        art = build(minilm)
        tree, _, _ = lay_out(art)
        out = materialize(tree, art, tmp_path / str(i))
        assert transformers.AutoConfig.from_pretrained(out).num_hidden_layers == 6
        assert transformers.AutoTokenizer.from_pretrained(out)("hello")["input_ids"] == [
            101,
            7592,
            102,
        ]


@pytest.mark.parametrize("annotation", [False, True], ids=["config-created", "annotation"])
def test_an_assembled_file_is_as_old_as_the_model(minilm, annotation):
    """model.safetensors made of Ollama's tensor blobs has the model's time (its config's
    ``created`` or the manifest's ``org.opencontainers.image.created``), not the mount's."""
    art = with_created(
        ollama_tensors(minilm), "2025-03-04T05:06:07.123456789Z", annotation=annotation
    )
    manifest = parse_manifest(art.manifest)
    known = BlobBytes()
    first = with_config_read(files_of(manifest, known), manifest, known)
    # The config is asked for with the tensor headers, in the same round.
    assert ByteRequest(manifest.config.digest, 0, manifest.config.size) in first.reads
    for r in first.reads:
        known.add(r.digest, r.offset, art.read(r.digest, r.offset, r.length))
    tree = files_of(manifest, known)
    want = 1741064767_123456789
    assert tree.file("model.safetensors").mtime_ns == want
    # A file that is one layer whole keeps the time layer files have always had.
    assert tree.file("config.json").layer is not None
    assert tree.file("config.json").mtime_ns is None


def test_an_assembled_file_of_a_model_that_says_no_time_gets_none(minilm):
    art = ollama_tensors(minilm)  # Ollama's ConfigV2 has no time
    manifest = parse_manifest(art.manifest)
    known = BlobBytes()
    known.add(manifest.config.digest, 0, art.read(manifest.config.digest, 0, manifest.config.size))
    tree, _, _ = lay_out(art)
    assert model_time_ns(manifest, known) is None
    assert tree.file("model.safetensors").mtime_ns is None


def test_a_layout_that_reads_no_blob_reads_no_config(minilm):
    art = dmr_v02(minilm)
    manifest = parse_manifest(art.manifest)
    found = files_of(manifest, BlobBytes())
    assert isinstance(found, ModelTree)
    assert with_config_read(found, manifest, BlobBytes()) is found
