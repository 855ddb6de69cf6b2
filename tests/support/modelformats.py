"""What each tool writes to a registry for a model folder, built in memory, and pushed.

Each builder returns an ``Artifact`` (manifest bytes and every blob by digest) laid out
as the tool lays it out (docs/formats.md, the reference in /work/shared/reference):

- ``dmr_v02``: ``docker model package --safetensors-dir`` today — one layer per file in
  the lexical walk order, ``files.Classify`` media types, the three ``org.cncf.model.*``
  annotations, a v0.2 config whose ``rootfs.diff_ids`` are the layer digests;
- ``dmr_v01``: the same before 2026-02 — sorted ``.safetensors`` layers (no annotations),
  a ``vllm.config.tar`` of the top-level config files by basename, and one ``dir.tar``
  per subdirectory (names ``subdir/…``);
- ``dmr_v01_gguf``: ``docker model package --gguf`` of a sharded GGUF before 2026-02;
- ``modelpack``: ``modctl build`` (``--raw`` by default: ``.raw`` layers; ``raw=False``:
  one-file ``.tar`` layers), config files, then weights, then docs, sorted by path;
- ``ollama_tensors``: ``ollama create --experimental`` — every tensor of every
  ``*.safetensors`` as its own one-tensor safetensors blob (header space-padded to 8),
  sorted by tensor name, with the descriptor field ``name``; each top-level ``*.json``
  (but the index) as ``image.json``; a ConfigV2; a Docker v2 manifest.

``push`` uploads the blobs and PUTs the manifest with its own media type.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import struct
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from modelfs.formats.files import BlobBytes, ModelTree, files_of
from modelfs.formats.gofmt import go_json, go_time
from modelfs.formats.manifest import parse_manifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DMR = "application/vnd.docker.ai."
CREATED = datetime(2026, 1, 29, 7, 21, 28, tzinfo=UTC)
FIXED_MTIME = "2026-01-29T07:21:28Z"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Artifact:
    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)

    def add(self, data: bytes) -> str:
        d = digest_of(data)
        self.blobs[d] = data
        return d

    def read(self, digest: object, offset: int, length: int) -> bytes:
        data = self.blobs[str(digest)]
        assert offset + length <= len(data), (digest, offset, length)
        return data[offset : offset + length]


def walk(folder: Path) -> list[str]:
    """Relative paths of the files under ``folder`` in Go's ``filepath.WalkDir`` order
    (lexical per directory, depth first), hidden entries and symlinks skipped."""
    out: list[str] = []

    def visit(d: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            if entry.is_dir():
                visit(Path(entry.path), prefix + entry.name + "/")
            else:
                out.append(prefix + entry.name)

    visit(folder, "")
    return out


def classify(path: str) -> str:
    """DMR's ``files.Classify``."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".gguf"):
        return DMR + "gguf.v3"
    if name.endswith(".safetensors"):
        return DMR + "safetensors"
    if name.endswith(".dduf"):
        return DMR + "dduf"
    if name.endswith(".jinja") or "chat_template" in name:
        return DMR + "chat.template.jinja"
    if any(w in name for w in ("license", "licence", "copying", "notice")):
        return DMR + "license"
    return DMR + "model.file"


def _metadata(folder: Path, path: str) -> str:
    st = (folder / path).stat()
    mtime = datetime.fromtimestamp(st.st_mtime, UTC)
    return go_json(
        {
            "name": path.rsplit("/", 1)[-1],
            "mode": st.st_mode & 0o777,
            "uid": 0,
            "gid": 0,
            "size": st.st_size,
            "mtime": go_time(mtime),
            "typeflag": 0,
        }
    ).decode()


def _descriptor(art: Artifact, data: bytes, media_type: str, **extra: object) -> dict:
    return {"mediaType": media_type, "size": len(data), "digest": art.add(data), **extra}


def _file_layer(art: Artifact, folder: Path, path: str, media_type: str) -> dict:
    return _descriptor(
        art,
        (folder / path).read_bytes(),
        media_type,
        annotations={
            "org.cncf.model.file.mediatype.untested": "false",
            "org.cncf.model.file.metadata+json": _metadata(folder, path),
            "org.cncf.model.filepath": path,
        },
    )


def _dmr_config(art: Artifact, layers: list[dict], media_type: str) -> dict:
    body = go_json(
        {
            "config": {
                "format": "safetensors",
                "quantization": "mixed",
                "parameters": "22.71M",
                "size": "90.87MB",
                "safetensors": {"format": "pt", "tensor_count": "104"},
                "context_size": 512,
            },
            "descriptor": {"created": go_time(CREATED)},
            "rootfs": {"type": "rootfs", "diff_ids": [layer["digest"] for layer in layers]},
        }
    )
    return _descriptor(art, body, media_type)


def _oci(art: Artifact, config: dict, layers: list[dict], **extra: object) -> Artifact:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, **extra}
    doc["config"], doc["layers"] = config, layers
    art.manifest, art.media_type = go_json(doc), OCI_MANIFEST
    return art


def dmr_v02(folder: Path) -> Artifact:
    art = Artifact(b"", OCI_MANIFEST)
    layers = [_file_layer(art, folder, p, classify(p)) for p in walk(folder)]
    return _oci(art, _dmr_config(art, layers, DMR + "model.config.v0.2+json"), layers)


def tar_of(folder: Path, members: list[tuple[str, str]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar of ``(path in folder, name in tar)``, as Go's archive/tar writes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for path, name in members:
            info = tar.gettarinfo(str(folder / path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(folder / path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


_VLLM_CONFIG_SUFFIXES = (".json", ".txt", ".md", ".vocab")


def dmr_v01(folder: Path) -> Artifact:
    """``docker model package --safetensors-dir DIR --dir-tar SUB…`` before 2026-02."""
    art = Artifact(b"", OCI_MANIFEST)
    paths = walk(folder)
    top = [p for p in paths if "/" not in p]
    layers = [
        _descriptor(art, (folder / p).read_bytes(), DMR + "safetensors")
        for p in sorted(p for p in top if p.endswith(".safetensors"))
    ]
    configs = [
        (p, p)
        for p in top
        if p.endswith(_VLLM_CONFIG_SUFFIXES) or p == "tokenizer.model" or p.endswith(".jinja")
    ]
    layers.append(_descriptor(art, tar_of(folder, configs), DMR + "vllm.config.tar"))
    for sub in sorted({p.split("/", 1)[0] for p in paths if "/" in p}):
        members = [(p, p) for p in paths if p.startswith(sub + "/")]
        layers.append(_descriptor(art, tar_of(folder, members), DMR + "dir.tar"))
    return _oci(art, _dmr_config(art, layers, DMR + "model.config.v0.1+json"), layers)


def dmr_v01_gguf(shards: list[Path]) -> Artifact:
    """``docker model package --gguf FIRST-SHARD`` before 2026-02: one ``gguf.v3`` layer per
    shard in shard order, no annotations (the mount names them ``model-0000i-of-0000N.gguf``)."""
    art = Artifact(b"", OCI_MANIFEST)
    layers = [_descriptor(art, p.read_bytes(), DMR + "gguf.v3") for p in shards]
    return _oci(art, _dmr_config(art, layers, DMR + "model.config.v0.1+json"), layers)


CNCF = "application/vnd.cncf.model."


def _modctl_kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.endswith((".safetensors", ".gguf", ".bin", ".pt")):
        return "weight"
    if name.endswith(".json") or name in ("tokenizer.model", "generation_config.json"):
        return "weight.config"
    if name.endswith((".py", ".sh")):
        return "code"
    return "doc"


def modelpack(folder: Path, raw: bool = True) -> Artifact:
    """``modctl build`` of a Modelfile that lists every file of the folder."""
    art = Artifact(b"", OCI_MANIFEST)
    order = ("weight.config", "weight", "code", "doc")
    paths = sorted(walk(folder), key=lambda p: (order.index(_modctl_kind(p)), p))
    layers = []
    for p in paths:
        media_type = f"{CNCF}{_modctl_kind(p)}.v1.{'raw' if raw else 'tar'}"
        if raw:
            layers.append(_file_layer(art, folder, p, media_type))
        else:
            desc = _descriptor(art, tar_of(folder, [(p, p)]), media_type)
            desc["annotations"] = {
                "org.cncf.model.file.metadata+json": _metadata(folder, p),
                "org.cncf.model.filepath": p,
            }
            layers.append(desc)
    config = go_json(
        {
            "descriptor": {"createdAt": go_time(CREATED), "family": "bert", "name": "minilm"},
            "config": {"architecture": "bert", "format": "safetensors", "paramSize": "22.71M"},
            "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
        }
    )
    modelfile = "\n".join(f"{_modctl_kind(p).upper().replace('.', '_')} {p}" for p in paths)
    return _oci(
        art,
        _descriptor(art, config, CNCF + "config.v1+json"),
        layers,
        artifactType=CNCF + "manifest.v1+json",
        annotations={"org.cncf.modctl.modelfile": modelfile},
    )


def one_tensor_blob(name: str, info: dict, data: bytes) -> bytes:
    """A complete safetensors file of one tensor, as Ollama's extractor writes it."""
    header = json.dumps(
        {name: {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [0, len(data)]}},
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def split_safetensors(raw: bytes, prefix: str = "") -> dict[str, bytes]:
    """Each tensor of a safetensors file as a one-tensor blob, by tensor name (``prefix``
    before each name, in the blob too, as Ollama names a draft model's tensors)."""
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {
        prefix + name: one_tensor_blob(
            prefix + name,
            info,
            raw[base + info["data_offsets"][0] : base + info["data_offsets"][1]],
        )
        for name, info in header.items()
    }


def ollama_tensors(folder: Path, draft: Path | None = None) -> Artifact:
    """``folder`` as ``ollama create --experimental`` pushes it; with ``draft`` (a Modelfile
    ``DRAFT``), that folder's tensors as ``draft.<tensor>`` blobs and its JSON files as
    ``draft/<file>`` after the model's own layers, and the config's ``draft``, as
    x/create/draft.go ``CreateDraftLayers`` and x/create/client/create.go write them."""
    art = Artifact(b"", DOCKER_MANIFEST)

    def layers_of(folder: Path, tensor_prefix: str, json_prefix: str) -> list[dict]:
        blobs: dict[str, bytes] = {}
        for p in walk(folder):
            if p.endswith(".safetensors") and p.count("/") <= 1:
                blobs.update(split_safetensors((folder / p).read_bytes(), tensor_prefix))
        layers = [
            _descriptor(art, blobs[name], "application/vnd.ollama.image.tensor", name=name)
            for name in sorted(blobs)
        ]
        for p in walk(folder):
            if "/" not in p and p.endswith(".json") and p != "model.safetensors.index.json":
                data = (folder / p).read_bytes()
                layers.append(
                    _descriptor(
                        art, data, "application/vnd.ollama.image.json", name=json_prefix + p
                    )
                )
        return layers

    layers = layers_of(folder, "", "")
    said: dict[str, object] = {
        "model_format": "safetensors",
        "file_type": "",
        "capabilities": ["completion"],
        "requires": "0.19.0",
    }
    if draft is not None:
        layers += layers_of(draft, "draft.", "draft/")
        architecture = json.loads((draft / "config.json").read_bytes())["architectures"][0]
        said["draft"] = {
            "model_format": "safetensors",
            "architecture": architecture,
            "tensor_prefix": "draft.",
            "config": "draft/config.json",
        }
    config = json.dumps({**said, "architecture": "", "os": ""}, separators=(",", ":")).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": _descriptor(art, config, "application/vnd.docker.container.image.v1+json"),
        "layers": layers,
    }
    art.manifest = json.dumps(doc, separators=(",", ":")).encode()
    return art


def with_created(art: Artifact, created: str, *, annotation: bool = False) -> Artifact:
    """``art`` saying when it was made: ``created`` in its config (as an OCI image config
    does), or as the manifest's ``org.opencontainers.image.created`` annotation."""
    doc = json.loads(art.manifest)
    if annotation:
        doc["annotations"] = {"org.opencontainers.image.created": created}
    else:
        config = json.loads(art.blobs[doc["config"]["digest"]])
        data = json.dumps({**config, "created": created}, separators=(",", ":")).encode()
        doc["config"] = {**doc["config"], "digest": art.add(data), "size": len(data)}
    art.manifest = json.dumps(doc, separators=(",", ":")).encode()
    return art


MAX_ROUNDS = 10


def lay_out(art: Artifact, **kwargs: object) -> tuple[ModelTree, int, int]:
    """``files_of`` of the artifact, fulfilling its byte requests from the artifact's blobs:
    the tree, the rounds of requests it took and the bytes they asked for."""
    manifest = parse_manifest(art.manifest)
    known = BlobBytes()
    asked = 0
    for rounds in range(MAX_ROUNDS):
        found = files_of(manifest, known, **kwargs)  # type: ignore[arg-type]
        if isinstance(found, ModelTree):
            return found, rounds, asked
        for r in found.reads:
            known.add(r.digest, r.offset, art.read(r.digest, r.offset, r.length))
            asked += r.length
    raise AssertionError(f"files_of still needed bytes after {MAX_ROUNDS} rounds")


# -- pushing ----------------------------------------------------------------------------------


def _request(
    host: str, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> http.client.HTTPResponse:
    h, _, port = host.partition(":")
    conn = http.client.HTTPConnection(h, int(port or 80), timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def push(host: str, repo: str, tag: str, art: Artifact) -> str:
    """Upload every blob and the manifest to the registry at ``host`` (plain http)."""
    for digest, data in art.blobs.items():
        if _request(host, "HEAD", f"/v2/{repo}/blobs/{digest}").status == 200:
            continue
        start = _request(host, "POST", f"/v2/{repo}/blobs/uploads/")
        assert start.status == 202, start.status
        location = start.headers["Location"]
        if location.startswith("http"):
            location = "/" + location.split("/", 3)[3]
        sep = "&" if "?" in location else "?"
        put = _request(
            host,
            "PUT",
            f"{location}{sep}digest={digest}",
            data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )
        assert put.status == 201, (digest, put.status)
    put = _request(
        host, "PUT", f"/v2/{repo}/manifests/{tag}", art.manifest, {"Content-Type": art.media_type}
    )
    assert put.status == 201, put.status
    return digest_of(art.manifest)


def quantized_folder(folder: Path) -> Path:
    """A small folder as Ollama/MLX quantize a weight: packed ``uint32`` words with its
    ``.scale`` and ``.bias`` beside it, a plain norm, and a Llama ``config.json``."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file(
        {
            "layer.weight": np.zeros((64, 8), dtype=np.uint32),
            "layer.weight.scale": np.ones((64, 1), dtype=np.float16),
            "layer.weight.bias": np.zeros((64, 1), dtype=np.float16),
            "norm.weight": np.ones(64, dtype=np.float32),
        },
        str(folder / "model.safetensors"),
    )
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096})
    )
    return folder
