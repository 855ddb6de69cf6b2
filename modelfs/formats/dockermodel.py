"""Docker Model Runner artifacts: an Ollama model re-described for ``docker model pull``.

This module owns turning a parsed Ollama manifest (plus the GGUF header of its
weights) into what Docker Model Runner reads: a config blob of media type
``application/vnd.docker.ai.model.config.v0.1+json`` and an OCI image manifest
whose layers are the *same blobs* as the Ollama model's, re-labelled. No byte of
the weights is copied: the registry stores the GGUF once and both manifests
point at it.

The format is Docker's own code, docker/model-runner ``pkg/distribution``
(formerly docker/model-distribution): ``types/config.go`` (media types,
``ConfigFile``/``Config``/``Descriptor``), ``format/gguf.go`` (how each config
field is derived from the GGUF header, through gpustack/gguf-parser-go v0.24.0),
``builder/builder.go`` and ``internal/mutate/model.go`` (``rootfs.diff_ids`` lists
every layer, in order) and ``internal/partial/partial.go`` (``ManifestForLayers``:
an OCI manifest, no ``artifactType``). The bytes are what Go's ``json.Marshal``
writes for those structs: fields in struct order, map keys sorted, ``<``, ``>``,
``&``, U+2028 and U+2029 escaped, ``created`` in RFC 3339 with nanoseconds.

Layers. Ollama's ``model`` layers become ``application/vnd.docker.ai.gguf.v3``,
``projector`` becomes ``application/vnd.docker.ai.mmproj`` and ``license``
becomes ``application/vnd.docker.ai.license``. Every other layer (template,
system, params, messages, adapters, the modelfs chunk index
``application/vnd.modelfs.chunks.v1+json``) is KEPT with its own media type,
because Docker's client tolerates layers it has no type for: a pull stores every
manifest layer (``internal/store/store.go``), ``checkCompat`` in
``distribution/client.go`` only checks the config media type, and the v0.1
unpacker (``internal/bundle/unpack.go``) picks layers by media type and ignores
the rest. Keeping them costs Docker a few KB and keeps the artifact whole for
modelfs and Ollama-aware readers; the chunk index stays valid because it names
the GGUF blob by digest. An Ollama template is a Go template, not Jinja, so it
is never labelled ``application/vnd.docker.ai.chat.template.jinja`` (Docker's
llama.cpp then uses the Jinja template inside the GGUF, as it does for its own
models). Docker ignores the system prompt, params and adapters.

Known differences from Docker's builder: ``quantization`` comes from
``general.file_type``; a file without one gets ``Unknown`` (gguf-parser-go would
guess from the tensor types). ``size`` is the file less its aligned header;
gguf-parser-go pads a header that already ends on the alignment by one more
alignment unit, so its figure can be 32 bytes smaller (invisible at two decimals
but for a boundary). Layers carry no annotations: v0.1 artifacts do not need
the file path and metadata ones, and the cache has no file names or mtimes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from modelfs.formats.digest import Digest
from modelfs.formats.gguf import GGUFArray, GGUFInfo, GGUFSkippedString
from modelfs.formats.gofmt import go_f_float, go_json, go_time
from modelfs.formats.manifest import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_OCI_MANIFEST,
    OLLAMA_LAYER_PREFIX,
    Layer,
    Manifest,
)

MEDIA_TYPE_DOCKER_MODEL_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
MEDIA_TYPE_DOCKER_GGUF = "application/vnd.docker.ai.gguf.v3"
MEDIA_TYPE_DOCKER_LICENSE = "application/vnd.docker.ai.license"
MEDIA_TYPE_DOCKER_MMPROJ = "application/vnd.docker.ai.mmproj"
# Not produced (Ollama templates are Go templates); named so readers can recognise it.
MEDIA_TYPE_DOCKER_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
FORMAT_GGUF = "gguf"

# Ollama layer type -> Docker layer type; layers of any other type keep theirs.
DOCKER_LAYER_TYPES: dict[str, str] = {
    MEDIA_TYPE_MODEL: MEDIA_TYPE_DOCKER_GGUF,
    OLLAMA_LAYER_PREFIX + "projector": MEDIA_TYPE_DOCKER_MMPROJ,
    MEDIA_TYPE_LICENSE: MEDIA_TYPE_DOCKER_LICENSE,
}

# format/gguf.go: arrays longer than this are left out of config.gguf.
MAX_GGUF_ARRAY_ITEMS = 50
MAX_CONTEXT_SIZE = (1 << 31) - 1  # context_size is an int32

# gguf-parser-go's GGUFFileType names, indexed by general.file_type (its stringer output).
_FILE_TYPE_NAMES = tuple(
    "MOSTLY_" + n
    for n in (
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_1_SOME_F16",
        "Q4_2",
        "Q4_3",
        "Q8_0",
        "Q5_0",
        "Q5_1",
        "Q2_K",
        "Q3_K_S",
        "Q3_K_M",
        "Q3_K_L",
        "Q4_K_S",
        "Q4_K_M",
        "Q5_K_S",
        "Q5_K_M",
        "Q6_K",
        "IQ2_XXS",
        "IQ2_XS",
        "Q2_K_S",
        "IQ3_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ3_M",
        "IQ2_S",
        "IQ2_M",
        "IQ4_XS",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "MXFP4",
    )
)
_UNKNOWN_FILE_TYPE = "Unknown"

# gguf-parser-go's architecture rules (file_metadata.go): these general.architecture
# values, or these tensor names without one, make a "diffusion" model.
_DIFFUSION_ARCHITECTURES = frozenset({"flux", "sd", "sd2.5", "sd3", "stable-diffusion"})
_DIFFUSION_TENSORS = re.compile(
    r"model\.diffusion_model\.|double_blocks\.|joint_blocks\.|decoder\.|encoder\.|text_model\."
)

# scalar.go's unit tables, largest first.
_NUMBER_UNITS = ((1e15, "Q"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
_BYTE_UNITS = (
    (1 << 50, "Pi"),
    (1e15, "P"),
    (1 << 40, "Ti"),
    (1e12, "T"),
    (1 << 30, "Gi"),
    (1e9, "G"),
    (1 << 20, "Mi"),
    (1e6, "M"),
    (1 << 10, "Ki"),
    (1e3, "K"),
)


@dataclass(frozen=True)
class DockerModel:
    """A Docker Model Runner artifact: its config blob, layers and OCI manifest bytes."""

    config: bytes
    config_layer: Layer
    layers: tuple[Layer, ...]
    manifest: bytes


def _scaled(n: int, units: tuple[tuple[float, str], ...], suffix: str) -> str:
    """gguf-parser-go's ``String()`` of a scalar, then model-runner's normalizeUnitString
    (no space before the unit): 134515008 -> "134.52M", 96576768 bytes -> "92.10MiB"."""
    base, unit = 1.0, ""
    for b, u in units:
        if n >= b:
            base, unit = float(b), u
            break
    text = f"{n / base:.2f}"
    if text.endswith(".00"):
        text = text[:-3]
    return text + unit + suffix


def parameters_text(count: int) -> str:
    """``config.parameters``: 134515008 -> "134.52M", 7000000000 -> "7B"."""
    return "0" if count == 0 else _scaled(count, _NUMBER_UNITS, "")


def size_text(nbytes: int) -> str:
    """``config.size``: the tensor data's bytes, 96576768 -> "92.10MiB"."""
    return "0B" if nbytes == 0 else _scaled(nbytes, _BYTE_UNITS, "B")


def quantization_text(info: GGUFInfo) -> str:
    """``config.quantization``: gguf-parser-go's file type name, e.g. "MOSTLY_Q4_K_M"."""
    ftype = info.metadata.get("general.file_type")
    if not isinstance(ftype, int) or isinstance(ftype, bool) or ftype < 0:
        return _UNKNOWN_FILE_TYPE
    ftype &= 0xFFFFFFFF  # read as a uint32
    if ftype < len(_FILE_TYPE_NAMES):
        return _FILE_TYPE_NAMES[ftype]
    return _UNKNOWN_FILE_TYPE if ftype == len(_FILE_TYPE_NAMES) else f"GGUFFileType({ftype})"


def _has_diffusion_tensors(info: GGUFInfo) -> bool:
    return any(_DIFFUSION_TENSORS.match(t.name) for t in info.tensors)


def architecture_text(info: GGUFInfo) -> str:
    """``config.architecture`` as gguf-parser-go's ``Metadata().Architecture`` reads it."""
    meta = info.metadata
    hint = meta.get("controlvector.model_hint")
    arch = meta.get("general.architecture")
    if isinstance(hint, str):
        return hint.strip()
    if isinstance(arch, str) and arch not in _DIFFUSION_ARCHITECTURES:
        return arch.strip()
    if meta.get("general.type") == "imatrix":
        return "imatrix"
    return "diffusion" if _has_diffusion_tensors(info) else "llama"


def context_size(info: GGUFInfo) -> int | None:
    """``config.context_size``: ``<arch>.context_length`` of a transformer model, if sane."""
    meta = info.metadata
    arch = meta.get("general.architecture", "llama")
    kind = meta.get("general.type", "model")
    if _has_diffusion_tensors(info) or arch in ("clip", "controlvector"):
        return None
    if kind in ("adapter", "imatrix"):
        return None
    value = meta.get(f"{arch}.context_length")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    n = int(value)
    return n if 0 < n <= MAX_CONTEXT_SIZE else None


def _go_scalar(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_f_float(value)
    if isinstance(value, str):
        return value
    return None  # nested arrays: format/gguf.go skips their items


def gguf_metadata(info: GGUFInfo) -> dict[str, str]:
    """``config.gguf``: every header key as a string; arrays of over 50 items left out,
    shorter ones joined with ", " (format/gguf.go ``extractGGUFMetadata``); strings over a
    MiB, which modelfs does not keep, left out too. Sorted by key."""
    out: dict[str, str] = {}
    for key, value in info.metadata.items():
        if isinstance(value, GGUFSkippedString):
            continue  # over a MiB: not kept (modelfs.formats.gguf.KEPT_STRING_BYTES)
        if isinstance(value, GGUFArray):
            if value.count > MAX_GGUF_ARRAY_ITEMS or value.values is None:
                continue
            items = (_go_scalar(v) for v in value.values)
            out[key] = ", ".join(i for i in items if i is not None)
        else:
            text = _go_scalar(value)
            out[key] = text if text is not None else ""
    return dict(sorted(out.items()))


def docker_layers(manifest: Manifest) -> tuple[Layer, ...]:
    """The Ollama model's layers, in order, re-labelled where Docker has a type for them."""
    return tuple(
        Layer(layer.digest, DOCKER_LAYER_TYPES.get(layer.media_type, layer.media_type), layer.size)
        for layer in manifest.layers
    )


def docker_config(
    info: GGUFInfo, weights_bytes: int, layers: tuple[Layer, ...], created: datetime
) -> bytes:
    """The config blob (``types.ConfigFile``) for weights of ``weights_bytes`` whose header
    is ``info``; ``layers`` are the artifact's layers (their digests are the diff_ids)."""
    config: dict[str, object] = {
        "format": FORMAT_GGUF,
        "quantization": quantization_text(info),
        "parameters": parameters_text(info.parameter_count),
        "architecture": architecture_text(info),
        "size": size_text(max(0, weights_bytes - info.header_bytes)),
        "gguf": gguf_metadata(info),
    }
    if not config["architecture"]:
        del config["architecture"]  # omitempty
    if not config["gguf"]:
        del config["gguf"]
    if (ctx := context_size(info)) is not None:
        config["context_size"] = ctx
    doc = {
        "config": config,
        "descriptor": {"created": go_time(created)},
        "rootfs": {"type": "rootfs", "diff_ids": [str(layer.digest) for layer in layers]},
    }
    return go_json(doc)


def build_docker_manifest(config: Layer, layers: tuple[Layer, ...]) -> bytes:
    """The OCI image manifest (``partial.ManifestForLayers``): no artifactType, descriptors
    as ``{mediaType, size, digest}``."""

    def obj(layer: Layer) -> dict[str, object]:
        return {"mediaType": layer.media_type, "size": layer.size, "digest": str(layer.digest)}

    return go_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": obj(config),
            "layers": [obj(layer) for layer in layers],
        }
    )


def is_docker_model(manifest: Manifest) -> bool:
    return manifest.config.media_type == MEDIA_TYPE_DOCKER_MODEL_CONFIG


def weights_layer(manifest: Manifest) -> Layer | None:
    """The GGUF layer whose header describes the model: the first Ollama ``model`` layer."""
    found = manifest.layers_of_type(MEDIA_TYPE_MODEL)
    return found[0] if found else None


def docker_model(manifest: Manifest, info: GGUFInfo, created: datetime) -> DockerModel:
    """The Docker artifact of the Ollama model ``manifest``; ``info`` is the header of its
    weights (``weights_layer``). Same inputs, same bytes."""
    weights = weights_layer(manifest)
    if weights is None:
        raise ValueError("the manifest has no GGUF model layer")
    layers = docker_layers(manifest)
    config = docker_config(info, weights.size, layers, created)
    config_layer = Layer(Digest.of_bytes(config), MEDIA_TYPE_DOCKER_MODEL_CONFIG, len(config))
    return DockerModel(
        config=config,
        config_layer=config_layer,
        layers=layers,
        manifest=build_docker_manifest(config_layer, layers),
    )
