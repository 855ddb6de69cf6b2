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


def test_push_mounts_a_blob_the_registry_has_in_another_repository(tmp_path, proxy, small_gguf):
    """As docker push does, without --from: a blob the registry lacks in the target repository
    is offered as a cross-repository mount from the repositories whose cached manifests name it;
    one that answers 202 (it does not have the blob) is cancelled and the next one tried."""
    cache = str(tmp_path / "c")
    pushed = f"{proxy.host}/mountsrc/b-pushed:1"
    run_modelfs("create", pushed, "--gguf", str(small_gguf), "--system", "one", "--cache", cache)
    run_modelfs("push", pushed, "--cache", cache)
    assert proxy.upload_bytes() >= small_gguf.stat().st_size  # the proxy sees what is sent
    # Made here and never pushed: the registry has nothing of it, yet it is tried first.
    local = f"{proxy.host}/mountsrc/a-local:1"
    run_modelfs("create", local, "--gguf", str(small_gguf), "--cache", cache)
    target = f"{proxy.host}/mountdst/second:1"
    run_modelfs("create", target, "--gguf", str(small_gguf), "--system", "two", "--cache", cache)
    proxy.reset()
    r = run_modelfs("push", target, "--cache", cache)
    gguf_hex = sha256(small_gguf)
    offers = [
        (x.status, x.path.rpartition("from=")[2])
        for x in proxy.records()
        if x.method == "POST" and f"mount=sha256%3A{gguf_hex}" in x.path
    ]
    assert offers == [(202, "mountsrc%2Fa-local"), (201, "mountsrc%2Fb-pushed")], offers
    assert any(x.method == "DELETE" and x.status < 300 for x in proxy.records()), (
        "the upload session the 202 opened was left open"
    )
    sent = proxy.upload_bytes()
    assert sent < 64 << 10, f"the {small_gguf.stat().st_size} B GGUF was uploaded again ({sent} B)"
    assert "mounted from mountsrc/b-pushed" in r.stderr, r.stderr
    fresh = tmp_path / "fresh"
    run_modelfs("pull", target, "--cache", str(fresh))
    assert sha256(fresh / "blobs" / f"sha256-{gguf_hex}") == gguf_hex


def test_push_uploads_into_the_session_a_refused_mount_opened(tmp_path, proxy, small_gguf):
    """A mount the registry answers 202 opened an upload session: with no repository left to
    try, the blob goes up in that session (as docker push does), not in a second one."""
    cache = str(tmp_path / "c")
    never = f"{proxy.host}/mountsrc/never-pushed:1"
    target = f"{proxy.host}/mountdst/lone:1"
    for name in (never, target):  # the same blobs: each one's only candidate is `never`
        run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", cache)
    proxy.reset()
    run_modelfs("push", target, "--cache", cache)
    records = proxy.records()
    posts = [x for x in records if x.method == "POST" and "/mountdst/lone/" in x.path]
    blobs = {x.path.rsplit("/", 1)[1] for x in records if x.method == "HEAD"}
    assert len(blobs) >= 3 and [x.status for x in posts] == [202] * len(blobs), posts
    assert all("mount=" in x.path and "from=mountsrc%2Fnever-pushed" in x.path for x in posts)
    patches = [x for x in records if x.method == "PATCH"]
    assert len(patches) == len(blobs) and not [x for x in records if x.method == "DELETE"]
    assert proxy.upload_bytes() >= small_gguf.stat().st_size
    fresh = tmp_path / "fresh"
    run_modelfs("pull", target, "--cache", str(fresh))
    gguf_hex = sha256(small_gguf)
    assert sha256(fresh / "blobs" / f"sha256-{gguf_hex}") == gguf_hex


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
