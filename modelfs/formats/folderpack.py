"""A model folder laid out as each tool lays it out in a registry: Docker Model Runner v0.2,
CNCF ModelPack and Ollama's tensor format (``modelfs create --dir``, ``push --format``).

Pure: it is given the folder's files (their paths, stat figures and, once stored, their
blobs) and the facts read from their headers, and returns media types, annotations, config
bodies and manifest bytes. Reading files and writing blobs is the command's
(commands/folderstore.py). The layouts, from the reference in docs/formats.md:

- ``docker``: ``docker model package --safetensors-dir`` (docker/model-runner
  ``builder/from_directory.go``): one layer per file in the walk's lexical order,
  ``files.Classify`` media types, the three ``org.cncf.model.*`` annotations, a
  ``model.config.v0.2+json`` config whose ``rootfs.diff_ids`` are the layer digests, an
  OCI manifest without ``artifactType``; Go's ``json.Marshal`` bytes.
- ``cncf``: ``docker model package --format cncf`` (``modelpack/convert.go``): the same
  layers and annotations, media types remapped to ``application/vnd.cncf.model.
  {weight,weight.config,doc}.v1.raw``, ``artifactType`` ``…model.manifest.v1+json`` and a
  ModelPack config (``descriptor``, ``config``, ``modelfs.diffIds``). It is what both
  Docker Model Runner and modctl (``modctl extract``) read, hence the default.
- ``ollama``: ``ollama create --experimental`` (``x/create``): every tensor of the
  safetensors files as a one-tensor safetensors blob (header space-padded to a multiple of
  8, data from offset 0) in tensor-name order, each descriptor carrying ``name``; every
  top-level ``*.json`` but the shard index as ``image.json``; a ConfigV2 body; a Docker v2
  manifest. Other files (subdirectories, ``tokenizer.model``, ``*.txt``) are not kept, as
  Ollama keeps none of them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from modelfs.formats import artifacts as a
from modelfs.formats.dockermodel import parameters_text
from modelfs.formats.files import DRAFT_CONFIG, DRAFT_DIR, DRAFT_TENSOR_PREFIX
from modelfs.formats.gofmt import go_json, go_time
from modelfs.formats.manifest import MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_OCI_MANIFEST, Layer
from modelfs.formats.modelfile import Modelfile, ModelfileInvalid
from modelfs.formats.safetensors import HEADER_ALIGN_BYTES, INDEX_FILENAME, TensorInfo

DOCKER, CNCF, OLLAMA = "docker", "cncf", "ollama"
FOLDER_FORMATS = (DOCKER, CNCF, OLLAMA)
# What ``create --dir`` writes unless told: readable by Docker Model Runner and modctl both.
DEFAULT_FOLDER_FORMAT = CNCF
MEDIA_TYPE_DOCKER_V2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
UNTESTED_KEY = "org.cncf.model.file.mediatype.untested"
FILEPATH_KEY = a.FILEPATH_KEYS[0]
METADATA_KEY = a.METADATA_KEYS[0]
# x/create: the Ollama version that reads the tensor format (ConfigV2 "requires").
OLLAMA_TENSOR_REQUIRES = "0.19.0"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".dduf")


@dataclass(frozen=True)
class FolderFile:
    """A file of the folder: where it goes and what ``stat`` said of it."""

    path: str  # relative, "/"-separated
    size: int
    mode: int  # permission bits
    mtime_ns: int


@dataclass(frozen=True)
class FolderFacts:
    """What the configs say about the model, read from the weights' headers and config.json."""

    format: str  # "safetensors" or "gguf"
    parameters: int
    tensor_count: int
    dtypes: tuple[str, ...]  # most parameters first
    weights_bytes: int  # the weight files' sizes, summed
    architecture: str | None = None  # GGUF's general.architecture, config.json's model_type
    quantization: str | None = None  # GGUF's file type name; else from the dtypes
    safetensors_format: str | None = None  # __metadata__.format of the first file
    context_size: int | None = None


def dmr_media_type(path: str) -> str:
    """Docker Model Runner's ``files.Classify`` of a file name."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".gguf"):
        return a.DMR_GGUF
    if name.endswith(".safetensors"):
        return a.DMR_SAFETENSORS
    if name.endswith(".dduf"):
        return a.DMR_DDUF
    if name.endswith(".jinja") or "chat_template" in name:
        return a.DMR_CHAT_TEMPLATE
    if any(word in name for word in ("license", "licence", "copying", "notice")):
        return a.DMR_LICENSE
    return a.DMR_FILE


_CNCF_KINDS = {
    a.DMR_GGUF: "weight",
    a.DMR_SAFETENSORS: "weight",
    a.DMR_DDUF: "weight",
    a.DMR_MMPROJ: "weight",
    a.DMR_LICENSE: "doc",
}


def cncf_media_type(dmr_type: str) -> str:
    """``modelpack/convert.go``: weights to ``weight``, licenses to ``doc``, every other
    file (configs, tokenizers, chat templates, READMEs) to ``weight.config``; all ``raw``."""
    return f"application/vnd.cncf.model.{_CNCF_KINDS.get(dmr_type, 'weight.config')}.v1.raw"


def go_time_ns(ns: int) -> str:
    """A file's mtime as Go's ``time.Time`` JSON in UTC, nanoseconds kept."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = go_time(datetime.fromtimestamp(seconds, UTC))
    if digits := f"{frac:09d}".rstrip("0"):
        text = f"{text[:-1]}.{digits}Z"
    return text


def file_metadata(f: FolderFile) -> str:
    """``org.cncf.model.file.metadata+json``: the tar-header-like FileMetadata of the file."""
    return go_json(
        {
            "name": f.path.rsplit("/", 1)[-1],
            "mode": f.mode & 0o777,
            "uid": 0,
            "gid": 0,
            "size": f.size,
            "mtime": go_time_ns(f.mtime_ns),
            "typeflag": 0,
        }
    ).decode()


def file_layer(layer: Layer, f: FolderFile, fmt: str) -> Layer:
    """The stored blob of ``f`` as its layer in a ``docker`` or ``cncf`` artifact."""
    dmr = dmr_media_type(f.path)
    annotations = {  # Go marshals a map with its keys sorted
        UNTESTED_KEY: "false",
        METADATA_KEY: file_metadata(f),
        FILEPATH_KEY: f.path,
    }
    return Layer(
        layer.digest,
        dmr if fmt == DOCKER else cncf_media_type(dmr),
        layer.size,
        annotations=tuple(sorted(annotations.items())),
    )


def _decimal_bytes(n: int) -> str:
    """DMR's safetensors ``size``: 90868376 -> "90.87MB"."""
    for base, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= base:
            text = f"{n / base:.2f}"
            return (text[:-3] if text.endswith(".00") else text) + unit + "B"
    return f"{n}B"


def quantization_of(facts: FolderFacts) -> str:
    if facts.quantization:
        return facts.quantization
    return facts.dtypes[0] if len(facts.dtypes) == 1 else "mixed"


def _descriptor(layer: Layer) -> dict[str, object]:
    """go-containerregistry's ``v1.Descriptor`` field order."""
    out: dict[str, object] = {
        "mediaType": layer.media_type,
        "size": layer.size,
        "digest": str(layer.digest),
    }
    if layer.annotations:
        out["annotations"] = dict(layer.annotations)
    return out


def dmr_config(facts: FolderFacts, layers: list[Layer], created: datetime) -> bytes:
    """``types.ConfigFile`` for a v0.2 artifact (the same body as v0.1)."""
    config: dict[str, object] = {
        "format": facts.format,
        "quantization": quantization_of(facts),
        "parameters": parameters_text(facts.parameters),
    }
    if facts.format == "gguf" and facts.architecture:
        config["architecture"] = facts.architecture
    config["size"] = _decimal_bytes(facts.weights_bytes)
    if facts.format == "safetensors":
        config["safetensors"] = {
            "format": facts.safetensors_format or "",
            "tensor_count": str(facts.tensor_count),
        }
    if facts.context_size:
        config["context_size"] = facts.context_size
    return go_json(
        {
            "config": config,
            "descriptor": {"created": go_time(created)},
            "rootfs": {"type": "rootfs", "diff_ids": [str(layer.digest) for layer in layers]},
        }
    )


def cncf_config(facts: FolderFacts, layers: list[Layer], created: datetime) -> bytes:
    """The ModelPack config ``docker model package --format cncf`` writes."""
    descriptor: dict[str, object] = {"createdAt": go_time(created)}
    config: dict[str, object] = {}
    if facts.architecture:
        descriptor["family"] = facts.architecture
        config["architecture"] = facts.architecture
    config["format"] = facts.format
    config["paramSize"] = parameters_text(facts.parameters)
    config["quantization"] = quantization_of(facts)
    return go_json(
        {
            "descriptor": descriptor,
            "config": config,
            "modelfs": {"type": "layers", "diffIds": [str(layer.digest) for layer in layers]},
        }
    )


def oci_manifest(config: Layer, layers: list[Layer], artifact_type: str | None = None) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
    doc["config"] = _descriptor(config)
    doc["layers"] = [_descriptor(layer) for layer in layers]
    return go_json(doc)


def config_media_type(fmt: str) -> str:
    return {DOCKER: a.DMR_CONFIG_V02, CNCF: a.CNCF_CONFIG, OLLAMA: MEDIA_TYPE_DOCKER_CONFIG}[fmt]


# -- Ollama's tensor format ----------------------------------------------------------------


def ollama_tensor_file(path: str) -> bool:
    """A safetensors file whose tensors ``ollama create`` takes (one subdirectory level too)."""
    return path.endswith(".safetensors") and path.count("/") <= 1


def ollama_json_file(path: str, draft: bool = False) -> bool:
    """A file ``ollama create --experimental`` keeps as an ``image.json`` layer: a top-level
    ``*.json`` but the shard index; with ``draft``, the draft folder's too (``draft/<file>``)."""
    if draft and path.startswith(DRAFT_DIR + "/"):
        path = path.removeprefix(DRAFT_DIR + "/")
    return "/" not in path and path.endswith(".json") and path != INDEX_FILENAME


def draft_config(config_json: bytes) -> dict[str, str]:
    """The config's ``draft`` for a draft folder whose config.json is ``config_json``, as
    ``ollama create`` writes it (x/create/client/create.go ``draftMetadata``); ``ValueError``
    if it names no architecture (Ollama refuses such a draft too)."""
    try:
        doc = json.loads(config_json)
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    archs = doc.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    if not arch and isinstance(doc.get("model_type"), str):
        arch = doc["model_type"]
    if not arch:
        raise ValueError(f"draft architecture not found in {DRAFT_CONFIG}")
    return {
        "model_format": "safetensors",
        "architecture": arch,
        "tensor_prefix": DRAFT_TENSOR_PREFIX,
        "config": DRAFT_CONFIG,
    }


def one_tensor_prefix(tensor: TensorInfo) -> bytes:
    """The first bytes of a one-tensor blob: u64le length, then the JSON header padded with
    spaces to a multiple of 8; the tensor's data follows from offset 0."""
    header = json.dumps(
        {
            tensor.name: {
                "dtype": tensor.dtype,
                "shape": list(tensor.shape),
                "data_offsets": [0, tensor.nbytes],
            }
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % HEADER_ALIGN_BYTES)
    return struct.pack("<Q", len(header)) + header


def tensor_layer(layer: Layer, tensor_name: str) -> Layer:
    return Layer(layer.digest, a.OLLAMA_TENSOR, layer.size, name=tensor_name)


def json_layer(layer: Layer, path: str) -> Layer:
    return Layer(layer.digest, a.OLLAMA_JSON, layer.size, name=path)


def ollama_config(
    facts: FolderFacts,
    names: tuple[tuple[str, str], ...] = (),
    draft: dict[str, str] | None = None,
) -> bytes:
    """ConfigV2 as ``x/create`` writes it for an unquantized safetensors model; ``names``:
    the Modelfile's ``parser`` and ``renderer`` (``resolveParserName``,
    ``resolveRendererName``), after ``requires``; ``draft`` (``draft_config``) before
    ``architecture``, as ConfigV2 orders them."""
    doc: dict[str, object] = {
        "model_format": "safetensors",
        "file_type": "",
        "capabilities": ["completion"],
        "requires": OLLAMA_TENSOR_REQUIRES,
    }
    doc.update(names)
    if draft is not None:
        doc["draft"] = draft
    doc.update({"architecture": "", "os": ""})
    return json.dumps(doc, separators=(",", ":")).encode()


def ollama_manifest(config: Layer, layers: list[Layer]) -> bytes:
    """A Docker v2 manifest with Ollama's ``name`` on each layer (``manifest/layer.go``)."""

    def obj(layer: Layer) -> dict[str, object]:
        out: dict[str, object] = {
            "mediaType": layer.media_type,
            "digest": str(layer.digest),
            "size": layer.size,
        }
        if layer.name is not None:
            out["name"] = layer.name
        return out

    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_DOCKER_V2_MANIFEST,
        "config": obj(config),
        "layers": [obj(layer) for layer in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# -- a Modelfile whose FROM is a folder --------------------------------------------------------


def is_license_file(path: str) -> bool:
    """A license file of the folder (``files.Classify``'s rule, as Docker Model Runner names
    one): what ``--format ollama`` makes an Ollama license layer of (``…image.license``,
    what ``ollama show --license`` reads), as a Modelfile's LICENSE line would be."""
    return dmr_media_type(path) == a.DMR_LICENSE


# A LICENSE of the Modelfile as a file of a Docker or ModelPack artifact: where
# ``docker model package --license`` puts one (a layer of its own, its path the file's name).
LICENSE_FILE = "LICENSE"
_FORMAT_NAMES = {
    DOCKER: "a docker model",
    CNCF: "a cncf (ModelPack) model",
    OLLAMA: "an ollama model",
}
# Why a command has no place in a format's artifact, for the one-line refusal.
_NO_PLACE = {
    (DOCKER, "TEMPLATE"): "Docker Model Runner's chat template is Jinja, an Ollama TEMPLATE "
    "a Go template (put a chat_template.jinja in the folder)",
    (CNCF, "TEMPLATE"): "ModelPack has no Ollama (Go) template (put a chat_template.jinja "
    "in the folder)",
    (DOCKER, "SYSTEM"): "Docker Model Runner's artifact has no system prompt",
    (CNCF, "SYSTEM"): "ModelPack has no system prompt",
    (DOCKER, "MESSAGE"): "Docker Model Runner's artifact has no messages",
    (CNCF, "MESSAGE"): "ModelPack has no messages",
    (CNCF, "PARAMETER"): "ModelPack's config has no runtime parameters",
    (DOCKER, "PARAMETER"): "Docker Model Runner's config has only num_ctx (as context_size)",
    (DOCKER, "RENDERER"): "Docker Model Runner's artifact has no Ollama renderer",
    (CNCF, "RENDERER"): "ModelPack has no Ollama renderer",
    (DOCKER, "PARSER"): "Docker Model Runner's artifact has no Ollama parser",
    (CNCF, "PARSER"): "ModelPack has no Ollama parser",
}


@dataclass(frozen=True)
class ModelfileExtras:
    """What the other lines of a Modelfile FROM a folder add to the folder's artifact."""

    ollama_layers: tuple[tuple[str, bytes], ...] = ()  # ollama: (media type, bytes), in order
    licenses: tuple[bytes, ...] = ()  # docker, cncf: each a license file of its own
    context_size: int | None = None  # docker: PARAMETER num_ctx, the config's context_size
    # ollama: RENDERER and PARSER, as the config's ``parser`` and ``renderer``
    config_names: tuple[tuple[str, str], ...] = ()
    where: str = "Modelfile"  # for messages

    def license_files(self, taken: set[str]) -> list[tuple[str, bytes]]:
        """The license files at ``LICENSE``, ``LICENSE-2`` …, skipping the names the folder
        has a file at (``taken``): its own license stays beside them."""
        out = []
        n = 1
        for text in self.licenses:
            while (path := LICENSE_FILE if n == 1 else f"{LICENSE_FILE}-{n}") in taken:
                n += 1
            out.append((path, text))
            n += 1
        return out


def modelfile_extras(mf: Modelfile, fmt: str, where: str) -> ModelfileExtras:
    """What ``mf``'s lines other than FROM mean for a folder laid out as ``fmt``, or a
    one-line ``ModelfileInvalid`` naming the line's command and the format.

    ``ollama``: TEMPLATE, SYSTEM, LICENSE, PARAMETER and MESSAGE become Ollama's layers, the
    bytes ``ollama create`` writes for them with a GGUF FROM (``ollama create
    --experimental`` appends them to the tensor layers too). ``docker`` and ``cncf``:
    LICENSE becomes a license file; ``docker`` takes PARAMETER num_ctx as the config's
    ``context_size`` (``docker model package --context-size``); the rest has no place there.
    RENDERER and PARSER are ``ollama``'s only: the config's ``renderer`` and ``parser``, as
    ``ollama create --experimental`` writes them. ADAPTER, DRAFT, a second FROM and REQUIRES
    go with no folder format.
    """
    unsupported = [
        word
        for word, value in (
            ("ADAPTER", mf.adapters),
            ("a second FROM", mf.more_from),
            ("DRAFT", mf.drafts),
            ("REQUIRES", mf.requires),
        )
        if value
    ]
    if unsupported:
        raise ModelfileInvalid(
            f"{where}: {unsupported[0]} cannot go with FROM a folder (modelfs keeps a folder's "
            "files and TEMPLATE, SYSTEM, PARAMETER, LICENSE, MESSAGE, RENDERER, PARSER only; "
            "merge an adapter into the weights)"
        )
    if fmt == OLLAMA:
        names = tuple(
            (key, value)
            for key, value in (("parser", mf.parser), ("renderer", mf.renderer))
            if value is not None
        )
        return ModelfileExtras(
            ollama_layers=tuple(mf.ollama_layers()), config_names=names, where=where
        )
    params = dict(mf.parameters)
    context = params.pop("num_ctx", None) if fmt == DOCKER else None
    said = (
        ("TEMPLATE", mf.template),
        ("SYSTEM", mf.system),
        ("PARAMETER", params),
        ("MESSAGE", mf.messages),
        ("RENDERER", mf.renderer),
        ("PARSER", mf.parser),
    )
    for word, value in said:
        if value:
            what = f"PARAMETER {next(iter(params))}" if word == "PARAMETER" else word
            raise ModelfileInvalid(
                f"{where}: {what} cannot go into {_FORMAT_NAMES[fmt]}: "
                f"{_NO_PLACE[fmt, word]}; --format ollama keeps it"
            )
    if context is not None and not is_context_size(context):
        raise ModelfileInvalid(f"{where}: PARAMETER num_ctx {context} is not a context size")
    return ModelfileExtras(
        licenses=tuple(text.encode() for text in mf.licenses),
        context_size=context,  # type: ignore[arg-type]
        where=where,
    )


# -- a context size a model carries, laid out as another format --------------------------------


def is_context_size(value: object) -> bool:
    """A whole number of tokens Docker's ``context_size`` (an int32) can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31


def carried_context(fmt: str, context: int, where: str, said: str) -> tuple[int | None, str | None]:
    """One rule for a context size a model already carries (a Docker config's
    ``context_size``, ``said`` so; an Ollama model's ``num_ctx``) when ``push --format``
    lays it out as ``fmt``: (what ``fmt`` keeps, the warning to log).

    ``docker`` keeps it as ``context_size``, ``ollama`` as ``num_ctx``; ModelPack has no
    field for it, so it is left out with one warning, as Docker Model Runner's own
    conversion of a model to ``--format cncf`` leaves ``context_size`` out (builder.go
    ``convertToCNCF`` → modelpack/convert.go ``DockerConfigToModelPack``): it is a runtime
    default, not the weights, and both runtimes take it at run time (``docker model
    configure --context-size``, Ollama's ``num_ctx`` option). A context size asked for in the
    same command (a Modelfile's ``PARAMETER num_ctx`` with ``--format cncf``) is refused
    instead (``modelfile_extras``), as DMR refuses ``--context-size`` with ``--format cncf``."""
    if fmt == CNCF:
        return None, f"{where}: ModelPack has no context size: num_ctx {context} ({said}) left out"
    return context, None
