"""What an Ollama tensor model (as Ollama's registry ships safetensors models) has that a
Docker or ModelPack folder has no place for: refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.ollamafolder import ollama_extras
from modelfs.errors import UsageError
from modelfs.formats import artifacts as a
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import parse_name

NAME = parse_name("registry.example/library/tensors:latest")


def new_cache(tmp_path) -> BlobCache:
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    return cache


def cached_model(cache: BlobCache, layers: list[tuple[str, str, bytes]], **config_says):
    """An Ollama tensor model whose config and layers are in ``cache``."""

    def descriptor(media_type: str, data: bytes, name: str | None = None) -> dict:
        digest = Digest.of_bytes(data)
        cache.store_bytes(data, digest)
        d = {"mediaType": media_type, "digest": str(digest), "size": len(data)}
        return d | ({"name": name} if name else {})

    config = json.dumps({"model_format": "safetensors", "file_type": "", **config_says}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": descriptor("application/vnd.docker.container.image.v1+json", config),
        "layers": [descriptor(t, data, name) for t, name, data in layers],
    }
    return parse_manifest(json.dumps(doc).encode())


TENSOR = (a.OLLAMA_TENSOR, "a.weight", b"tensor bytes")
CONFIG = (a.OLLAMA_JSON, "config.json", b"{}")


@pytest.mark.parametrize("fmt", ["docker", "cncf"])
def test_a_model_of_tensors_and_json_files_has_nothing_to_refuse(tmp_path, fmt) -> None:
    cache = new_cache(tmp_path)
    extras = ollama_extras(cache, NAME, cached_model(cache, [TENSOR, CONFIG]), fmt)
    assert extras.licenses == ()


DRAFT_CONFIG = {
    "model_format": "safetensors",
    "architecture": "Qwen3ForCausalLM",
    "tensor_prefix": "draft.",
    "config": "draft/config.json",
}


@pytest.mark.parametrize(
    ("draft", "config_says", "what"),
    [
        ((a.OLLAMA_JSON, "draft/config.json", b'{"draft":1}'), {}, "draft/config.json"),
        ((a.OLLAMA_TENSOR, "draft.a.weight", b"t"), {"draft": DRAFT_CONFIG}, "its config's draft"),
    ],
    ids=["draft-file", "config-draft"],
)
@pytest.mark.parametrize("fmt", ["docker", "cncf"])
def test_a_draft_model_is_refused(tmp_path, fmt, draft, config_says, what) -> None:
    """A draft model (what the mount shows as its draft/ folder) has no place in a Docker
    or ModelPack model: refused in one line, not merged into model.safetensors."""
    cache = new_cache(tmp_path)
    manifest = cached_model(cache, [TENSOR, CONFIG, draft], **config_says)
    with pytest.raises(UsageError) as e:
        ollama_extras(cache, NAME, manifest, fmt)
    assert str(e.value) == (
        f"{NAME}: {what} is a draft model's: a {fmt} model has no place for a draft model "
        "(push the draft/ folder as a model of its own)"
    )


@pytest.mark.parametrize("fmt", ["docker", "cncf"])
def test_draft_named_tensors_of_a_model_without_a_draft_are_its_own(tmp_path, fmt) -> None:
    """Without a draft config Ollama loads no draft, and the mount lays ``draft.*`` tensors
    into model.safetensors (formats/files.py ``has_draft``): so does ``push --format``."""
    cache = new_cache(tmp_path)
    manifest = cached_model(cache, [TENSOR, CONFIG, (a.OLLAMA_TENSOR, "draft.a.weight", b"t")])
    assert ollama_extras(cache, NAME, manifest, fmt).licenses == ()


@pytest.mark.parametrize("value", ['"big"', "0", "true", "4294967296"])
def test_a_num_ctx_that_is_no_context_size_is_refused(tmp_path, value) -> None:
    from modelfs.errors import ManifestInvalid
    from modelfs.formats.manifest import MEDIA_TYPE_PARAMS

    cache = new_cache(tmp_path)
    params = (MEDIA_TYPE_PARAMS, "", f'{{"num_ctx":{value}}}'.encode())
    manifest = cached_model(cache, [TENSOR, CONFIG, params])
    with pytest.raises(ManifestInvalid, match=r"num_ctx .* is not a context size"):
        ollama_extras(cache, NAME, manifest, "docker")
