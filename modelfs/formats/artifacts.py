"""What kind of artifact a manifest is, and the media types and annotations each kind uses.

The kinds (docs/formats.md): Ollama classic (GGUF), Ollama safetensors (one blob per
tensor, ``ollama create --experimental``), Docker Model Runner v0.1 and v0.2, CNCF
ModelPack (written by modctl, by ``docker model package --format cncf`` and KitOps).
Values from docker/model-runner ``pkg/distribution/types/config.go``, modelpack/model-spec
``specs-go/v1`` and ollama/ollama ``x/create`` (see the reference in docs/formats.md).
"""

from __future__ import annotations

import calendar
import enum
import json
import re
from dataclasses import dataclass

from modelfs.formats.manifest import OLLAMA_LAYER_PREFIX, Layer, Manifest

# Docker Model Runner
DMR = "application/vnd.docker.ai."
DMR_CONFIG_V01 = DMR + "model.config.v0.1+json"
DMR_CONFIG_V02 = DMR + "model.config.v0.2+json"
DMR_GGUF = DMR + "gguf.v3"
DMR_SAFETENSORS = DMR + "safetensors"
DMR_MMPROJ = DMR + "mmproj"
DMR_CHAT_TEMPLATE = DMR + "chat.template.jinja"
DMR_LICENSE = DMR + "license"
DMR_FILE = DMR + "model.file"
DMR_VLLM_TAR = DMR + "vllm.config.tar"
DMR_DIR_TAR = DMR + "dir.tar"
DMR_DDUF = DMR + "dduf"

# CNCF ModelPack (and its pre-CNCF "cnai" spelling)
CNCF_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
CNCF_CONFIG = "application/vnd.cncf.model.config.v1+json"
CNCF_LAYER_PREFIXES = ("application/vnd.cncf.model.", "application/vnd.cnai.model.")
_CNCF_LAYER = re.compile(
    r"application/vnd\.(?:cncf|cnai)\.model\."
    r"(?P<kind>weight|weight\.config|doc|code|dataset)\.v1\.(?P<enc>[a-z0-9.+-]+)"
)

# KitOps ModelKits (kitops-ml/kitops pkg/lib/constants/mediaType.go): tars of Kitfile paths
KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
_KITOPS_LAYER = re.compile(
    r"application/vnd\.kitops\.modelkit\.(?:model|modelpart|dataset|code|docs)\.v1\."
    r"(?P<enc>tar(?:\+[a-z0-9]+)?)"
)

# Ollama's safetensors format
OLLAMA_TENSOR = OLLAMA_LAYER_PREFIX + "tensor"
OLLAMA_JSON = OLLAMA_LAYER_PREFIX + "json"

FILEPATH_KEYS = ("org.cncf.model.filepath", "org.cnai.model.filepath")
METADATA_KEYS = ("org.cncf.model.file.metadata+json", "org.cnai.model.file.metadata+json")
TITLE_KEY = "org.opencontainers.image.title"


class Kind(enum.Enum):
    OLLAMA = "ollama"  # classic: GGUF layers and Modelfile layers
    OLLAMA_TENSORS = "ollama-safetensors"
    DMR_V01 = "dmr-v0.1"
    DMR_V02 = "dmr-v0.2"
    MODELPACK = "modelpack"
    KITOPS = "kitops"


def kind_of(manifest: Manifest) -> Kind:
    types = {layer.media_type for layer in manifest.layers}
    if OLLAMA_TENSOR in types:
        return Kind.OLLAMA_TENSORS
    if manifest.config.media_type == DMR_CONFIG_V02:
        return Kind.DMR_V02
    if (
        manifest.artifact_type == CNCF_ARTIFACT
        or manifest.config.media_type == CNCF_CONFIG
        or any(t.startswith(CNCF_LAYER_PREFIXES) for t in types)
    ):
        return Kind.MODELPACK
    if manifest.config.media_type == DMR_CONFIG_V01:
        return Kind.DMR_V01
    if manifest.config.media_type == KITOPS_CONFIG:
        return Kind.KITOPS
    return Kind.OLLAMA


def cncf_layer(media_type: str) -> tuple[str, str] | None:
    """(kind, encoding) of a ModelPack layer type: ("weight", "raw"), ("doc", "tar+gzip") …
    DMR's older ``weight.v1.gguf``/``weight.v1.safetensors`` are ("weight", "raw")."""
    m = _CNCF_LAYER.fullmatch(media_type)
    if m is None:
        return None
    enc = m["enc"]
    if enc in ("gguf", "safetensors"):
        enc = "raw"
    return m["kind"], enc


def kitops_encoding(media_type: str) -> str | None:
    """ "tar" or "tar+gzip" … of a KitOps ModelKit layer type; None for any other type."""
    m = _KITOPS_LAYER.fullmatch(media_type)
    return None if m is None else m["enc"]


def filepath_of(layer: Layer) -> str | None:
    for key in FILEPATH_KEYS:
        if (value := layer.annotation(key)) is not None:
            return value
    return None


@dataclass(frozen=True)
class FileMetadata:
    mode: int | None
    mtime_ns: int | None


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of a Go ``time.Time`` JSON value, or None."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(m[i]) for i in range(1, 7))
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    if m[9]:
        offset = (int(m[10]) * 60 + int(m[11])) * 60
        seconds -= offset if m[9] == "+" else -offset
    frac = int((m[7] or "").ljust(9, "0"))
    return seconds * 1_000_000_000 + frac


def metadata_of(layer: Layer) -> FileMetadata:
    """Mode and mtime from ``org.cncf.model.file.metadata+json``; what is malformed is left out
    (the file is still served, with the mount's defaults)."""
    for key in METADATA_KEYS:
        if (text := layer.annotation(key)) is not None:
            break
    else:
        return FileMetadata(None, None)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return FileMetadata(None, None)
    if not isinstance(doc, dict):
        return FileMetadata(None, None)
    mode = doc.get("mode")
    mode = mode & 0o777 if isinstance(mode, int) and not isinstance(mode, bool) else None
    mtime = doc.get("mtime")
    return FileMetadata(mode, rfc3339_ns(mtime) if isinstance(mtime, str) else None)
