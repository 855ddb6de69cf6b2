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


def cached_model(cache: BlobCache, layers: list[tuple[str, str, bytes]]):
    """An Ollama tensor model whose config and layers are in ``cache``."""

    def descriptor(media_type: str, data: bytes, name: str | None = None) -> dict:
        digest = Digest.of_bytes(data)
        cache.store_bytes(data, digest)
        d = {"mediaType": media_type, "digest": str(digest), "size": len(data)}
        return d | ({"name": name} if name else {})

    config = json.dumps({"model_format": "safetensors", "file_type": ""}).encode()
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


@pytest.mark.parametrize(
    "draft",
    [
        (a.OLLAMA_TENSOR, "draft.a.weight", b"draft tensor bytes"),
        (a.OLLAMA_JSON, "draft/config.json", b'{"draft":1}'),
    ],
)
@pytest.mark.parametrize("fmt", ["docker", "cncf"])
def test_a_draft_models_tensors_or_files_are_refused(tmp_path, fmt, draft) -> None:
    cache = new_cache(tmp_path)
    manifest = cached_model(cache, [TENSOR, CONFIG, draft])
    with pytest.raises(UsageError) as e:
        ollama_extras(cache, NAME, manifest, fmt)
    assert str(e.value) == (
        f"{NAME}: {draft[1]} is a draft model's: a {fmt} model has no place for a draft model"
    )
