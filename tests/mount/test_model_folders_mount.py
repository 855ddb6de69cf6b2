"""Models of many files, pushed as each tool pushes them, mounted as the folder an engine loads."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from mount.test_mount import wait_for
from safetensors.numpy import load_file
from support.modelformats import (
    OCI_MANIFEST,
    Artifact,
    dmr_v01,
    dmr_v02,
    modelpack,
    ollama_tensors,
    push,
    walk,
)
from support.mount import run_modelfs

from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.fs.mountctl import blobs_view_path

SIDE_FILES = [".modelfs/config.json", ".modelfs/manifest.json"]
BUILDS = {"dmr-v0.2": dmr_v02, "modelpack-raw": modelpack}


def mounted_paths(tag: Path) -> list[str]:
    """What ``ls -R`` shows: every file under the tag directory, relative."""
    out = []
    for root, _dirs, files in os.walk(tag):
        out += [os.path.relpath(os.path.join(root, f), tag) for f in files]
    return sorted(out)


def blob_hex(art, path: str, folder: Path) -> str:
    data = (folder / path).read_bytes()
    return next(d for d, b in art.blobs.items() if b == data).removeprefix("sha256:")


def assert_tokenizer_and_engines_load(tag: Path, minilm: Path) -> None:
    """tokenizers, and transformers' AutoConfig and AutoTokenizer, load the mounted MiniLM
    folder as they load the source."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tag / "tokenizer.json"))
    want = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    assert tokenizer.encode("hello world").ids == want.encode("hello world").ids
    loaded = engine_loads(tag)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.startswith("6 [101, 7592, 2088, 102]"), loaded.stdout


def engine_loads(tag: Path) -> subprocess.CompletedProcess[str]:
    """transformers' AutoConfig and AutoTokenizer on the mounted folder, offline."""
    code = (
        "import sys, transformers\n"
        "c = transformers.AutoConfig.from_pretrained(sys.argv[1])\n"
        "t = transformers.AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(c.num_hidden_layers, t('hello world')['input_ids'])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, str(tag)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_same_tensors(mounted: Path, source: Path) -> None:
    got, want = load_file(str(mounted)), load_file(str(source))
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and np.array_equal(got[name], tensor), name


@pytest.mark.parametrize("kind", list(BUILDS))
def test_a_folder_model_mounts_as_its_folder(proxy, registry, mount_factory, minilm, kind):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")

    art = BUILDS[kind](minilm)
    push(registry.host, f"folders/minilm-{kind}", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / f"folders/minilm-{kind}/latest"

    # ls -R: the folder's own paths, nested directories included, and the artifact's
    # config and manifest out of the way under .modelfs/.
    assert mounted_paths(tag) == sorted(walk(minilm) + SIDE_FILES)
    assert "1_Pooling" in os.listdir(tag) and (tag / "1_Pooling").is_dir()
    # ls -l: sizes, read-only modes and the files' own times, without fetching a byte of them.
    weights_hex = blob_hex(art, "model.safetensors", minilm)
    for p in walk(minilm):
        st, src = os.lstat(tag / p), (minilm / p).stat()
        assert stat.S_ISREG(st.st_mode), p
        assert st.st_size == src.st_size, p
        assert stat.S_IMODE(st.st_mode) == 0o444, p
        assert int(st.st_mtime) == int(src.st_mtime), p
    assert proxy.blob_bytes(weights_hex) == 0, "ls -l fetched weight bytes"
    manifest = json.loads((tag / ".modelfs/manifest.json").read_bytes())
    assert manifest["layers"][0]["annotations"]["org.cncf.model.filepath"]

    for p in walk(minilm):
        if p != "model.safetensors":
            assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
    assert_tokenizer_and_engines_load(tag, minilm)


def test_a_corrupted_byte_in_a_folder_model_is_eio(proxy, registry, mount_factory, minilm):
    art = dmr_v02(minilm)
    push(registry.host, "folders/minilm-flip", "latest", art)
    m = mount_factory()
    m.expect_log(r"does not match its digest")
    tag = m.mountpoint / proxy.host / "folders/minilm-flip/latest"
    proxy.set_faults([{"path": blob_hex(art, "tokenizer.json", minilm), "flip_at": 1000}])
    with pytest.raises(OSError) as info:
        (tag / "tokenizer.json").read_bytes()
    assert info.value.errno == errno.EIO
    proxy.clear_faults()
    assert (tag / "tokenizer.json").read_bytes() == (minilm / "tokenizer.json").read_bytes()


def test_a_complete_file_in_a_model_directory_links_to_its_blob(
    proxy, registry, mount_factory, minilm
):
    art = dmr_v02(minilm)
    push(registry.host, "folders/minilm-links", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-links/latest"
    pooling = tag / "1_Pooling/config.json"
    want = (minilm / "1_Pooling/config.json").read_bytes()
    assert not pooling.is_symlink()
    assert pooling.read_bytes() == want
    hex_ = blob_hex(art, "1_Pooling/config.json", minilm)
    wait_for((m.cache / "blobs" / f"sha256-{hex_}").exists, "the blob to be published")
    wait_for(pooling.is_symlink, "1_Pooling/config.json to become a link")
    # One directory deeper than a tag's own files: the link is absolute, into the read-only
    # view of blobs/, all the same.
    assert os.readlink(pooling) == f"{blobs_view_path(m.mountpoint)}/sha256-{hex_}"
    assert pooling.read_bytes() == want


def test_ollama_tensor_blobs_mount_as_one_safetensors_file(proxy, registry, mount_factory, minilm):
    pytest.importorskip("transformers")
    art = ollama_tensors(minilm)
    push(registry.host, "folders/minilm-tensors", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-tensors/latest"
    tops = sorted(p for p in walk(minilm) if "/" not in p and p.endswith(".json"))
    assert mounted_paths(tag) == sorted([*tops, "model.safetensors", *SIDE_FILES])
    st = os.stat(tag / "model.safetensors")
    assert stat.S_IMODE(st.st_mode) == 0o444
    # The laid-out file: a generated header, then every tensor read from its own blob.
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
    with open(tag / "model.safetensors", "rb") as f:
        f.seek(st.st_size - 4096)
        assert len(f.read()) == 4096
    for p in tops:
        assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
    # tokenizers, and transformers' AutoConfig and AutoTokenizer, from the mounted folder.
    pytest.importorskip("tokenizers")

    assert_tokenizer_and_engines_load(tag, minilm)


def test_an_ollama_draft_model_mounts_as_two_folders(proxy, registry, mount_factory, minilm):
    """A model created with a DRAFT (MiniLM as its own draft): the tag directory is the
    model's folder with the draft's folder ``draft/`` in it, each with its JSON files and its
    own ``model.safetensors`` that safetensors reads as the source's tensors."""
    art = ollama_tensors(minilm, draft=minilm)
    push(registry.host, "folders/minilm-draft", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-draft/latest"
    tops = sorted(p for p in walk(minilm) if "/" not in p and p.endswith(".json"))
    folder = [*tops, "model.safetensors"]
    assert mounted_paths(tag) == sorted([*folder, *(f"draft/{p}" for p in folder), *SIDE_FILES])
    for model in (tag, tag / "draft"):
        assert_same_tensors(model / "model.safetensors", minilm / "model.safetensors")
        for p in tops:
            assert (model / p).read_bytes() == (minilm / p).read_bytes(), (model, p)


@pytest.mark.parametrize(
    ("fmt", "config_type"),
    [
        ("docker", "application/vnd.docker.ai.model.config.v0.2+json"),
        ("cncf", "application/vnd.cncf.model.config.v1+json"),
    ],
)
def test_an_ollama_tensor_model_pushed_again_as_a_folder_model_mounts_as_its_folder(
    proxy, registry, mount_factory, minilm, tmp_path, fmt, config_type
):
    """A safetensors model as Ollama's registry ships it (a blob per tensor), pulled and pushed
    again with ``--format docker|cncf``: the artifact mounts as the folder an engine loads,
    its weights one file whose tensors are the source's."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    push(registry.host, "folders/minilm-ollama", "latest", ollama_tensors(minilm))
    cache = tmp_path / "cache"
    source = f"{registry.host}/folders/minilm-ollama:latest"
    run_modelfs("pull", source, "--cache", str(cache))
    pushed = run_modelfs(
        "push", f"{registry.host}/folders/minilm-relaid-{fmt}:latest", "--from", source,
        "--format", fmt, "--cache", str(cache),
    )  # fmt: skip
    assert "Traceback" not in pushed.stderr
    m = mount_factory()
    tag = m.mountpoint / proxy.host / f"folders/minilm-relaid-{fmt}/latest"
    manifest = json.loads((tag / ".modelfs/manifest.json").read_bytes())
    assert manifest["config"]["mediaType"] == config_type
    tops = sorted(p for p in walk(minilm) if "/" not in p and p.endswith(".json"))
    assert mounted_paths(tag) == sorted([*tops, "model.safetensors", *SIDE_FILES])
    for p in tops:
        assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
    assert_tokenizer_and_engines_load(tag, minilm)


def test_a_corrupted_tensor_blob_is_eio_never_a_file_laid_out_from_its_bytes(
    proxy, registry, mount_factory, minilm
):
    art = ollama_tensors(minilm)
    push(registry.host, "folders/minilm-tensors-flip", "latest", art)
    m = mount_factory()
    m.expect_log(r"whole-blob sha256 is .* discarding the fetched data")
    m.expect_log(r"does not match its digest")
    tag = m.mountpoint / proxy.host / "folders/minilm-tensors-flip/latest"
    # The largest tensor blob (the word embeddings) has no chunk index: its header is read
    # unchecked for the listing, and trusted for the file only once the whole blob has
    # matched its digest and agrees with it.
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    proxy.set_faults([{"path": big.removeprefix("sha256:"), "flip_at": len(art.blobs[big]) - 9}])
    assert "model.safetensors" in os.listdir(tag)
    with open(tag / "model.safetensors", "rb") as f, pytest.raises(OSError) as info:
        f.read(8)
    assert info.value.errno == errno.EIO, "a file laid out from an unchecked blob was served"
    proxy.clear_faults()
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


NO_INDEX_LAYOUTS = {
    "ollama-tensors": ollama_tensors,
    "modelpack-tar": lambda f: modelpack(f, raw=False),
}


@pytest.mark.parametrize("kind", list(NO_INDEX_LAYOUTS))
def test_listing_a_model_without_any_index_fetches_no_weights(
    proxy, registry, mount_factory, minilm, kind
):
    """ls -l of a model whose files are laid out from its blobs' headers (Ollama's tensor
    blobs, a ModelPack tar) with no chunk index anywhere: the headers are read unchecked,
    the weights are not fetched; reading the files checks the headers first."""
    art = NO_INDEX_LAYOUTS[kind](minilm)
    repo = f"folders/minilm-lazy-{kind}"
    push(registry.host, repo, "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / repo / "latest"
    for p in mounted_paths(tag):  # ls -l
        os.stat(tag / p)
    weights = minilm / "model.safetensors"
    assert os.stat(tag / "model.safetensors").st_size == weights.stat().st_size
    listed = proxy.blob_bytes()
    assert listed < CHUNK_BYTES, f"ls -l fetched {listed} bytes of blobs: the weights"
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


def test_a_registry_lying_in_a_tensor_header_read_gives_eio_then_the_right_file(
    proxy, registry, mount_factory, minilm
):
    """The head of a tensor blob the layout was read from differs from the blob itself
    (checked whole when the file is first read): EIO, the layout is dropped, and the next
    open lays the model out again from the checked blob."""
    art = ollama_tensors(minilm)
    push(registry.host, "folders/minilm-tensors-lie", "latest", art)
    m = mount_factory()
    m.expect_log(r"was laid out from bytes .* that its checked blob contradicts")
    tag = m.mountpoint / proxy.host / "folders/minilm-tensors-lie/latest"
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    # Only the first request of that blob lies: the unchecked read of its head.
    proxy.set_faults([{"path": big.removeprefix("sha256:"), "flip_at": 4000, "times": 1}])
    assert "model.safetensors" in os.listdir(tag)
    with open(tag / "model.safetensors", "rb") as f, pytest.raises(OSError) as info:
        f.read(8)
    assert info.value.errno == errno.EIO, "a file laid out from a lie was served"
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


# Same-size dtypes: a header naming the other one is valid JSON and a valid layout.
SAME_SIZE_DTYPE = {b"F32": b"I32", b"I32": b"F32", b"F16": b"I16", b"I16": b"F16"}


def test_a_tensor_header_lie_that_still_parses_gives_eio_then_the_right_file(
    proxy, registry, mount_factory, minilm
):
    """A lie no parser can see: the head of the biggest tensor blob, read unchecked to lay the
    model out, names another dtype of the same size (valid JSON, a valid layout, the same file
    size; an engine would load garbage). Its bytes are checked before any is served: EIO, and
    the next open lays the model out from the checked blob."""
    art = ollama_tensors(minilm)
    push(registry.host, "folders/minilm-tensors-dtype-lie", "latest", art)
    m = mount_factory()
    m.expect_log(r"was laid out from bytes .* that its checked blob contradicts")
    tag = m.mountpoint / proxy.host / "folders/minilm-tensors-dtype-lie/latest"
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    at = art.blobs[big].index(b'"dtype":"') + len(b'"dtype":"')
    dtype = art.blobs[big][at : at + 3]
    lie = SAME_SIZE_DTYPE[dtype]
    proxy.set_faults(
        [{"path": big.removeprefix("sha256:"), "flip_at": at, "replace_hex": lie.hex(), "times": 1}]
    )
    assert (
        os.stat(tag / "model.safetensors").st_size == (minilm / "model.safetensors").stat().st_size
    )
    # The head was read (through the lie: the rule's one request covering its offset).
    assert proxy.blob_bytes(big.removeprefix("sha256:")) > 0
    with open(tag / "model.safetensors", "rb") as f, pytest.raises(OSError) as info:
        f.read(8)
    assert info.value.errno == errno.EIO, "a file laid out from a lie was served"
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


def test_a_tar_header_lie_that_still_parses_gives_eio_then_the_right_member(
    proxy, registry, mount_factory, minilm
):
    """The head of a ModelPack tar layer, read unchecked to list its member, says another
    mtime (a digit of its PAX record: still a valid tar). The listing shows the lie; the
    member's bytes are not served from that layout: EIO, then the right member and time."""
    art = modelpack(minilm, raw=False)
    push(registry.host, "folders/minilm-tar-lie", "latest", art)
    m = mount_factory()
    m.expect_log(r"was laid out from bytes .* that its checked blob contradicts")
    tag = m.mountpoint / proxy.host / "folders/minilm-tar-lie/latest"
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    at = art.blobs[big].index(b" mtime=") + len(b" mtime=") + 2
    lie = bytes([art.blobs[big][at] ^ 1])  # a digit stays a digit
    proxy.set_faults(
        [{"path": big.removeprefix("sha256:"), "flip_at": at, "replace_hex": lie.hex(), "times": 1}]
    )
    source = minilm / "model.safetensors"
    listed = os.stat(tag / "model.safetensors")
    assert listed.st_size == source.stat().st_size
    assert int(listed.st_mtime) != int(source.stat().st_mtime), "the lie did not reach the listing"
    with open(tag / "model.safetensors", "rb") as f, pytest.raises(OSError) as info:
        f.read(8)
    assert info.value.errno == errno.EIO, "a member laid out from a lie was served"
    assert_same_tensors(tag / "model.safetensors", source)
    wait_for(
        lambda: int(os.stat(tag / "model.safetensors").st_mtime) == int(source.stat().st_mtime),
        "the listing to show the checked blob's time",
    )


def test_dmr_v01_config_tar_members_are_files(proxy, registry, mount_factory, minilm):
    art = dmr_v01(minilm)
    push(registry.host, "folders/minilm-v01", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-v01/latest"
    assert mounted_paths(tag) == sorted(walk(minilm) + SIDE_FILES)
    # ls -l: the tars' headers are read (their members' sizes), the weights are not.
    for p in walk(minilm):
        assert os.stat(tag / p).st_size == (minilm / p).stat().st_size, p
    assert proxy.blob_bytes(blob_hex(art, "model.safetensors", minilm)) == 0
    for p in walk(minilm):
        if p != "model.safetensors":  # a tar member: its bytes and its header's time
            assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
            assert int(os.stat(tag / p).st_mtime) == int((minilm / p).stat().st_mtime), p
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


def test_modelpack_tar_layers_show_their_members(proxy, registry, mount_factory, minilm):
    art = modelpack(minilm, raw=False)
    push(registry.host, "folders/minilm-modelpack-tar", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-modelpack-tar/latest"
    assert mounted_paths(tag) == sorted(walk(minilm) + SIDE_FILES)
    for p in walk(minilm):
        assert os.stat(tag / p).st_size == (minilm / p).stat().st_size, p
        if p != "model.safetensors":
            assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
    # A member of a 90 MB tar blob: a range of it, read through the blob's own handle.
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


INDEXED_BUILDS = {"dmr-v0.2": dmr_v02, "modelpack-tar": lambda f: modelpack(f, raw=False)}


@pytest.mark.parametrize("kind", list(INDEXED_BUILDS))
def test_an_index_published_beside_a_folder_model_makes_its_weights_lazy_and_verified(
    proxy, registry, mount_factory, minilm, tmp_path, kind
):
    """``modelfs index`` of a folder pushed without an index (model.safetensors a layer of
    its own, or a member of a tar layer): a fresh mount reads one tensor's range of it chunk
    by chunk, each chunk checked against the published index."""
    art = INDEXED_BUILDS[kind](minilm)
    repo = f"folders/minilm-indexed-{kind.replace('.', '-')}"
    push(registry.host, repo, "latest", art)
    name = f"{registry.host}/{repo}:latest"
    result = run_modelfs("index", name, "--cache", str(tmp_path / "indexing"))
    assert "published a chunk index of" in result.stderr + result.stdout

    weights = (minilm / "model.safetensors").read_bytes()
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    weights_hex = big.removeprefix("sha256:")
    at = art.blobs[big].find(weights[:4096])  # where the file starts in its layer's blob
    assert at >= 0
    (n,) = struct.unpack_from("<Q", weights)
    header = json.loads(weights[8 : 8 + n])
    # A tensor well inside the file, past the first chunks.
    start, end = max(
        (8 + n + t["data_offsets"][0], 8 + n + t["data_offsets"][1])
        for k, t in header.items()
        if k != "__metadata__" and t["data_offsets"][1] - t["data_offsets"][0] < CHUNK_BYTES
    )

    proxy.reset()
    m = mount_factory()
    m.expect_log(r"does not match the chunk index \(published-index\); fetching it once more")
    m.expect_log(r"failed its check twice; not trusting the published-index for this blob")
    m.expect_log(r"whole-blob sha256 is .* discarding the fetched data")
    path = m.mountpoint / proxy.host / repo / "latest/model.safetensors"
    # A file that is a whole layer, or a member of a tar layer, says how it is checked.
    assert os.getxattr(path, "user.modelfs.verify") == b"published-index"
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), end - start, start) == weights[start:end]
    fetched = proxy.blob_bytes(weights_hex)
    # The tensor's chunks, and a tar layer's first chunk for its members' headers.
    assert 0 < fetched <= 3 * CHUNK_BYTES < len(weights) // 4, f"fetched {fetched} bytes"

    # A flipped byte in another chunk of the same blob is caught by that chunk's digest.
    flip = len(weights) // 2
    assert not start - CHUNK_BYTES <= flip < end + CHUNK_BYTES
    proxy.set_faults([{"path": weights_hex, "flip_at": at + flip}])
    with open(path, "rb") as f, pytest.raises(OSError) as info:
        os.pread(f.fileno(), 4096, flip)
    assert info.value.errno == errno.EIO
    proxy.clear_faults()
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 4096, flip) == weights[flip : flip + 4096]


def test_an_index_published_beside_ollama_tensor_blobs_makes_their_layout_lazy(
    proxy, registry, mount_factory, minilm, tmp_path
):
    """Without an index the largest tensor blob is fetched whole before its header is
    trusted (above); with one published beside the model, listing the folder reads one
    verified chunk of it, reading a tensor's range of the laid-out file fetches only the
    chunks that span it, and a corrupted chunk is EIO."""
    art = ollama_tensors(minilm)
    push(registry.host, "folders/minilm-tensors-indexed", "latest", art)
    name = f"{registry.host}/folders/minilm-tensors-indexed:latest"
    result = run_modelfs("index", name, "--cache", str(tmp_path / "indexing"))
    assert "published a chunk index of" in result.stderr + result.stdout
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    assert len(art.blobs[big]) > 4 * CHUNK_BYTES

    proxy.reset()
    m = mount_factory()
    m.expect_log(r"does not match the chunk index \(published-index\); fetching it once more")
    m.expect_log(r"failed its check twice; not trusting the published-index for this blob")
    m.expect_log(r"whole-blob sha256 is .* discarding the fetched data")
    tag = m.mountpoint / proxy.host / "folders/minilm-tensors-indexed/latest"
    assert "model.safetensors" in os.listdir(tag)
    big_hex = big.removeprefix("sha256:")
    listed = proxy.blob_bytes(big_hex)
    assert 0 < listed <= CHUNK_BYTES, f"listing fetched {listed} bytes of the largest tensor"
    path = tag / "model.safetensors"
    # The laid-out file says what checks its bytes: the index for the large tensor blobs,
    # the whole digest (or the complete blob) for the small ones.
    ways = os.getxattr(path, "user.modelfs.verify").decode().split(",")
    assert "published-index" in ways and set(ways) <= {"published-index", "whole", "complete"}
    assert "user.modelfs.verify" in os.listxattr(path)

    # One tensor's range in the middle of the largest blob: only the chunks that span it.
    blob = art.blobs[big]
    (bn,) = struct.unpack_from("<Q", blob)
    (tensor,) = (k for k in json.loads(blob[8 : 8 + bn]) if k != "__metadata__")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        begin, end = json.loads(f.read(n))[tensor]["data_offsets"]
        assert end - begin == len(blob) - 8 - bn
        at = (end - begin) // 3
        fd = f.fileno()
        assert os.pread(fd, 4096, 8 + n + begin + at) == blob[8 + bn + at : 8 + bn + at + 4096]
        fetched = proxy.blob_bytes(big_hex) - listed
        assert 0 < fetched <= 2 * CHUNK_BYTES, f"one tensor range fetched {fetched} bytes"

        # A flipped byte in another chunk of that blob: EIO, never the wrong bytes.
        flip = 3 * (end - begin) // 4
        assert flip - at > 2 * CHUNK_BYTES
        proxy.set_faults([{"path": big_hex, "flip_at": 8 + bn + flip}])
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 8 + n + begin + flip)
        assert info.value.errno == errno.EIO
        proxy.clear_faults()
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 4096, 8 + n + begin + flip) == blob[8 + bn + flip :][:4096]
    assert_same_tensors(path, minilm / "model.safetensors")


@pytest.mark.parametrize(
    ("key", "path", "why"),
    [
        ("org.cncf.model.filepath", "a/../../etc/cron.d/x", "leaves the model's directory"),
        ("org.cnai.model.filepath", "/etc/passwd", "is absolute"),
        ("org.cncf.model.filepath", "./tokenizer.json", "two files have the path"),
        ("org.cnai.model.filepath", "../../../tokenizer.json", "two files have the path"),
    ],
)
def test_an_escaping_or_doubled_path_refuses_the_model_with_one_log_line(
    proxy, registry, mount_factory, minilm, key, path, why
):
    """A file path that escapes the model's directory (after DMR's stripping of leading
    ``../``), or that lands on another file's path, under either annotation name: the tag
    directory cannot be listed (EIO), nothing is shown, and the daemon says why in one line
    naming the layer and the path."""
    art = dmr_v02(minilm)
    doc = json.loads(art.manifest)
    victim = next(
        i
        for i, layer in enumerate(doc["layers"])
        if layer["annotations"]["org.cncf.model.filepath"] == "config.json"
    )
    notes = doc["layers"][victim]["annotations"]
    del notes["org.cncf.model.filepath"]
    notes[key] = path
    art.manifest = json.dumps(doc).encode()
    repo = f"folders/minilm-bad-path-{key.split('.')[1]}-{abs(hash(path)) % 10**6}"
    push(registry.host, repo, "latest", art)
    m = mount_factory()
    m.expect_log(r"invalid manifest")
    tag = m.mountpoint / proxy.host / repo / "latest"
    with pytest.raises(OSError) as info:
        os.listdir(tag)
    assert info.value.errno == errno.EIO
    lines = [line for line in m.log_text().splitlines() if "invalid manifest" in line]
    assert len(lines) == 1, lines
    line = lines[0]
    assert " INFO " in line and f"/{repo}:latest: invalid manifest: layer " in line, line
    assert why in line and f"layer {victim}" in line, line
    shown = path if "two files" not in why else "tokenizer.json"
    assert repr(shown) in line, line


def kit_modelpack(folder: Path) -> Artifact:
    """What KitOps writes as a ModelPack (``kit pack --use-model-pack``): one
    ``application/vnd.cncf.model.*.v1.tar`` layer per Kitfile path — a file, or a whole
    directory with its directory entries — member names relative to the context
    directory, the Kitfile path as the annotation (which a tar layer's members override)."""
    paths = walk(folder)
    parts = [
        ("weight", ["model.safetensors"], "model.safetensors"),
        ("weight.config", [p for p in paths if "/" not in p and p.endswith(".json")], "."),
        ("code", ["1_Pooling"], "1_Pooling"),
    ]
    art = Artifact(b"", OCI_MANIFEST)
    layers = []
    for kind, members, kitfile_path in parts:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for member in members:
                tar.add(folder / member, arcname=member)  # a directory: itself, then its files
        data = buf.getvalue()
        layers.append(
            {
                "mediaType": f"application/vnd.cncf.model.{kind}.v1.tar",
                "digest": art.add(data),
                "size": len(data),
                "annotations": {"org.cncf.model.filepath": kitfile_path},
            }
        )
    config = json.dumps({"descriptor": {"name": "minilm"}, "config": {"format": "safetensors"}})
    config_desc = {
        "mediaType": "application/vnd.cncf.model.config.v1+json",
        "digest": art.add(config.encode()),
        "size": len(config),
    }
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": config_desc,
        "layers": layers,
    }
    art.manifest = json.dumps(doc).encode()
    return art


def test_a_kitops_modelpack_of_directory_tars_mounts_as_its_folder(
    proxy, registry, mount_factory, minilm
):
    """KitOps's ModelPack layers are tars of whole Kitfile paths: their members (a directory's
    files among them) show at their member names, each read as a range of its tar blob."""
    art = kit_modelpack(minilm)
    push(registry.host, "folders/minilm-kit", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-kit/latest"
    assert mounted_paths(tag) == sorted(walk(minilm) + SIDE_FILES)
    for p in walk(minilm):
        if p == "model.safetensors":
            continue
        assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
        assert int(os.stat(tag / p).st_mtime) == int((minilm / p).stat().st_mtime), p
    assert (tag / "1_Pooling").is_dir()
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
    assert os.getxattr(tag / "model.safetensors", "user.modelfs.verify") == b"complete"


LOCAL_INDEX_BUILDS = {"dmr-v0.2": dmr_v02, "ollama-tensors": ollama_tensors}


@pytest.mark.parametrize("kind", list(LOCAL_INDEX_BUILDS))
def test_a_folder_model_verified_whole_is_lazy_after_eviction_by_its_local_index(
    proxy, registry, mount_factory, minilm, tmp_path, kind
):
    """No index anywhere: the first mount fetches the weights whole and checks them, keeping
    their chunk digests; once the blob is evicted, the next mount reads one tensor's range of
    model.safetensors (a layer, or laid out over tensor blobs) chunk by chunk, checked against
    that local index."""
    art = LOCAL_INDEX_BUILDS[kind](minilm)
    repo = f"folders/minilm-local-{kind.replace('.', '-')}"
    push(registry.host, repo, "latest", art)
    big = max(art.blobs, key=lambda d: len(art.blobs[d]))
    big_hex = big.removeprefix("sha256:")
    assert len(art.blobs[big]) > 4 * CHUNK_BYTES

    m = mount_factory(root=tmp_path / "a")
    path = m.mountpoint / proxy.host / repo / "latest/model.safetensors"
    assert_same_tensors(path, minilm / "model.safetensors")
    blob = m.cache / "blobs" / f"sha256-{big_hex}"
    wait_for(blob.exists, "the weights' blob to be published")
    index = m.cache / ".modelfs" / "indexes" / f"sha256-{big_hex}.json"
    wait_for(index.exists, "its chunk index to be kept")
    m.stop()
    blob.unlink()  # evicted: the few KB of its index stay

    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    path = m2.mountpoint / proxy.host / repo / "latest/model.safetensors"
    assert "local-index" in os.getxattr(path, "user.modelfs.verify").decode().split(",")
    weights = (minilm / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", weights)
    header = json.loads(weights[8 : 8 + n])
    # The largest tensor (the blob's), a range in its middle.
    name = max(
        (k for k in header if k != "__metadata__"),
        key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0],
    )
    with open(path, "rb") as f:
        (mn,) = struct.unpack("<Q", f.read(8))
        begin, end = json.loads(f.read(mn))[name]["data_offsets"]
        at = (end - begin) // 2
        want_at = 8 + n + header[name]["data_offsets"][0] + at
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(f.fileno(), 4096, 8 + mn + begin + at) == weights[want_at : want_at + 4096]
    fetched = proxy.blob_bytes(big_hex)
    # A tensor blob's header chunk for the layout, and the chunks the range spans.
    assert 0 < fetched <= 3 * CHUNK_BYTES, f"one range fetched {fetched} bytes after eviction"
