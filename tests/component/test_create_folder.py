"""``modelfs create --dir`` / ``FROM ./folder`` and ``push --format docker|cncf|ollama`` of a
model folder: the layouts Docker Model Runner, ModelPack and Ollama write, pushed to a real
docker-registry and read back by skopeo and oras-py, with the chunk index beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.modelformats import CREATED, dmr_v02, ollama_tensors, walk
from support.mount import one_line_error, run_modelfs

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.folderstore import lay_out, walk_folder
from modelfs.formats import artifacts as a
from modelfs.formats.chunks import CHUNK_BYTES, parse_chunk_index
from modelfs.formats.folderpack import cncf_media_type
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_MANIFEST,
    parse_manifest,
)
from modelfs.formats.referrers import referrers_tag

FORMATS = ("docker", "cncf", "ollama")
ACCEPT = [MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST]


def cached_manifest(cache: Path, name: str) -> bytes:
    host, _, rest = name.partition("/")
    repo, _, tag = rest.partition(":")
    return (cache / "manifests" / host / repo / tag).read_bytes()


def test_a_folder_laid_out_as_docker_is_what_docker_model_package_writes(minilm, tmp_path):
    cache = BlobCache(tmp_path / "cache")
    raw = lay_out(cache, walk_folder(minilm), "docker", created=CREATED)
    # The test helper writes what `docker model package --safetensors-dir` writes: the same
    # bytes, config included (format, parameters, size, tensor count, context size).
    assert raw == dmr_v02(minilm).manifest
    manifest = parse_manifest(raw)
    for layer in manifest.blobs:
        assert cache.has_blob(layer.digest, layer.size), layer
    # Only the blob of model.safetensors is over a chunk: its chunk digests are kept.
    big = [layer for layer in manifest.layers if layer.size > CHUNK_BYTES]
    assert [a.filepath_of(layer) for layer in big] == ["model.safetensors"]
    index = parse_chunk_index(cache.local_index_path(big[0].digest).read_bytes(), big)
    assert len(index.blobs[big[0].digest].hashes) == -(-big[0].size // CHUNK_BYTES)


def test_a_folder_laid_out_as_ollama_is_what_ollama_create_writes(minilm, tmp_path):
    cache = BlobCache(tmp_path / "cache")
    art = ollama_tensors(minilm)
    raw = lay_out(cache, walk_folder(minilm), "ollama", created=CREATED)
    # The same manifest, in the field order of Ollama's Go structs (manifest/layer.go:
    # mediaType, digest, size, name; the helper writes OCI's order).
    assert json.loads(raw) == json.loads(art.manifest)
    assert raw.startswith(b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution')
    assert b'"mediaType":"application/vnd.ollama.image.tensor","digest":"sha256:' in raw
    # Every tensor blob is a complete one-tensor safetensors file, byte for byte.
    for digest, data in art.blobs.items():
        assert cache.blob_path(parse_manifest(raw).config.digest).exists()
        assert (cache.blobs_dir / digest.replace(":", "-")).read_bytes() == data, digest


def test_a_folder_laid_out_as_cncf_is_what_docker_model_package_format_cncf_writes(
    minilm, tmp_path
):
    cache = BlobCache(tmp_path / "cache")
    docker = parse_manifest(dmr_v02(minilm).manifest)
    manifest = parse_manifest(lay_out(cache, walk_folder(minilm), "cncf", created=CREATED))
    assert manifest.artifact_type == a.CNCF_ARTIFACT
    assert manifest.config.media_type == a.CNCF_CONFIG
    # The Docker layers, annotations and all, with ModelPack media types.
    assert [(x.digest, x.size, x.annotations) for x in manifest.layers] == [
        (x.digest, x.size, x.annotations) for x in docker.layers
    ]
    types = {a.filepath_of(x): x.media_type for x in manifest.layers}
    assert types["model.safetensors"] == "application/vnd.cncf.model.weight.v1.raw"
    assert types["1_Pooling/config.json"] == "application/vnd.cncf.model.weight.config.v1.raw"
    assert cncf_media_type(a.DMR_LICENSE) == "application/vnd.cncf.model.doc.v1.raw"
    config = json.loads(cache.blob_path(manifest.config.digest).read_bytes())
    assert config == {
        "descriptor": {"createdAt": "2026-01-29T07:21:28Z", "family": "bert"},
        "config": {
            "architecture": "bert",
            "format": "safetensors",
            "paramSize": "22.71M",
            "quantization": "mixed",
        },
        "modelfs": {"type": "layers", "diffIds": [str(x.digest) for x in manifest.layers]},
    }


def skopeo_raw(registry, repo: str, tag: str) -> bytes:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (scripts/setup.sh installs it)")
    result = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.host}/{repo}:{tag}",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_dir_then_push_is_read_back_by_skopeo_and_oras(registry, minilm, tmp_path, fmt):
    oras_provider = pytest.importorskip("oras.provider")
    cache = tmp_path / "cache"
    repo = f"created/minilm-{fmt}"
    name = f"{registry.host}/{repo}:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--format", fmt, "--cache", str(cache))
    raw = cached_manifest(cache, name)
    pushed = run_modelfs("push", name, "--cache", str(cache))
    assert "chunk index" in pushed.stdout, pushed.stdout

    # skopeo sees the manifest byte for byte (artifactType, annotations, Ollama's "name").
    assert skopeo_raw(registry, repo, "latest") == raw
    manifest = parse_manifest(raw)

    # oras-py: the manifest, and every blob, as another OCI client downloads them.
    client = oras_provider.Registry(registry.host, insecure=True)
    got = client.get_manifest(f"{registry.host}/{repo}:latest", allowed_media_type=ACCEPT)
    assert got["config"]["digest"] == str(manifest.config.digest)
    assert [x["digest"] for x in got["layers"]] == [str(x.digest) for x in manifest.layers]
    by_path = {a.filepath_of(x) or x.name: x for x in manifest.layers}
    wanted = "1_Pooling/config.json" if fmt != "ollama" else "tokenizer.json"
    out = client.download_blob(
        f"{registry.host}/{repo}", str(by_path[wanted].digest), str(tmp_path / "blob")
    )
    assert Path(out).read_bytes() == (minilm / wanted).read_bytes()
    if fmt == "ollama":
        assert "1_Pooling/config.json" not in by_path  # Ollama keeps top-level JSON only
        assert all(x.name for x in manifest.layers)
        tensors = [x for x in manifest.layers if x.media_type == a.OLLAMA_TENSOR]
        assert len(tensors) == 104
    else:
        assert sorted(by_path) == sorted(walk(minilm))

    # The chunk index is beside the manifest (the referrers tag on this registry), about it.
    tag = referrers_tag(manifest.digest)
    request = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        referrers = json.loads(r.read())
    assert [m["artifactType"] for m in referrers["manifests"]] == [MEDIA_TYPE_CHUNK_INDEX]
    artifact = client.get_manifest(f"{registry.host}/{repo}@{referrers['manifests'][0]['digest']}")
    assert artifact["subject"]["digest"] == str(manifest.digest)
    index_blob = client.download_blob(
        f"{registry.host}/{repo}", artifact["layers"][0]["digest"], str(tmp_path / "index")
    )
    index = parse_chunk_index(Path(index_blob).read_bytes(), manifest.layers)
    large = {x.digest for x in manifest.layers if x.size > CHUNK_BYTES}
    assert set(index.blobs) == large and large


def test_push_format_lays_a_created_folder_out_again(registry, minilm, tmp_path):
    """create --dir as ModelPack, push --format docker and --format ollama: the layouts
    create would have written, the same file blobs, the cached model unchanged."""
    cache = tmp_path / "cache"
    name = f"{registry.host}/created/minilm-relaid:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--cache", str(cache))
    raw = cached_manifest(cache, name)
    assert parse_manifest(raw).artifact_type == a.CNCF_ARTIFACT  # the default format
    docker_name = f"{registry.host}/created/minilm-relaid-docker:latest"
    pushed = run_modelfs(
        "push", docker_name, "--from", name, "--format", "docker", "--cache", str(cache)
    )
    assert "as a Docker model" in pushed.stdout
    docker = parse_manifest(skopeo_raw(registry, "created/minilm-relaid-docker", "latest"))
    want = parse_manifest(dmr_v02(minilm).manifest)
    assert [(x.media_type, x.digest, x.annotations) for x in docker.layers] == [
        (x.media_type, x.digest, x.annotations) for x in want.layers
    ]
    assert docker.config.media_type == a.DMR_CONFIG_V02
    ollama_name = f"{registry.host}/created/minilm-relaid-ollama:latest"
    run_modelfs("push", ollama_name, "--from", name, "--format", "ollama", "--cache", str(cache))
    got = skopeo_raw(registry, "created/minilm-relaid-ollama", "latest")
    assert json.loads(got) == json.loads(ollama_tensors(minilm).manifest)
    assert cached_manifest(cache, name) == raw


def test_a_modelfile_from_a_folder_creates_the_folder_model(minilm, tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "models").mkdir()
    (tmp_path / "models/minilm").symlink_to(minilm, target_is_directory=True)
    (tmp_path / "Modelfile").write_text("FROM ./models/minilm\n")
    name = "localhost:1/created/from-folder:latest"
    run_modelfs(
        "create",
        name,
        "-f",
        str(tmp_path / "Modelfile"),
        "--format",
        "docker",
        "--cache",
        str(cache),
    )
    manifest = parse_manifest(cached_manifest(cache, name))
    assert manifest.config.media_type == a.DMR_CONFIG_V02
    assert sorted(a.filepath_of(x) for x in manifest.layers) == sorted(walk(minilm))

    (tmp_path / "Modelfile").write_text("FROM ./models/minilm\nSYSTEM be brief\n")
    bad = run_modelfs(
        "create", name + "2", "-f", str(tmp_path / "Modelfile"), "--cache", str(cache), check=False
    )
    assert one_line_error(bad).endswith(
        "Modelfile: SYSTEM cannot go into a cncf (ModelPack) model: ModelPack has no system "
        "prompt; --format ollama keeps it"
    )
    assert not (cache / "manifests" / "localhost:1/created/from-folder/latest2").exists()


def test_create_dir_refuses_a_folder_without_weights(tmp_path):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    bad = run_modelfs(
        "create",
        "localhost:1/x/y:z",
        "--dir",
        str(folder),
        "--cache",
        str(tmp_path / "c"),
        check=False,
    )
    assert "holds no weights" in one_line_error(bad)
    assert not (tmp_path / "c/manifests").exists() or not any((tmp_path / "c/manifests").rglob("z"))


def test_push_format_cncf_of_a_gguf_model_is_refused(small_gguf, tmp_path):
    cache = tmp_path / "cache"
    name = "127.0.0.1:1/created/gguf:latest"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", str(cache))
    bad = run_modelfs("push", name, "--format", "cncf", "--cache", str(cache), check=False)
    assert bad.returncode == 2  # a usage error
    assert "is not a model folder: --format cncf" in bad.stderr.strip().splitlines()[-1]


def test_created_times_are_those_of_the_files(minilm, tmp_path):
    cache = BlobCache(tmp_path / "cache")
    manifest = parse_manifest(lay_out(cache, walk_folder(minilm), "docker", created=CREATED))
    for layer in manifest.layers:
        meta = a.metadata_of(layer)
        src = (minilm / a.filepath_of(layer)).stat()
        assert meta.mtime_ns == src.st_mtime_ns and meta.mode == 0o644, a.filepath_of(layer)


def test_a_gguf_folder_is_a_docker_or_modelpack_model(small_gguf, tmp_path):
    folder = tmp_path / "gguf-folder"
    folder.mkdir()
    shutil.copyfile(small_gguf, folder / "model.gguf")
    (folder / "template.jinja").write_text("{{ messages }}")
    (folder / "LICENSE").write_text("MIT\n")
    cache = BlobCache(tmp_path / "cache")
    docker = parse_manifest(lay_out(cache, walk_folder(folder), "docker", created=CREATED))
    assert [(a.filepath_of(x), x.media_type) for x in docker.layers] == [
        ("LICENSE", a.DMR_LICENSE),
        ("model.gguf", a.DMR_GGUF),
        ("template.jinja", a.DMR_CHAT_TEMPLATE),
    ]
    config = json.loads(cache.blob_path(docker.config.digest).read_bytes())
    assert config["config"]["format"] == "gguf" and "safetensors" not in config["config"]
    assert config["rootfs"]["diff_ids"] == [str(x.digest) for x in docker.layers]
    cncf = parse_manifest(lay_out(cache, walk_folder(folder), "cncf", created=CREATED))
    assert [a.cncf_layer(x.media_type) for x in cncf.layers] == [
        ("doc", "raw"),
        ("weight", "raw"),
        ("weight.config", "raw"),
    ]
    bad = run_modelfs(
        "create",
        "localhost:1/x/gguf:ollama",
        "--dir",
        str(folder),
        "--format",
        "ollama",
        "--cache",
        str(tmp_path / "c2"),
        check=False,
    )
    assert bad.returncode == 2
    assert "Ollama's tensor format holds safetensors weights" in bad.stderr


MODELFILE_EXTRAS = (
    'TEMPLATE """{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}"""\n'
    "SYSTEM be brief\n"
    "PARAMETER temperature 0.25\n"
    "PARAMETER stop <|end|>\n"
    "LICENSE MIT\n"
    "LICENSE Apache-2.0\n"
    "MESSAGE user hi\n"
    "MESSAGE assistant hello\n"
)


def modelfile_layers(manifest) -> list[tuple[str, object, int]]:
    return [
        (x.media_type, x.digest, x.size)
        for x in manifest.layers
        if x.media_type.split(".")[-1] in ("template", "system", "params", "license", "messages")
    ]


def test_a_modelfile_from_a_folder_in_ollamas_format_writes_the_layers_a_gguf_from_gets(
    minilm, small_gguf, tmp_path
):
    """TEMPLATE, SYSTEM, PARAMETER, LICENSE and MESSAGE with FROM a folder and --format
    ollama: the very layers (bytes, order) the same lines give with FROM a GGUF file, after
    the tensors and JSON files, as ``ollama create --experimental`` appends them."""
    cache = tmp_path / "cache"
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\n{MODELFILE_EXTRAS}")
    (tmp_path / "Modelfile.gguf").write_text(f"FROM {small_gguf}\n{MODELFILE_EXTRAS}")
    folder_name = "localhost:1/created/folder-extras:latest"
    gguf_name = "localhost:1/created/gguf-extras:latest"
    run_modelfs(
        "create", folder_name, "-f", str(tmp_path / "Modelfile"), "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip
    run_modelfs("create", gguf_name, "-f", str(tmp_path / "Modelfile.gguf"), "--cache", str(cache))
    folder = parse_manifest(cached_manifest(cache, folder_name))
    gguf = parse_manifest(cached_manifest(cache, gguf_name))
    extras = modelfile_layers(folder)
    assert [t.rsplit(".", 1)[1] for t, _, _ in extras] == [
        "template", "system", "license", "license", "params", "messages",
    ]  # fmt: skip
    assert extras == modelfile_layers(gguf)
    assert folder.layers[-len(extras) :] == tuple(
        x for x in folder.layers if x.media_type.split(".")[-1] not in ("tensor", "json")
    )
    # The tensors and JSON files are those of the folder alone.
    bare = parse_manifest(ollama_tensors(minilm).manifest)
    assert [x.digest for x in folder.layers[: len(bare.layers)]] == [x.digest for x in bare.layers]
    blob = (cache / "blobs" / extras[-2][1].filename).read_bytes()
    assert json.loads(blob) == {"stop": ["<|end|>"], "temperature": 0.25}


def test_a_modelfile_from_a_folder_as_docker_adds_licenses_and_num_ctx(minilm, tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "Modelfile").write_text(
        f"FROM {minilm}\nLICENSE MIT\nLICENSE BSD\nPARAMETER num_ctx 4096\n"
    )
    name = "localhost:1/created/docker-extras:latest"
    run_modelfs(
        "create", name, "-f", str(tmp_path / "Modelfile"), "--format", "docker",
        "--cache", str(cache),
    )  # fmt: skip
    manifest = parse_manifest(cached_manifest(cache, name))
    files = [(a.filepath_of(x), x.media_type) for x in manifest.layers]
    # The folder's files as docker model package writes them, then the licenses (--license).
    assert files[: len(walk(minilm))] == [
        (p, x.media_type)
        for p, x in zip(walk(minilm), parse_manifest(dmr_v02(minilm).manifest).layers, strict=True)
    ]
    assert files[len(walk(minilm)) :] == [("LICENSE", a.DMR_LICENSE), ("LICENSE-2", a.DMR_LICENSE)]
    assert (cache / "blobs" / manifest.layers[-1].digest.filename).read_bytes() == b"BSD"
    config = json.loads((cache / "blobs" / manifest.config.digest.filename).read_bytes())
    assert config["config"]["context_size"] == 4096  # config.json says 512
    assert config["rootfs"]["diff_ids"] == [str(x.digest) for x in manifest.layers]


def test_no_chunk_index_is_honoured_by_push(registry, minilm, tmp_path):
    """create --dir --no-chunk-index: push publishes no chunk index beside the model, in
    its own format or laid out again as another."""
    cache = tmp_path / "cache"
    repo = "created/minilm-unindexed"
    name = f"{registry.host}/{repo}:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--no-chunk-index", "--cache", str(cache))
    manifest = parse_manifest(cached_manifest(cache, name))
    big = next(x for x in manifest.layers if a.filepath_of(x) == "model.safetensors")
    assert not (cache / ".modelfs/indexes" / f"{big.digest.filename}.json").exists()
    pushed = run_modelfs("push", name, "--cache", str(cache))
    assert "chunk index" not in pushed.stdout, pushed.stdout
    as_ollama = f"{registry.host}/{repo}-ollama:latest"
    pushed = run_modelfs(
        "push", as_ollama, "--from", name, "--format", "ollama", "--cache", str(cache)
    )
    assert "chunk index" not in pushed.stdout, pushed.stdout
    ollama = parse_manifest(skopeo_raw(registry, f"{repo}-ollama", "latest"))
    for r, m in ((repo, manifest), (f"{repo}-ollama", ollama)):
        request = urllib.request.Request(
            f"{registry.url}/v2/{r}/manifests/{referrers_tag(m.digest)}",
            headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=30)
        e.value.close()
        assert e.value.code == 404, r
    # The same folder created with an index gets one published, as before.
    indexed = f"{registry.host}/{repo}-indexed:latest"
    run_modelfs("create", indexed, "--dir", str(minilm), "--cache", str(cache))
    assert "chunk index" in run_modelfs("push", indexed, "--cache", str(cache)).stdout


def registry_blob(registry, repo: str, digest) -> bytes:
    with urllib.request.urlopen(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=30) as r:
        return r.read()


def pushed_config(registry, repo: str) -> tuple[object, dict]:
    """The manifest pushed to ``repo:latest`` and its config blob, as the registry has them."""
    manifest = parse_manifest(skopeo_raw(registry, repo, "latest"))
    return manifest, json.loads(registry_blob(registry, repo, manifest.config.digest))


def test_renderer_and_parser_with_a_folder_go_into_ollamas_config(registry, minilm, tmp_path):
    """RENDERER and PARSER with FROM a folder and --format ollama: the config's ``renderer``
    and ``parser``, as ``ollama create --experimental`` writes them; refused in one line for
    docker and cncf, which have no place for them."""
    cache = tmp_path / "cache"
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\nRENDERER qwen3-coder\nPARSER harmony\n")
    repo = "created/minilm-renderer"
    run_modelfs(
        "create", f"{registry.host}/{repo}:latest", "-f", str(tmp_path / "Modelfile"),
        "--format", "ollama", "--cache", str(cache),
    )  # fmt: skip
    run_modelfs("push", f"{registry.host}/{repo}:latest", "--cache", str(cache))
    manifest, config = pushed_config(registry, repo)
    assert (config["parser"], config["renderer"]) == ("harmony", "qwen3-coder")
    assert config["requires"] == "0.19.0" and config["model_format"] == "safetensors"
    bare = parse_manifest(ollama_tensors(minilm).manifest)
    assert [x.digest for x in manifest.layers] == [x.digest for x in bare.layers]
    for fmt, said in (("docker", "a docker model"), ("cncf", "a cncf (ModelPack) model")):
        bad = run_modelfs(
            "create", f"localhost:1/created/renderer-{fmt}:latest", "-f",
            str(tmp_path / "Modelfile"), "--format", fmt, "--cache", str(cache), check=False,
        )  # fmt: skip
        assert f"Modelfile: RENDERER cannot go into {said}: " in one_line_error(bad)
        assert one_line_error(bad).endswith("; --format ollama keeps it")


def test_push_format_carries_a_docker_models_licenses_and_num_ctx(registry, minilm, tmp_path):
    """A docker model created with LICENSE and PARAMETER num_ctx, pushed --format ollama:
    the license and params layers the same Modelfile gives with --format ollama (the very
    manifest); --format cncf: the licenses stay files, num_ctx has no place (one warning)."""
    cache = tmp_path / "cache"
    (tmp_path / "Modelfile").write_text(
        f"FROM {minilm}\nLICENSE MIT\nLICENSE BSD\nPARAMETER num_ctx 4096\n"
    )
    name = "localhost:1/created/docker-carried:latest"
    run_modelfs(
        "create", name, "-f", str(tmp_path / "Modelfile"), "--format", "docker",
        "--cache", str(cache),
    )  # fmt: skip
    direct = "localhost:1/created/ollama-direct:latest"
    run_modelfs(
        "create", direct, "-f", str(tmp_path / "Modelfile"), "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip

    repo = "created/carried-ollama"
    pushed = run_modelfs(
        "push", f"{registry.host}/{repo}:latest", "--from", name, "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip
    # The warning names the files Ollama's format leaves out: not the licenses.
    assert "left out" in pushed.stderr and "LICENSE" not in pushed.stderr, pushed.stderr
    manifest, config = pushed_config(registry, repo)
    assert manifest.raw == cached_manifest(cache, direct)
    extras = modelfile_layers(manifest)
    assert [t.rsplit(".", 1)[1] for t, _, _ in extras] == ["license", "license", "params"]
    got = [registry_blob(registry, repo, digest) for _, digest, _ in extras]
    assert got == [b"MIT", b"BSD", b'{"num_ctx":4096}\n']
    assert config["requires"] == "0.19.0"

    repo = "created/carried-cncf"
    pushed = run_modelfs(
        "push", f"{registry.host}/{repo}:latest", "--from", name, "--format", "cncf",
        "--cache", str(cache),
    )  # fmt: skip
    warned = [ln for ln in pushed.stderr.splitlines() if "num_ctx" in ln]
    assert warned == [
        "modelfs: localhost:1/created/docker-carried:latest: ModelPack has no context size: "
        "num_ctx 4096 (the Docker config's context_size) left out"
    ], pushed.stderr
    manifest, config = pushed_config(registry, repo)
    files = {a.filepath_of(x): x for x in manifest.layers}
    assert files["LICENSE"].media_type == cncf_media_type(a.DMR_LICENSE)
    assert registry_blob(registry, repo, files["LICENSE-2"].digest) == b"BSD"
    assert "context_size" not in json.dumps(config)


def test_push_format_ollama_carries_a_cncf_models_licenses(registry, minilm, tmp_path):
    """A ModelPack model's license files become Ollama license layers, as a Modelfile's
    LICENSE lines with --format ollama; a model with no num_ctx of its own gets no params
    (config.json's 512 is the folder's, which Ollama reads itself)."""
    cache = tmp_path / "cache"
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\nLICENSE MIT\n")
    name = "localhost:1/created/cncf-carried:latest"
    run_modelfs("create", name, "-f", str(tmp_path / "Modelfile"), "--cache", str(cache))
    repo = "created/cncf-carried-ollama"
    run_modelfs(
        "push", f"{registry.host}/{repo}:latest", "--from", name, "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip
    manifest, _config = pushed_config(registry, repo)
    extras = modelfile_layers(manifest)
    assert [(t.rsplit(".", 1)[1], s) for t, _, s in extras] == [("license", 3)]
    assert registry_blob(registry, repo, extras[0][1]) == b"MIT"
    docker_name = f"{registry.host}/created/cncf-carried-docker:latest"
    run_modelfs("push", docker_name, "--from", name, "--format", "docker", "--cache", str(cache))
    _manifest, config = pushed_config(registry, "created/cncf-carried-docker")
    assert config["config"]["context_size"] == 512  # the folder's own, as create writes it


def test_push_format_lays_an_ollama_folder_model_out_as_docker_and_cncf(minilm, tmp_path, caplog):
    """An ollama model (as Ollama's registry ships safetensors models) laid out as docker or
    cncf: model.safetensors assembled from its tensor blobs, its JSON files, each license a
    LICENSE file, num_ctx Docker's context_size (in ModelPack, left out with one warning);
    what the target has no place for (a system prompt) is refused in one line."""
    import logging

    from modelfs.formats.safetensors import parse_header

    cache = tmp_path / "cache"
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\nLICENSE MIT\nPARAMETER num_ctx 4096\n")
    name = "localhost:1/created/ollama-src:latest"
    run_modelfs(
        "create", name, "-f", str(tmp_path / "Modelfile"), "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip
    docker_name = "localhost:1/created/ollama-src-docker:latest"
    bc = BlobCache(cache)
    from modelfs.commands.folderstore import layout_cached
    from modelfs.formats.names import parse_name

    manifest = parse_manifest(cached_manifest(cache, name))
    docker = layout_cached(bc, parse_name(docker_name), manifest, "docker", CREATED)
    files = {a.filepath_of(x): x for x in docker.layers}
    tops = sorted(p for p in walk(minilm) if "/" not in p and p.endswith(".json"))
    assert sorted(files) == sorted([*tops, "model.safetensors", "LICENSE"])
    assert files["LICENSE"].media_type == a.DMR_LICENSE
    assert bc.blob_path(files["LICENSE"].digest).read_bytes() == b"MIT"
    for p in tops:
        assert bc.blob_path(files[p].digest).read_bytes() == (minilm / p).read_bytes(), p
    weights = bc.blob_path(files["model.safetensors"].digest).read_bytes()
    original = (minilm / "model.safetensors").read_bytes()
    got, want = (parse_header(w, len(w), "t") for w in (weights, original))
    assert {t.name for t in got.tensors} == {t.name for t in want.tensors}
    for t in got.tensors:
        w = next(x for x in want.tensors if x.name == t.name)
        assert (t.dtype, t.shape) == (w.dtype, w.shape)
        assert (
            weights[got.data_start + t.begin : got.data_start + t.begin + t.nbytes]
            == original[want.data_start + w.begin : want.data_start + w.begin + w.nbytes]
        ), t.name
    config = json.loads(bc.blob_path(docker.config.digest).read_bytes())
    assert config["config"]["context_size"] == 4096

    # ModelPack has no context size: num_ctx is left out with one warning, as a Docker
    # model's context_size is (folderpack.carried_context).
    cncf_name = "localhost:1/created/ollama-src-cncf:latest"
    with caplog.at_level(logging.WARNING):
        cncf = layout_cached(bc, parse_name(cncf_name), manifest, "cncf", CREATED)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cncf_name}: ModelPack has no context size: num_ctx 4096 (the Ollama params' "
        "num_ctx) left out"
    ]
    assert "context" not in bc.blob_path(cncf.config.digest).read_text()

    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\nSYSTEM be brief\n")
    name = "localhost:1/created/ollama-system:latest"
    run_modelfs(
        "create", name, "-f", str(tmp_path / "Modelfile"), "--format", "ollama",
        "--cache", str(cache),
    )  # fmt: skip
    bad = run_modelfs(
        "push", "localhost:1/created/ollama-system-docker:latest", "--from", name,
        "--format", "docker", "--cache", str(cache), check=False,
    )  # fmt: skip
    assert one_line_error(bad).endswith(
        "SYSTEM cannot go into a docker model: Docker Model Runner's artifact has no system "
        "prompt; --format ollama keeps it"
    )


def test_a_folders_license_file_is_kept_in_every_format(minilm, tmp_path):
    """A folder with a LICENSE file: a license file in docker and cncf, an Ollama license
    layer (what ``ollama show --license`` reads) in ollama, and once only."""
    folder = tmp_path / "folder"
    shutil.copytree(minilm, folder, copy_function=os.symlink)
    for p in walk(minilm):  # walk skips symlinks: real files, hard-linked where possible
        (folder / p).unlink()
        try:
            os.link(minilm / p, folder / p)
        except OSError:
            shutil.copy2(minilm / p, folder / p)
    (folder / "LICENSE").write_text("MIT\n")
    cache = BlobCache(tmp_path / "cache")
    for fmt, want in (
        ("docker", a.DMR_LICENSE),
        ("cncf", cncf_media_type(a.DMR_LICENSE)),
        ("ollama", "application/vnd.ollama.image.license"),
    ):
        manifest = parse_manifest(lay_out(cache, walk_folder(folder), fmt, created=CREATED))
        licenses = [x for x in manifest.layers if x.media_type == want]
        assert len(licenses) == 1, fmt
        assert cache.blob_path(licenses[0].digest).read_bytes() == b"MIT\n", fmt


def test_push_format_adds_nothing_a_modelfile_did_not_say(minilm, tmp_path, caplog):
    """A docker model whose context_size is the folder's own (config.json's 512): laid out
    as cncf, no warning; as ollama, no params layer (Ollama reads config.json itself) and
    nothing but the tensors and JSON files."""
    import logging

    from modelfs.commands.folderstore import layout_cached
    from modelfs.formats.names import parse_name

    cache = BlobCache(tmp_path / "cache")
    name = parse_name("localhost:1/created/plain:latest")
    raw = lay_out(cache, walk_folder(minilm), "docker", created=CREATED)
    config = json.loads(cache.blob_path(parse_manifest(raw).config.digest).read_bytes())
    assert config["config"]["context_size"] == 512
    cache.write_manifest(name, raw)
    with caplog.at_level(logging.INFO):
        cncf = layout_cached(cache, name, parse_manifest(raw), "cncf", CREATED)
    assert cncf.artifact_type == a.CNCF_ARTIFACT
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    ollama = layout_cached(cache, name, parse_manifest(raw), "ollama", CREATED)
    assert json.loads(ollama.raw) == json.loads(ollama_tensors(minilm).manifest)


def test_a_license_survives_a_round_trip_through_every_format_in_the_registry(
    registry, minilm, tmp_path
):
    """A ModelPack model with a LICENSE line, pushed as ollama, pulled by another cache and
    pushed again as docker, then as cncf: one license each time, the same bytes."""
    (tmp_path / "Modelfile").write_text(f"FROM {minilm}\nLICENSE MIT\n")
    name = "localhost:1/created/round-trip:latest"
    first = tmp_path / "first"
    run_modelfs("create", name, "-f", str(tmp_path / "Modelfile"), "--cache", str(first))
    hops = [("round-trip-ollama", "ollama"), ("round-trip-docker", "docker")]
    hops.append(("round-trip-cncf", "cncf"))
    source, cache = name, first
    for repo, fmt in hops:
        target = f"{registry.host}/created/{repo}:latest"
        run_modelfs(
            "push", target, "--from", source, "--format", fmt, "--cache", str(cache)
        )  # fmt: skip
        manifest, _config = pushed_config(registry, f"created/{repo}")
        licenses = [x for x in manifest.layers if x.media_type.split(".")[-1] == "license"] or [
            x for x in manifest.layers if a.filepath_of(x) == "LICENSE"
        ]
        assert [registry_blob(registry, f"created/{repo}", x.digest) for x in licenses] == [
            b"MIT"
        ], (fmt, [x.media_type for x in manifest.layers])
        if fmt == "ollama":
            assert not any(a.filepath_of(x) == "LICENSE" for x in manifest.layers)
        else:
            assert not [x for x in manifest.layers if x.media_type.endswith("image.license")]
        # The next hop starts from a cache that pulled this one from the registry.
        cache = tmp_path / repo
        run_modelfs("pull", target, "--cache", str(cache))
        source = target
