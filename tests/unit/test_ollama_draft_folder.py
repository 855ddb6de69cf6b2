"""A folder with a draft model in ``draft/`` (what the mount shows of an Ollama model made
with a DRAFT) laid out in Ollama's format is that model again: the manifest ``ollama create``
writes with a DRAFT, which the mount shows as the same two folders."""

from __future__ import annotations

import functools
import json
import shutil
from datetime import UTC, datetime

import numpy as np
import pytest
from safetensors.numpy import load, save
from support.modelformats import ollama_tensors

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.folderstore import lay_out, walk_folder
from modelfs.errors import InputInvalid
from modelfs.formats.files import BlobBytes, Needs, files_of, read_file
from modelfs.formats.manifest import parse_manifest

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
WEIGHTS = {"embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}
DRAFT_WEIGHTS = {"embed.weight": np.ones((3, 2), np.float16), "head": np.zeros(3, np.float32)}


def read(cache: BlobCache, digest, offset: int, length: int) -> bytes:
    with open(cache.blob_path(digest), "rb") as f:
        f.seek(offset)
        return f.read(length)


def model(folder, weights, config: dict, extra: dict[str, str] | None = None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(save(weights))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def folders(tmp_path):
    main = model(tmp_path / "main", WEIGHTS, {"architectures": ["BigForCausalLM"]})
    draft = model(
        tmp_path / "draft",
        DRAFT_WEIGHTS,
        {"architectures": ["SmallForCausalLM"]},
        {"tokenizer.json": '{"v":1}'},
    )
    both = tmp_path / "both"
    shutil.copytree(main, both)
    shutil.copytree(draft, both / "draft")
    return main, draft, both


def test_a_draft_folder_is_laid_out_as_ollama_create_writes_a_draft(tmp_path, folders):
    main, draft, both = folders
    cache = BlobCache(tmp_path / "cache")
    raw = lay_out(cache, walk_folder(both), "ollama", created=CREATED)
    assert json.loads(raw) == json.loads(ollama_tensors(main, draft=draft).manifest)
    blobs = functools.partial(read, cache)
    # The mount shows it as the folder it came from.
    manifest = parse_manifest(raw)
    known = BlobBytes()
    while isinstance(tree := files_of(manifest, known), Needs):
        for r in tree.reads:
            known.add(r.digest, r.offset, read(cache, r.digest, r.offset, r.length))
    for path, weights in (
        ("model.safetensors", WEIGHTS),
        ("draft/model.safetensors", DRAFT_WEIGHTS),
    ):
        loaded = load(read_file(tree.file(path), blobs))
        assert sorted(loaded) == sorted(weights), path
        for name, array in weights.items():
            assert np.array_equal(loaded[name], array), (path, name)
    for path in ("config.json", "draft/config.json", "draft/tokenizer.json"):
        assert read_file(tree.file(path), blobs) == (both / path).read_bytes(), path


def test_a_draft_folder_that_names_no_architecture_is_refused(tmp_path, folders):
    _main, _draft, both = folders
    (both / "draft/config.json").write_text("{}")
    with pytest.raises(InputInvalid, match=r"draft architecture not found in draft/config\.json"):
        lay_out(BlobCache(tmp_path / "cache"), walk_folder(both), "ollama", created=CREATED)
