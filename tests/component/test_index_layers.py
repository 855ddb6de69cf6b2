"""``modelfs index`` of a model of many files: one artifact, one chunk index entry for every
layer over a chunk (weights files, tar layers, Ollama's tensor blobs), each blob read once."""

from __future__ import annotations

import json
import random
import shutil
import urllib.request
from pathlib import Path

import blake3
import pytest
from support.modelformats import Artifact, dmr_v01, dmr_v02, modelpack, ollama_tensors, push
from support.mount import run_modelfs

from modelfs.formats.chunks import CHUNK_BYTES, parse_chunk_index
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.referrers import MEDIA_TYPE_OCI_INDEX


def get(url: str, accept: str | None = None) -> bytes:
    headers = {"Accept": accept} if accept else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        return r.read()


def published_index(registry, repo: str, art: Artifact) -> tuple[list[str], dict]:
    """The chunk index listed under the referrers tag of ``art``'s manifest: the digests of
    its entries as listed, and the parsed index."""
    subject = parse_manifest(art.manifest).digest
    listed = json.loads(
        get(f"{registry.url}/v2/{repo}/manifests/{subject.filename}", MEDIA_TYPE_OCI_INDEX)
    )
    assert len(listed["manifests"]) == 1, "more than one artifact"
    artifact = json.loads(
        get(
            f"{registry.url}/v2/{repo}/manifests/{listed['manifests'][0]['digest']}",
            listed["manifests"][0]["mediaType"],
        )
    )
    assert artifact["subject"]["digest"] == str(subject)
    (layer,) = artifact["layers"]
    raw = get(f"{registry.url}/v2/{repo}/blobs/{layer['digest']}")
    entries = [b["digest"] for b in json.loads(raw)["blobs"]]
    return entries, parse_chunk_index(raw, parse_manifest(art.manifest).layers).blobs


@pytest.fixture(scope="module")
def folder(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with its weights at a second path too (as a file: two layers of one blob; in
    a tar: a layer of its own) and a second large file in a subfolder."""
    folder = tmp_path_factory.mktemp("index-layers") / "minilm"
    shutil.copytree(minilm, folder)
    (folder / "copy").mkdir()
    shutil.copy2(folder / "model.safetensors", folder / "copy" / "model.safetensors")
    (folder / "extra").mkdir()
    (folder / "extra" / "big.bin").write_bytes(random.Random(7).randbytes(CHUNK_BYTES + 12345))
    return folder


BUILDS = {
    "dmr-v0.1": dmr_v01,
    "modelpack-tar": lambda f: modelpack(f, raw=False),
    "ollama-tensors": ollama_tensors,
    "dmr-v0.2": dmr_v02,
}


@pytest.mark.parametrize("kind", list(BUILDS))
def test_index_covers_every_large_layer_of_a_folder_model_in_one_artifact(
    registry, proxy, folder, tmp_path, kind
):
    art = BUILDS[kind](folder)
    repo = f"indexed/{kind.replace('.', '-')}"
    push(registry.host, repo, "latest", art)
    layers = parse_manifest(art.manifest).layers
    large = {str(la.digest) for la in layers if la.size > CHUNK_BYTES}
    # Ollama keeps only the tensors: its one large blob is the word embeddings.
    assert len(large) >= (1 if kind == "ollama-tensors" else 2)

    proxy.reset()
    result = run_modelfs("index", f"{proxy.host}/{repo}:latest", "--cache", str(tmp_path / "c"))
    assert "published a chunk index of" in result.stdout + result.stderr

    entries, blobs = published_index(registry, repo, art)
    assert sorted(entries) == sorted(large), "not one entry for each large blob"
    for digest in large:
        data = art.blobs[digest]
        want = [
            blake3.blake3(data[i : i + CHUNK_BYTES]).digest()
            for i in range(0, len(data), CHUNK_BYTES)
        ]
        chunks = next(c for d, c in blobs.items() if str(d) == digest)
        assert list(chunks.hashes) == want, digest
        hex_ = digest.removeprefix("sha256:")
        assert proxy.blob_bytes(hex_) == len(data), f"{digest} read more or less than once"
