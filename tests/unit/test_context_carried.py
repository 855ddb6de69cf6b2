"""One rule for a context size a model carries when ``push --format`` lays it out again
(formats/folderpack.py ``carried_context``): kept where the target has a field for it
(Docker's ``context_size``, Ollama's ``num_ctx``), left out with one warning in ModelPack,
which has none, whichever model it came from."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import numpy as np
import pytest
from safetensors.numpy import save

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.folderstore import lay_out, layout_cached, walk_folder
from modelfs.formats import folderpack as fp
from modelfs.formats.manifest import MEDIA_TYPE_PARAMS, parse_manifest
from modelfs.formats.modelfile import parse_modelfile
from modelfs.formats.names import parse_name

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
OWN_CONTEXT = 512  # config.json's: what the folder says itself


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "max_position_embeddings": OWN_CONTEXT})
    )
    (folder / "model.safetensors").write_bytes(save({"w": np.arange(8, dtype=np.float32)}))
    return folder


def cached(cache: BlobCache, folder, fmt: str, modelfile: str, name: str):
    """The folder created as ``fmt`` with the Modelfile's lines, as ``modelfs create``."""
    extras = fp.modelfile_extras(parse_modelfile(f"FROM ./m\n{modelfile}"), fmt, "Modelfile")
    raw = lay_out(cache, walk_folder(folder), fmt, created=CREATED, extras=extras)
    cache.write_manifest(parse_name(name), raw)
    return parse_manifest(raw)


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def config_of(cache: BlobCache, manifest) -> dict:
    return json.loads(cache.blob_path(manifest.config.digest).read_bytes())


def params_of(cache: BlobCache, manifest) -> dict | None:
    layer = next((x for x in manifest.layers if x.media_type == MEDIA_TYPE_PARAMS), None)
    return None if layer is None else json.loads(cache.blob_path(layer.digest).read_bytes())


SOURCES = {
    # The model's format, how a context size was given to it, what the warning calls it.
    "docker": ("PARAMETER num_ctx 4096\n", "the Docker config's context_size"),
    "ollama": ("PARAMETER num_ctx 4096\n", "the Ollama params' num_ctx"),
}


@pytest.mark.parametrize("have", list(SOURCES))
def test_a_context_size_is_left_out_of_modelpack_with_one_warning(tmp_path, folder, caplog, have):
    """Docker's context_size and Ollama's num_ctx alike: ModelPack has no field for it, so
    the push lays the model out without it and says so once (as Docker Model Runner's own
    conversion to --format cncf leaves context_size out), instead of refusing one of them."""
    cache = BlobCache(tmp_path / "cache")
    name = f"registry.example/m/{have}:latest"
    manifest = cached(cache, folder, have, SOURCES[have][0], name)
    with caplog.at_level(logging.INFO):
        cncf = layout_cached(cache, parse_name(name), manifest, fp.CNCF, CREATED)
    assert warnings(caplog) == [
        f"{name}: ModelPack has no context size: num_ctx 4096 ({SOURCES[have][1]}) left out"
    ]
    assert "context" not in json.dumps(config_of(cache, cncf))


@pytest.mark.parametrize(("have", "fmt"), [("docker", fp.OLLAMA), ("ollama", fp.DOCKER)])
def test_a_context_size_is_carried_where_the_target_has_a_field(
    tmp_path, folder, caplog, have, fmt
):
    """Docker's context_size becomes Ollama's num_ctx and back, without a warning."""
    cache = BlobCache(tmp_path / "cache")
    name = f"registry.example/m/{have}:latest"
    manifest = cached(cache, folder, have, SOURCES[have][0], name)
    with caplog.at_level(logging.INFO):
        laid = layout_cached(cache, parse_name(name), manifest, fmt, CREATED)
    assert warnings(caplog) == []
    if fmt == fp.OLLAMA:
        assert params_of(cache, laid) == {"num_ctx": 4096}
    else:
        assert config_of(cache, laid)["config"]["context_size"] == 4096


@pytest.mark.parametrize("have", list(SOURCES))
def test_a_model_without_a_context_size_of_its_own_warns_of_nothing(tmp_path, folder, caplog, have):
    """Only a context size the model was given is named: the folder's own (config.json's,
    which Docker's config repeats) goes with config.json."""
    cache = BlobCache(tmp_path / "cache")
    name = f"registry.example/m/{have}-plain:latest"
    manifest = cached(cache, folder, have, "", name)
    with caplog.at_level(logging.INFO):
        layout_cached(cache, parse_name(name), manifest, fp.CNCF, CREATED)
    assert warnings(caplog) == []


def test_a_context_size_asked_for_with_format_cncf_is_refused():
    """Asked for in the same command (create --format cncf with PARAMETER num_ctx), a
    context size ModelPack cannot hold is refused, as DMR refuses --context-size with
    --format cncf: nothing was there to lose yet."""
    from modelfs.formats.modelfile import ModelfileInvalid

    with pytest.raises(ModelfileInvalid, match="PARAMETER num_ctx cannot go into a cncf"):
        fp.modelfile_extras(parse_modelfile("FROM ./m\nPARAMETER num_ctx 4096\n"), fp.CNCF, "M")


@pytest.mark.parametrize(
    ("fmt", "kept", "warned"),
    [(fp.DOCKER, 8192, False), (fp.OLLAMA, 8192, False), (fp.CNCF, None, True)],
)
def test_the_rule(fmt, kept, warned):
    got, warning = fp.carried_context(fmt, 8192, "m", "its num_ctx")
    assert got == kept and (warning is not None) == warned
    if warned:
        assert warning == "m: ModelPack has no context size: num_ctx 8192 (its num_ctx) left out"
