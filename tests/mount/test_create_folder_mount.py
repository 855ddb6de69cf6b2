"""The round trip of a model folder: ``modelfs create --dir`` → ``push`` → mount → the folder
back, byte for byte (Docker and ModelPack layouts) or as Ollama keeps it (its tensor format),
loaded by safetensors, tokenizers and transformers, its large blobs read lazily and verified
against the chunk index push published beside the manifest."""

from __future__ import annotations

import json
import os
import stat
import struct

import pytest
from mount.test_model_folders_mount import (
    SIDE_FILES,
    assert_same_tensors,
    assert_tokenizer_and_engines_load,
    engine_loads,
    mounted_paths,
)
from support.modelformats import walk
from support.mount import run_modelfs, sha256_path

from modelfs.formats import artifacts as a
from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.manifest import parse_manifest


def create_and_push(registry, minilm, tmp_path, fmt: str) -> tuple[str, object]:
    cache = tmp_path / "creating"
    repo = f"roundtrip/minilm-{fmt}"
    name = f"{registry.host}/{repo}:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--format", fmt, "--cache", str(cache))
    run_modelfs("push", name, "--cache", str(cache))
    raw = (cache / "manifests" / registry.host / repo / "latest").read_bytes()
    return repo, parse_manifest(raw)


def a_tensor_range(weights: bytes) -> tuple[int, int]:
    """A tensor well inside the file, under a chunk long."""
    (n,) = struct.unpack_from("<Q", weights)
    header = json.loads(weights[8 : 8 + n])
    return max(
        (8 + n + t["data_offsets"][0], 8 + n + t["data_offsets"][1])
        for k, t in header.items()
        if k != "__metadata__" and t["data_offsets"][1] - t["data_offsets"][0] < CHUNK_BYTES
    )


@pytest.mark.parametrize("fmt", ["docker", "cncf"])
def test_a_created_folder_mounts_back_byte_for_byte(
    proxy, registry, mount_factory, minilm, tmp_path, fmt
):
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")

    repo, manifest = create_and_push(registry, minilm, tmp_path, fmt)
    weights_layer = next(x for x in manifest.layers if a.filepath_of(x) == "model.safetensors")
    weights_hex = weights_layer.digest.hex
    m = mount_factory()
    tag = m.mountpoint / proxy.host / repo / "latest"

    assert mounted_paths(tag) == sorted(walk(minilm) + SIDE_FILES)
    for p in walk(minilm):
        st, src = os.stat(tag / p), (minilm / p).stat()
        assert st.st_size == src.st_size, p
        assert stat.S_IMODE(st.st_mode) == 0o444, p
        assert int(st.st_mtime) == int(src.st_mtime), p
    assert proxy.blob_bytes(weights_hex) == 0, "ls -l fetched weight bytes"

    # One tensor: the chunks that span it, each checked against the published index.
    path = tag / "model.safetensors"
    assert os.getxattr(path, "user.modelfs.verify") == b"published-index"
    weights = (minilm / "model.safetensors").read_bytes()
    start, end = a_tensor_range(weights)
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(f.fileno(), end - start, start) == weights[start:end]
    fetched = proxy.blob_bytes(weights_hex)
    assert 0 < fetched <= 2 * CHUNK_BYTES, f"one tensor fetched {fetched} bytes"

    # The folder back: every file, nested ones included, byte for byte.
    for p in walk(minilm):
        assert sha256_path(tag / p) == sha256_path(minilm / p), p
    assert_same_tensors(path, minilm / "model.safetensors")
    assert_tokenizer_and_engines_load(tag, minilm)


def test_a_folder_created_in_ollamas_format_mounts_as_ollama_keeps_it(
    proxy, registry, mount_factory, minilm, tmp_path
):
    pytest.importorskip("transformers")
    repo, manifest = create_and_push(registry, minilm, tmp_path, "ollama")
    big = max(manifest.layers, key=lambda x: x.size)
    assert big.media_type == a.OLLAMA_TENSOR and big.size > 4 * CHUNK_BYTES
    m = mount_factory()
    tag = m.mountpoint / proxy.host / repo / "latest"
    tops = sorted(p for p in walk(minilm) if "/" not in p and p.endswith(".json"))
    assert mounted_paths(tag) == sorted([*tops, "model.safetensors", *SIDE_FILES])
    # The published index vouches for the tensor blobs: listing reads one chunk of the
    # largest (its header), not the whole blob.
    listed = proxy.blob_bytes(big.digest.hex)
    assert 0 < listed <= CHUNK_BYTES, f"listing fetched {listed} bytes of the largest tensor"
    for p in tops:
        assert (tag / p).read_bytes() == (minilm / p).read_bytes(), p
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
    loaded = engine_loads(tag)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.startswith("6 [101, 7592, 2088, 102]"), loaded.stdout


def test_a_compressed_tar_layer_is_left_out_with_one_log_line(
    proxy, registry, mount_factory, minilm
):
    """A ModelPack ``.tar+gzip`` layer cannot be read in place (and ``modctl extract`` does
    not unpack it either): the folder mounts without it, the rest intact, and the daemon says
    so in one INFO line naming the layer, no warning."""
    import gzip
    import io
    import tarfile

    from support.modelformats import modelpack, push

    art = modelpack(minilm)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"# all-MiniLM-L6-v2\n"
        info = tarfile.TarInfo("README.md")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blob = gzip.compress(buf.getvalue(), mtime=0)
    doc = json.loads(art.manifest)
    doc["layers"].append(
        {
            "mediaType": "application/vnd.cncf.model.doc.v1.tar+gzip",
            "digest": art.add(blob),
            "size": len(blob),
            "annotations": {"org.cncf.model.filepath": "README.md"},
        }
    )
    art.manifest = json.dumps(doc).encode()
    push(registry.host, "folders/minilm-gzip", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-gzip/latest"
    assert mounted_paths(tag) == sorted(walk(minilm) + SIDE_FILES)
    assert (tag / "1_Pooling/config.json").read_bytes() == (
        minilm / "1_Pooling/config.json"
    ).read_bytes()
    short = art.add(blob).removeprefix("sha256:")[:12]
    lines = [line for line in m.log_text().splitlines() if "not shown" in line]
    assert len(lines) == 1, lines
    assert " INFO " in lines[0], lines[0]
    assert lines[0].endswith(
        f"/folders/minilm-gzip:latest: layer {short} not shown: "
        "a compressed tar (tar+gzip) cannot be read in place"
    ), lines[0]


# What each folder format keeps of a Modelfile's other lines, and where the mount shows it.
MODELFILE_LINES = {
    "ollama": (
        "TEMPLATE {{ .Prompt }}\nSYSTEM be brief\nPARAMETER temperature 0.25\n"
        "LICENSE MIT\nLICENSE BSD\nMESSAGE user hi\nRENDERER qwen3-coder\nPARSER harmony\n"
    ),
    "docker": "LICENSE MIT\nLICENSE BSD\nPARAMETER num_ctx 4096\n",
    "cncf": "LICENSE MIT\nLICENSE BSD\n",
}
SHOWN = {
    "ollama": {
        "template": b"{{ .Prompt }}",
        "system": b"be brief",
        "params.json": b'{"temperature":0.25}\n',
        "license": b"MIT",
        "license-2": b"BSD",
        "messages.json": b'[{"role":"user","content":"hi"}]\n',
    },
    "docker": {"LICENSE": b"MIT", "LICENSE-2": b"BSD"},
    "cncf": {"LICENSE": b"MIT", "LICENSE-2": b"BSD"},
}


@pytest.mark.parametrize("fmt", ["ollama", "docker", "cncf"])
def test_a_modelfile_from_a_folder_mounts_with_its_lines(
    proxy, registry, mount_factory, minilm, tmp_path, fmt
):
    """create -f Modelfile (FROM the folder, and the lines the format keeps) → push → mount:
    the folder's files and those lines' files, read back."""
    cache = tmp_path / "creating"
    repo = f"roundtrip/minilm-modelfile-{fmt}"
    name = f"{registry.host}/{repo}:latest"
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\n{MODELFILE_LINES[fmt]}")
    run_modelfs(
        "create", name, "-f", str(tmp_path / "Modelfile"), "--format", fmt, "--cache", str(cache)
    )
    run_modelfs("push", name, "--cache", str(cache))
    m = mount_factory()
    tag = m.mountpoint / proxy.host / repo / "latest"
    paths = mounted_paths(tag)
    for path, data in SHOWN[fmt].items():
        assert (tag / path).read_bytes() == data, path
    if fmt == "ollama":
        assert "model.safetensors" in paths and "tokenizer.json" in paths
        assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
    else:
        assert paths == sorted(walk(minilm) + list(SHOWN[fmt]) + SIDE_FILES)
        for p in walk(minilm):
            assert sha256_path(tag / p) == sha256_path(minilm / p), p
    config = json.loads((tag / ".modelfs/config.json").read_bytes())
    if fmt == "docker":
        assert config["config"]["context_size"] == 4096
    if fmt == "ollama":
        assert (config["parser"], config["renderer"]) == ("harmony", "qwen3-coder")


def test_an_assembled_file_shows_the_models_time(proxy, registry, mount_factory, minilm):
    """model.safetensors laid out from Ollama's tensor blobs: stat gives the time the model
    says it was made (its config's ``created``), not when the mount started."""
    from support.modelformats import ollama_tensors, push, with_created

    push(
        registry.host,
        "folders/minilm-created",
        "latest",
        with_created(ollama_tensors(minilm), "2025-03-04T05:06:07.5Z"),
    )
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "folders/minilm-created/latest"
    st = os.stat(tag / "model.safetensors")
    assert st.st_mtime_ns == 1741064767_500000000, st.st_mtime_ns
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")


def test_a_docker_models_modelfile_lines_follow_push_format_ollama_into_the_mount(
    proxy, registry, mount_factory, minilm, tmp_path
):
    """create -f Modelfile --format docker (LICENSE, PARAMETER num_ctx) → push --format
    ollama → mount: the licenses and num_ctx are Ollama's license and params files."""
    cache = tmp_path / "creating"
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\n{MODELFILE_LINES['docker']}")
    name = "localhost:1/roundtrip/docker-modelfile:latest"
    run_modelfs(
        "create", name, "-f", str(tmp_path / "Modelfile"), "--format", "docker",
        "--cache", str(cache),
    )  # fmt: skip
    repo = "roundtrip/docker-modelfile-as-ollama"
    run_modelfs(
        "push", f"{registry.host}/{repo}:latest", "--from", name, "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip
    m = mount_factory()
    tag = m.mountpoint / proxy.host / repo / "latest"
    paths = mounted_paths(tag)
    assert "LICENSE" not in paths and "model.safetensors" in paths
    assert (tag / "license").read_bytes() == b"MIT"
    assert (tag / "license-2").read_bytes() == b"BSD"
    assert json.loads((tag / "params.json").read_bytes()) == {"num_ctx": 4096}
    assert_same_tensors(tag / "model.safetensors", minilm / "model.safetensors")
