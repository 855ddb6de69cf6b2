"""create → push → pull through a real docker-registry; unlink and ls on the real cache."""

from __future__ import annotations

import hashlib
import os

import pytest
from support.mount import run_modelfs

from modelfs.blobs.blobcache import BlobCache
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, MEDIA_TYPE_MODEL, parse_manifest
from modelfs.formats.names import parse_name


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_create_writes_ollama_layout_with_chunk_index(tmp_path, smollm2_gguf):
    cache = tmp_path / "c"
    run_modelfs(
        "create",
        "127.0.0.1:1/library/m:t",
        "--gguf",
        str(smollm2_gguf),
        "--system",
        "hi",
        "--params",
        '{"num_ctx": 2048}',
        "--cache",
        str(cache),
    )
    manifest_path = cache / "manifests" / "127.0.0.1:1" / "library" / "m" / "t"
    m = parse_manifest(manifest_path.read_bytes())
    model = m.layers_of_type(MEDIA_TYPE_MODEL)[0]
    assert model.digest.hex == sha256(smollm2_gguf)
    assert (cache / "blobs" / model.digest.filename).stat().st_size == smollm2_gguf.stat().st_size
    assert m.layers_of_type(MEDIA_TYPE_CHUNK_INDEX), "a large layer gets a chunk index"
    config = (cache / "blobs" / m.config.digest.filename).read_text()
    assert '"model_family":"llama"' in config and '"file_type":"Q4_1"' in config
    assert '"model_type":"134.52M"' in config
    # Nothing of ours in blobs/ but blobs; no temp files left behind.
    assert all(p.name.startswith("sha256-") for p in (cache / "blobs").iterdir())
    assert not list((cache / ".modelfs" / "tmp").iterdir())


def test_create_refuses_a_file_that_is_not_gguf(tmp_path):
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    r = run_modelfs(
        "create", "a/b:c", "--gguf", str(bogus), "--cache", str(tmp_path / "c"), check=False
    )
    assert r.returncode == 1
    assert r.stderr.startswith("modelfs: not a GGUF file"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "c" / "blobs").exists() or not list((tmp_path / "c" / "blobs").iterdir())


def test_pull_gets_the_whole_model_and_ollama_can_find_it(tmp_path, smollm2_pushed, smollm2_gguf):
    cache = tmp_path / "c"
    r = run_modelfs("pull", smollm2_pushed, "--cache", str(cache))
    assert "pulled" in r.stdout
    bc = BlobCache(cache)
    raw = bc.read_manifest(parse_name(smollm2_pushed))
    assert raw is not None
    m = parse_manifest(raw)
    for layer in m.blobs:
        assert bc.has_blob(layer.digest, layer.size)
    model = m.layers_of_type(MEDIA_TYPE_MODEL)[0]
    assert sha256(bc.blob_path(model.digest)) == sha256(smollm2_gguf)
    assert not list((cache / ".modelfs" / "partial").glob("*.state"))
    # Verified whole here: its chunk index is kept, so it is lazy if read again once evicted.
    assert (cache / ".modelfs" / "indexes" / f"{model.digest.filename}.json").exists()
    # Pulling again fetches nothing.
    again = run_modelfs("pull", smollm2_pushed, "--cache", str(cache))
    assert again.stderr.count("already in the cache") == len(m.blobs)
    ls = run_modelfs("ls", "--cache", str(cache)).stdout
    assert "smollm2:135m" in ls and "100.0%" in ls and "complete" in ls


def test_pull_of_unknown_model_is_one_line(tmp_path, registry):
    r = run_modelfs(
        "pull", f"{registry.host}/library/nothere:1", "--cache", str(tmp_path / "c"), check=False
    )
    assert r.returncode == 1
    assert (
        r.stderr.strip()
        == f"modelfs: model {registry.host}/library/nothere:1 not found on {registry.host}"
    )


def test_push_skips_blobs_the_registry_has(tmp_path, registry, smollm2_pushed, smollm2_gguf):
    cache = tmp_path / "c"
    name = f"{registry.host}/library/smollm2:again"
    run_modelfs(
        "create", name, "--gguf", str(smollm2_gguf), "--system", "other", "--cache", str(cache)
    )
    r = run_modelfs("push", name, "--cache", str(cache))
    # The GGUF and its chunk index are already there from the session's push.
    assert r.stderr.count("already on the registry") >= 2
    assert "uploaded" in r.stderr  # the new system prompt and config


def test_unlink_removes_only_unshared_blobs(tmp_path, smollm2_gguf):
    cache = tmp_path / "c"
    run_modelfs(
        "create",
        "h/library/a:1",
        "--gguf",
        str(smollm2_gguf),
        "--system",
        "one",
        "--cache",
        str(cache),
    )
    run_modelfs(
        "create",
        "h/library/b:1",
        "--gguf",
        str(smollm2_gguf),
        "--system",
        "two",
        "--cache",
        str(cache),
    )
    before = set(os.listdir(cache / "blobs"))
    r = run_modelfs("unlink", "h/library/a:1", "--cache", str(cache))
    assert r.stdout.startswith("deleted h/library/a:1")
    after = set(os.listdir(cache / "blobs"))
    removed = before - after
    # Only the system prompt and config of "a" were unshared.
    assert len(removed) == 2
    gguf_blob = "sha256-" + sha256(smollm2_gguf)
    assert gguf_blob in after
    assert not (cache / "manifests" / "h" / "library" / "a").exists()
    missing = run_modelfs("unlink", "h/library/a:1", "--cache", str(cache), check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("modelfs: model h/library/a:1")


@pytest.mark.parametrize(
    "bad", ["", "a/b/c/d/e", "../etc/passwd", "model:", "MÖDEL", "x y", "a/../b"]
)
def test_invalid_names_are_one_line_errors(tmp_path, bad):
    r = run_modelfs("unlink", bad, "--cache", str(tmp_path), check=False)
    assert r.returncode == 1
    assert r.stderr.startswith('modelfs: invalid model name "'), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
