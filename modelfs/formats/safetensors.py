"""safetensors headers: parse one (bounded, validated), and lay out one file from many.

A safetensors file is ``u64le N``, an ``N``-byte JSON header mapping each tensor name to
``{dtype, shape, data_offsets: [begin, end]}`` (plus an optional ``__metadata__`` of
strings), then the data; offsets count from the end of the header. ``parse_header``
checks what the safetensors library checks before trusting one: known dtypes, shapes
whose byte size is the offsets' span, spans inside the data.

Ollama's ``create --experimental`` stores one tensor per blob, each blob a complete
safetensors file. ``combine`` lays out the file (or shards) an engine loads from the
tensors of such blobs: tensors sorted by name, data contiguous from offset 0 with no
holes (safetensors' ``validate`` needs exactly that), a compact header with
``__metadata__ {"format": "pt"}`` (transformers refuses a file without it) padded with
spaces to a multiple of 8. The data stays where it is: each tensor is an extent over its
blob. Past ``shard_bytes`` of data, tensors go into ``model-0000i-of-0000N.safetensors``
files, filled in name order, with the ``model.safetensors.index.json`` transformers writes
(``json.dumps(index, indent=2, sort_keys=True) + "\\n"``). Same tensors, same bytes.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from modelfs.errors import ManifestInvalid
from modelfs.formats.digest import Digest

# The safetensors library's own limit on a header.
MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 1_000_000
MAX_DIMS = 16
# transformers' default max_shard_size before 5.0 ("5GB"); engines load any shard size.
SHARD_BYTES = 5_000_000_000
INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
HEADER_ALIGN_BYTES = 8

# dtype -> bits per element (safetensors 0.8's Dtype).
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # from the start of the data
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    header_bytes: int  # N, the JSON's length
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + self.header_bytes

    @property
    def data_bytes(self) -> int:
        return max((t.end for t in self.tensors), default=0)


def header_length(prefix: bytes, where: str) -> int:
    """N from the first 8 bytes of a safetensors file."""
    if len(prefix) < 8:
        raise ManifestInvalid(f"{where}: a safetensors file shorter than its 8-byte length")
    (n,) = struct.unpack_from("<Q", prefix)
    if n < 2 or n > MAX_HEADER_BYTES:
        raise ManifestInvalid(f"{where}: a safetensors header of {n} bytes")
    return n


def _int_list(value: object, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ManifestInvalid(f"{where}: {what} is not a list of non-negative integers")
    return tuple(value)


def parse_header(head: bytes, file_bytes: int | None, where: str) -> SafetensorsHeader:
    """The header at the start of ``head`` (8 + N bytes at least) of a file of ``file_bytes``
    (None: unknown, spans are then checked only against each other)."""
    n = header_length(head, where)
    if len(head) < 8 + n:
        raise ManifestInvalid(f"{where}: the safetensors header is cut short")
    if file_bytes is not None and 8 + n > file_bytes:
        raise ManifestInvalid(f"{where}: the safetensors header runs past the file")
    try:
        doc = json.loads(head[8 : 8 + n].decode("utf-8"))
    except (ValueError, RecursionError):
        raise ManifestInvalid(f"{where}: the safetensors header is not JSON") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid(f"{where}: the safetensors header is not an object")
    metadata = doc.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise ManifestInvalid(f"{where}: safetensors __metadata__ is not a map of strings")
    if len(doc) > MAX_TENSORS:
        raise ManifestInvalid(f"{where}: {len(doc)} tensors in one safetensors header")
    data_bytes = None if file_bytes is None else file_bytes - 8 - n
    tensors = []
    for name, info in doc.items():
        w = f"{where}: tensor {name[:80]!r}"
        if not isinstance(info, dict):
            raise ManifestInvalid(f"{w} is not an object")
        dtype = info.get("dtype")
        if dtype not in DTYPE_BITS:
            raise ManifestInvalid(f"{w} has unknown dtype {str(dtype)[:20]!r}")
        shape = _int_list(info.get("shape"), "its shape", w)
        offsets = _int_list(info.get("data_offsets"), "its data_offsets", w)
        if len(shape) > MAX_DIMS or len(offsets) != 2 or offsets[0] > offsets[1]:
            raise ManifestInvalid(f"{w} has a malformed shape or data_offsets")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise ManifestInvalid(
                f"{w}: {dtype}{list(shape)} is not {offsets[1] - offsets[0]} bytes"
            )
        if data_bytes is not None and offsets[1] > data_bytes:
            raise ManifestInvalid(f"{w} runs past the end of the file")
        tensors.append(TensorInfo(name, dtype, shape, offsets[0], offsets[1]))
    return SafetensorsHeader(n, tuple(tensors), metadata)


@dataclass(frozen=True)
class SourceTensor:
    """A tensor's bytes in a blob: ``[offset, offset + info.nbytes)`` of ``digest``."""

    info: TensorInfo
    digest: Digest
    offset: int


def tensors_of(header: SafetensorsHeader, digest: Digest) -> list[SourceTensor]:
    return [SourceTensor(t, digest, header.data_start + t.begin) for t in header.tensors]


@dataclass(frozen=True)
class Span:
    """``length`` bytes at ``offset`` of blob ``digest``."""

    digest: Digest
    offset: int
    length: int


@dataclass(frozen=True)
class CombinedFile:
    """One safetensors file laid out over blobs: ``prefix`` (u64 length + header), then spans."""

    filename: str
    prefix: bytes
    spans: tuple[Span, ...]
    tensor_names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.prefix) + sum(s.length for s in self.spans)


def _prefix(tensors: list[SourceTensor]) -> bytes:
    doc: dict[str, object] = {"__metadata__": {"format": "pt"}}
    pos = 0
    for t in tensors:
        doc[t.info.name] = {
            "dtype": t.info.dtype,
            "shape": list(t.info.shape),
            "data_offsets": [pos, pos + t.info.nbytes],
        }
        pos += t.info.nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % HEADER_ALIGN_BYTES)
    return struct.pack("<Q", len(text)) + text


def _spans(tensors: list[SourceTensor]) -> tuple[Span, ...]:
    out: list[Span] = []
    for t in tensors:
        if t.info.nbytes == 0:
            continue
        last = out[-1] if out else None
        if last and last.digest == t.digest and last.offset + last.length == t.offset:
            out[-1] = Span(last.digest, last.offset, last.length + t.info.nbytes)
        else:
            out.append(Span(t.digest, t.offset, t.info.nbytes))
    return tuple(out)


def combine(
    tensors: Iterable[SourceTensor], shard_bytes: int = SHARD_BYTES
) -> tuple[list[CombinedFile], bytes | None]:
    """The file(s) holding ``tensors`` and the index's bytes (None for a single file).

    Raises ``ManifestInvalid`` if two tensors share a name."""
    ordered = sorted(tensors, key=lambda t: t.info.name)
    for a, b in itertools.pairwise(ordered):
        if a.info.name == b.info.name:
            raise ManifestInvalid(f"invalid model: two tensors are named {a.info.name[:80]!r}")
    groups: list[list[SourceTensor]] = [[]]
    filled = 0
    for t in ordered:
        if groups[-1] and filled + t.info.nbytes > shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(t)
        filled += t.info.nbytes
    if len(groups) == 1:
        names = tuple(t.info.name for t in ordered)
        return [CombinedFile(SINGLE_FILENAME, _prefix(ordered), _spans(ordered), names)], None
    files = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        filename = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        names = tuple(t.info.name for t in group)
        files.append(CombinedFile(filename, _prefix(group), _spans(group), names))
        weight_map.update(dict.fromkeys(names, filename))
    index = {
        "metadata": {"total_size": sum(t.info.nbytes for t in ordered)},
        "weight_map": weight_map,
    }
    return files, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


# -- facts for show and xattrs ------------------------------------------------------------------

XATTR_PREFIX = "user.modelfs.safetensors."
# config.json keys that give the context length, in the order transformers' configs use them.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
# Ollama's and MLX's quantized tensors: ``W`` packed (MLX: in U32) with ``W.scale`` and
# ``W.bias`` (or ``.scales``/``.biases``) beside it. Hugging Face's own quantized
# checkpoints (GPTQ, AWQ, bitsandbytes, FP8) name theirs otherwise (``qweight``,
# ``weight_scale``, ...), and a layer's bias is ``L.bias`` beside ``L.weight``.
_QUANT_SUFFIXES = (".scale", ".bias", ".scales", ".biases")
_PACKED_DTYPES = frozenset({"U32"})
OLLAMA_QUANTIZED = "quantized by Ollama/MLX, not Hugging Face's format"


def ollama_quantized(tensors: Iterable[TensorInfo]) -> bool:
    """Whether tensors are quantized as Ollama and MLX do it: a ``.scale``/``.bias`` of
    another tensor, or weights packed in a dtype only they use (U32)."""
    tensors = list(tensors)
    names = {t.name for t in tensors}
    for t in tensors:
        if t.dtype in _PACKED_DTYPES:
            return True
        for suffix in _QUANT_SUFFIXES:
            if t.name.endswith(suffix) and t.name[: -len(suffix)] in names:
                return True
    return False


@dataclass(frozen=True)
class SafetensorsFacts:
    architecture: str | None  # config.json "architectures"[0], else "model_type"
    model_type: str | None
    parameter_count: int
    tensor_count: int
    dtypes: tuple[str, ...]  # by the number of parameters in them, most first
    context_length: int | None
    weights_bytes: int  # the tensors' data as stored: what loading them takes, no KV cache
    ollama_quantized: bool = False  # see ``ollama_quantized``

    @property
    def memory_bytes(self) -> int:
        """The estimate ``show`` and the xattr give: the weights as stored (their dtypes'
        bytes, from the headers); the KV cache and an engine's buffers are not counted."""
        return self.weights_bytes

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["dtypes"] = list(self.dtypes)
        out["memory_bytes"] = self.memory_bytes
        return out

    def xattrs(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key in (
            "architecture",
            "model_type",
            "parameter_count",
            "tensor_count",
            "context_length",
            "weights_bytes",
        ):
            value = getattr(self, key)
            if value is not None:
                out[XATTR_PREFIX + key] = str(value).encode()
        out[XATTR_PREFIX + "dtypes"] = ",".join(self.dtypes).encode()
        out[XATTR_PREFIX + "memory_bytes"] = str(self.memory_bytes).encode()
        if self.ollama_quantized:
            out[XATTR_PREFIX + "quantized"] = OLLAMA_QUANTIZED.encode()
        return out


def _config_doc(config_json: bytes | None) -> dict[str, object]:
    if not config_json:
        return {}
    try:
        doc = json.loads(config_json)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def safetensors_facts(
    headers: Iterable[SafetensorsHeader], config_json: bytes | None
) -> SafetensorsFacts:
    """What the weights' headers and the model's ``config.json`` (if any) say about it."""
    per_dtype: dict[str, int] = {}
    count = nbytes = 0
    every = [t for header in headers for t in header.tensors]
    for t in every:
        per_dtype[t.dtype] = per_dtype.get(t.dtype, 0) + t.numel
        count += 1
        nbytes += t.nbytes
    config = _config_doc(config_json)
    archs = config.get("architectures")
    model_type = config.get("model_type")
    model_type = model_type if isinstance(model_type, str) else None
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    context = None
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            context = value
            break
    return SafetensorsFacts(
        architecture=arch or model_type,
        model_type=model_type,
        parameter_count=sum(per_dtype.values()),
        tensor_count=count,
        dtypes=tuple(sorted(per_dtype, key=lambda d: (-per_dtype[d], d))),
        context_length=context,
        weights_bytes=nbytes,
        ollama_quantized=ollama_quantized(every),
    )
