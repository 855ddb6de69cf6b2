"""Multi-file model artifacts pushed to a real docker-registry as each tool pushes them come
back, through the registry's manifests and blob Range reads, as the same model folder."""

from __future__ import annotations

import httpx
import pytest
from support.modelformats import dmr_v01, dmr_v02, modelpack, ollama_tensors, push, walk

from modelfs.formats.files import BlobBytes, ModelTree, files_of, read_file
from modelfs.formats.manifest import parse_manifest

BUILDS = {
    "dmr-v0.2": dmr_v02,
    "dmr-v0.1": dmr_v01,
    "modelpack-raw": modelpack,
    "modelpack-tar": lambda folder: modelpack(folder, raw=False),
    "ollama-tensors": ollama_tensors,
}


def blob_range(client: httpx.Client, base: str, repo: str, digest, offset: int, n: int) -> bytes:
    r = client.get(
        f"{base}/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={offset}-{offset + n - 1}"}
    )
    assert r.status_code == 206, (r.status_code, digest)
    assert len(r.content) == n
    return r.content


@pytest.mark.parametrize("kind", list(BUILDS))
def test_a_pushed_artifact_reads_back_as_the_folder(registry, minilm, kind):
    art = BUILDS[kind](minilm)
    repo = f"formats/minilm-{kind}"
    push(registry.host, repo, "latest", art)
    base = registry.url
    with httpx.Client(timeout=60) as client:
        got = client.get(f"{base}/v2/{repo}/manifests/latest", headers={"Accept": art.media_type})
        assert got.status_code == 200
        # Stored verbatim: Ollama's descriptor "name", artifactType and annotations survive.
        assert got.content == art.manifest
        manifest = parse_manifest(got.content)
        known = BlobBytes()
        fetched = 0
        for _round in range(10):
            found = files_of(manifest, known)
            if isinstance(found, ModelTree):
                break
            for r in found.reads:
                known.add(
                    r.digest, r.offset, blob_range(client, base, repo, r.digest, r.offset, r.length)
                )
                fetched += r.length
        assert isinstance(found, ModelTree)
        assert fetched < 4 << 20  # headers, never whole weights

        def read(digest, offset, n):
            return blob_range(client, base, repo, digest, offset, n)

        wanted = walk(minilm)
        if kind == "ollama-tensors":
            wanted = [p for p in wanted if "/" not in p and p.endswith(".json")]
        for p in wanted:
            f = found.file(p)
            assert f is not None, p
            assert read_file(f, read) == (minilm / p).read_bytes(), p
        if kind == "ollama-tensors":
            weights = found.file("model.safetensors")
            # The first MiB of the laid-out file, over the header and many tensor blobs.
            head = read_file(weights, read, 0, 1 << 20)
            assert head[8:9] == b"{" and len(head) == 1 << 20
