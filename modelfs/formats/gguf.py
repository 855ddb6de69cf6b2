"""GGUF headers: the little that ``modelfs create`` needs to know about a weights file.

This module owns reading a GGUF header (magic, version, metadata key/values,
tensor infos) and deriving from it what Ollama writes into a model's config
blob: architecture, parameter count, file type. It never reads tensor data.

It is a small pure-Python reader on purpose (no gguf-py, no numpy): a GGUF file
is usually untrusted input fetched from somewhere, so every count, length and
offset is bounded here, and so is what a parse holds in memory (MAX_KEPT_BYTES,
whatever the header's size), and every problem becomes ``GGUFInvalid`` with a
one-line message, never a crash, a hang or a giant allocation. Reads go through
a ``read(offset, size)`` callable so the same code serves a local file, a
pread on a cached blob, or bytes in memory.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

from modelfs.errors import GGUFInvalid

GGUF_MAGIC = b"GGUF"
# Version 1 used 32-bit counts and lengths; 2 and 3 share a layout (3 only added big-endian).
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT_BYTES = 32

# Bounds on hostile input. Real models stay far below every one of them: the
# largest metadata strings are chat templates (tens of KiB), the largest arrays
# are vocabularies and merges (a few hundred thousand entries), headers of the
# biggest-vocabulary models are tens of MiB.
MAX_STRING_BYTES = 16 << 20
MAX_NAME_BYTES = 64 << 10  # keys and tensor names (ggml itself caps tensor names at 64 bytes)
MAX_KV_COUNT = 1 << 20
MAX_TENSOR_COUNT = 1 << 20
MAX_DIMS = 8
MAX_ARRAY_DEPTH = 2  # an array of arrays is allowed, one more level is not
MAX_ARRAY_ITEMS = 1 << 24
MAX_HEADER_BYTES = 512 << 20
# Parsing costs Python time per entry, so every header pays its entries from one
# budget of work units, a unit being about the time to skip one vocabulary string
# (~0.3 µs). Fixed-size arrays are skipped whole, without paying per item. Real
# headers spend under a million units (Llama 3: 128k tokens + 280k merges); the
# budget caps a hostile header at a few seconds of parsing, whatever its mix.
MAX_HEADER_WORK_UNITS = 1 << 23
_UNITS_PER_KEY = 12
_UNITS_PER_TENSOR = 24
_UNITS_PER_ARRAY = 12  # on top of its items, for every array read (nested ones too)
_UNITS_PER_SKIPPED_STRING = 1
_UNITS_PER_SKIPPED_ARRAY = 6  # an array inside a skipped array
_UNITS_PER_KEPT_SCALAR = 1  # kept scalar arrays are unpacked in one call
_UNITS_PER_KEPT_ITEM = 5  # a string or an array inside a kept array
MAX_TENSOR_ELEMENTS = (1 << 63) - 1  # ggml counts elements in an int64
MAX_TENSOR_OFFSET_BYTES = (1 << 63) - 1

# Arrays longer than this (vocabularies, merges, scores) are skipped, not kept:
# nothing modelfs derives from a header needs their contents.
KEPT_ARRAY_ITEMS = 64
# Likewise a string value longer than this is skipped unread (``GGUFSkippedString``): the
# longest real ones, chat templates, are tens of KiB. Decoded, a kept string may take up to
# four times its bytes (one character outside the BMP makes every one four bytes wide).
KEPT_STRING_BYTES = 1 << 20
# What a parsed header may hold in memory (keys, values, tensor infos, as Python sizes them),
# whatever the header's size: so a parse costs at most this plus a read block or two. Real
# headers are charged well under a MiB (SmolLM2: 0.14 MB for 33 keys and 272 tensors; a
# thousand-tensor model a few hundred KB); the charges below are what CPython takes, rounded up.
MAX_KEPT_BYTES = 32 << 20
_KEPT_BYTES_PER_KEY = 120  # its dict entry and value object, on top of the key itself
_KEPT_BYTES_PER_TENSOR = 400  # a TensorInfo, its shape and ints, list and set entries
_KEPT_BYTES_PER_ITEM = 40  # an item of a kept array
# Header reads are batched into blocks this big so a 50k-token vocabulary costs
# a handful of reads, not one per token.
READ_BLOCK_BYTES = 1 << 20

# GGUF metadata value types.
TYPE_UINT8 = 0
TYPE_INT8 = 1
TYPE_UINT16 = 2
TYPE_INT16 = 3
TYPE_UINT32 = 4
TYPE_INT32 = 5
TYPE_FLOAT32 = 6
TYPE_BOOL = 7
TYPE_STRING = 8
TYPE_ARRAY = 9
TYPE_UINT64 = 10
TYPE_INT64 = 11
TYPE_FLOAT64 = 12

_SCALAR_STRUCTS: dict[int, struct.Struct] = {
    TYPE_UINT8: struct.Struct("<B"),
    TYPE_INT8: struct.Struct("<b"),
    TYPE_UINT16: struct.Struct("<H"),
    TYPE_INT16: struct.Struct("<h"),
    TYPE_UINT32: struct.Struct("<I"),
    TYPE_INT32: struct.Struct("<i"),
    TYPE_FLOAT32: struct.Struct("<f"),
    TYPE_BOOL: struct.Struct("<B"),
    TYPE_UINT64: struct.Struct("<Q"),
    TYPE_INT64: struct.Struct("<q"),
    TYPE_FLOAT64: struct.Struct("<d"),
}
_KNOWN_TYPES = frozenset(_SCALAR_STRUCTS) | {TYPE_STRING, TYPE_ARRAY}
_U32 = _SCALAR_STRUCTS[TYPE_UINT32]
_U64 = _SCALAR_STRUCTS[TYPE_UINT64]
_DIMS_STRUCTS = [struct.Struct(f"<{n}Q") for n in range(MAX_DIMS + 1)]

# llama.cpp's LLAMA_FTYPE (general.file_type) -> the name Ollama shows as "quantization".
# Checked against gguf-py's LlamaFileType; 4-6 and 33-35 are retired numbers.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its item type and length, and its items when there are few."""

    item_type: int
    count: int
    values: list | None  # None when count > KEPT_ARRAY_ITEMS


@dataclass(frozen=True)
class GGUFSkippedString:
    """A metadata string longer than KEPT_STRING_BYTES: its length, not its text."""

    nbytes: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header; ``offset`` is relative to the start of tensor data."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (the fastest-varying dimension) first
    ggml_type: int
    offset: int


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about its file."""

    version: int
    metadata: dict[str, object]
    tensors: tuple[TensorInfo, ...]
    header_bytes: int  # offset where tensor data starts, after alignment padding

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template (``tokenizer.chat_template``), as Ollama's KV reads it."""
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) and template else None

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def file_type(self) -> str | None:
        ftype = self.metadata.get("general.file_type")
        if not isinstance(ftype, int) or isinstance(ftype, bool):
            return None
        return FILE_TYPE_NAMES.get(ftype, f"unknown({ftype})")


class _Cursor:
    """Sequential little-endian reads over ``read(offset, size)``, buffered in big blocks."""

    __slots__ = ("_base", "_buf", "_i", "_read", "kept_left", "units_left")

    def __init__(self, read: Callable[[int, int], bytes]) -> None:
        self._read = read
        self._buf: bytes = b""
        self._base = 0  # file offset of _buf[0]
        self._i = 0  # read position inside _buf
        self.units_left = MAX_HEADER_WORK_UNITS
        self.kept_left = MAX_KEPT_BYTES

    def spend(self, units: int) -> None:
        """Pay for entries about to be parsed; see MAX_HEADER_WORK_UNITS."""
        self.units_left -= units
        if self.units_left < 0:
            raise GGUFInvalid("GGUF header has too many entries (keys, tensors, array items)")

    def keep(self, nbytes: int) -> None:
        """Pay for memory the parsed header will hold; see MAX_KEPT_BYTES."""
        self.kept_left -= nbytes
        if self.kept_left < 0:
            raise GGUFInvalid(
                f"GGUF header holds more than {MAX_KEPT_BYTES >> 20} MiB of metadata "
                "(keys, strings, tensor infos)"
            )

    @property
    def pos(self) -> int:
        return self._base + self._i

    def rest(self) -> bytes:
        """The bytes buffered past the read position (after a truncation: what there was)."""
        return self._buf[self._i :]

    def _fill(self, n: int) -> None:
        """Make at least ``n`` bytes available at the read position, or raise."""
        start = self._base + self._i
        if start + n > MAX_HEADER_BYTES:
            raise GGUFInvalid(f"GGUF header is larger than {MAX_HEADER_BYTES >> 20} MiB")
        parts = [self._buf[self._i :]]
        have = len(parts[0])
        # `read` may return short; only an empty answer means end of file.
        while have < n:
            want = max(READ_BLOCK_BYTES, n - have)
            chunk = self._read(start + have, want)
            if not chunk:
                self._buf, self._base, self._i = b"".join(parts), start, 0
                raise GGUFInvalid(f"GGUF header truncated at byte {start + have}")
            if len(chunk) > want:
                chunk = chunk[:want]
            parts.append(chunk)
            have += len(chunk)
        self._buf, self._base, self._i = b"".join(parts), start, 0

    def take(self, n: int) -> bytes:
        if self._i + n > len(self._buf):
            self._fill(n)
        i = self._i
        self._i = i + n
        return self._buf[i : i + n]

    def unpack(self, st: struct.Struct) -> tuple:
        if self._i + st.size > len(self._buf):
            self._fill(st.size)
        values = st.unpack_from(self._buf, self._i)
        self._i += st.size
        return values

    def u32(self) -> int:
        return self.unpack(_U32)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def skip(self, n: int) -> None:
        if self._i + n <= len(self._buf):
            self._i += n
            return
        end = self.pos + n
        if end > MAX_HEADER_BYTES:
            raise GGUFInvalid(f"GGUF header is larger than {MAX_HEADER_BYTES >> 20} MiB")
        if n <= READ_BLOCK_BYTES:
            self._fill(n)
            self._i += n
            return
        # A big fixed-size array: prove its last byte exists rather than read it all.
        if not self._read(end - 1, 1):
            raise GGUFInvalid(f"GGUF header truncated: an array runs to byte {end}, past the end")
        self._buf, self._base, self._i = b"", end, 0

    def string(self, limit: int, what: str) -> bytes:
        at = self.pos
        n = self.u64()
        if n > limit:
            raise GGUFInvalid(f"GGUF {what} at byte {at} is {n} bytes long (limit {limit})")
        return self.take(n)

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` GGUF strings; the hot loop of a header (vocabularies, merges)."""
        unpack_from = _U64.unpack_from
        buf, i = self._buf, self._i
        for _ in range(count):
            if i + 8 > len(buf):
                self._i = i
                self._fill(8)
                buf, i = self._buf, self._i
            n = unpack_from(buf, i)[0]
            if n > MAX_STRING_BYTES:
                at = self._base + i
                raise GGUFInvalid(
                    f"GGUF string at byte {at} is {n} bytes long (limit {MAX_STRING_BYTES})"
                )
            i += 8 + n
            if i > len(buf):
                self._i = i - n
                self.skip(n)
                buf, i = self._buf, self._i
        self._i = i


def _decode_name(raw: bytes, what: str, at: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GGUFInvalid(f"GGUF {what} at byte {at} is not valid UTF-8") from None


def _check_item_type(item_type: int, depth: int, key: str) -> None:
    if item_type not in _KNOWN_TYPES:
        raise GGUFInvalid(f"GGUF key {key!r} holds an array of unknown value type {item_type}")
    if item_type == TYPE_ARRAY and depth + 1 > MAX_ARRAY_DEPTH:
        raise GGUFInvalid(f"GGUF key {key!r} nests arrays deeper than {MAX_ARRAY_DEPTH}")


def _read_array_head(cur: _Cursor, depth: int, key: str) -> tuple[int, int]:
    item_type, count = cur.u32(), cur.u64()
    _check_item_type(item_type, depth, key)
    if count > MAX_ARRAY_ITEMS:
        raise GGUFInvalid(
            f"GGUF key {key!r} holds an array of {count} items (limit {MAX_ARRAY_ITEMS})"
        )
    return item_type, count


@functools.cache
def _kept_struct(item_format: str, count: int) -> struct.Struct:
    return struct.Struct(f"<{count}{item_format.lstrip('<')}")


def _read_value(cur: _Cursor, vtype: int, depth: int, key: str) -> object:
    st = _SCALAR_STRUCTS.get(vtype)
    if st is not None:
        value = cur.unpack(st)[0]
        return bool(value) if vtype == TYPE_BOOL else value
    if vtype == TYPE_STRING:
        return _read_string_value(cur)
    if vtype == TYPE_ARRAY:
        cur.spend(_UNITS_PER_ARRAY)
        item_type, count = _read_array_head(cur, depth + 1, key)
        if count > KEPT_ARRAY_ITEMS:
            _skip_items(cur, item_type, count, depth + 1, key)
            return GGUFArray(item_type, count, None)
        cur.keep(count * _KEPT_BYTES_PER_ITEM)
        st = _SCALAR_STRUCTS.get(item_type)
        if st is not None:
            cur.spend(count * _UNITS_PER_KEPT_SCALAR)
            values = list(cur.unpack(_kept_struct(st.format, count)))
            if item_type == TYPE_BOOL:
                values = [bool(v) for v in values]
        else:
            cur.spend(count * _UNITS_PER_KEPT_ITEM)
            values = [_read_value(cur, item_type, depth + 1, key) for _ in range(count)]
        return GGUFArray(item_type, count, values)
    raise GGUFInvalid(f"GGUF key {key!r} has unknown value type {vtype}")


def _read_string_value(cur: _Cursor) -> str | GGUFSkippedString:
    at = cur.pos
    n = cur.u64()
    if n > MAX_STRING_BYTES:
        raise GGUFInvalid(f"GGUF string at byte {at} is {n} bytes long (limit {MAX_STRING_BYTES})")
    if n > KEPT_STRING_BYTES:
        cur.skip(n)
        return GGUFSkippedString(n)
    # Lenient on values (a stray byte in a chat template must not make a model unusable).
    text = cur.take(n).decode("utf-8", "replace")
    cur.keep(sys.getsizeof(text))
    return text


def _skip_items(cur: _Cursor, item_type: int, count: int, depth: int, key: str) -> None:
    st = _SCALAR_STRUCTS.get(item_type)
    if st is not None:
        cur.skip(st.size * count)
    elif item_type == TYPE_STRING:
        cur.spend(count * _UNITS_PER_SKIPPED_STRING)
        cur.skip_strings(count)
    else:  # TYPE_ARRAY; _read_array_head already refused anything else
        cur.spend(count * _UNITS_PER_SKIPPED_ARRAY)
        for _ in range(count):
            inner_type, inner_count = _read_array_head(cur, depth + 1, key)
            _skip_items(cur, inner_type, inner_count, depth + 1, key)


def _bad_version(version: int) -> GGUFInvalid:
    if version == 1:
        return GGUFInvalid("GGUF version 1 is not supported (re-convert the model with llama.cpp)")
    if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
        return GGUFInvalid(f"GGUF version {version} is not supported (a big-endian GGUF file?)")
    return GGUFInvalid(f"GGUF version {version} is not supported")


def _not_gguf(magic: bytes) -> GGUFInvalid:
    """What a file starts with instead of GGUF's magic: text as text (a Modelfile, a README),
    anything else as hex bytes."""
    magic = bytes(magic)
    if all(0x20 <= b < 0x7F for b in magic):
        shown = '"' + magic.decode("ascii") + '"'
    else:
        shown = "bytes " + magic.hex(" ")
    return GGUFInvalid(f'not a GGUF file (it starts with {shown}, not "GGUF")')


def read_gguf_header(read: Callable[[int, int], bytes]) -> GGUFInfo:
    """Parse the header of a GGUF file; ``read(offset, size)`` returns up to size bytes there."""
    cur = _Cursor(read)
    try:
        magic = cur.take(4)
    except GGUFInvalid:
        magic = cur.rest()
        if not magic:
            raise GGUFInvalid("not a GGUF file (empty)") from None
        if not GGUF_MAGIC.startswith(magic):
            raise _not_gguf(magic) from None
        raise
    if magic != GGUF_MAGIC:
        raise _not_gguf(magic)
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        raise _bad_version(version)
    tensor_count, kv_count = cur.u64(), cur.u64()
    if tensor_count > MAX_TENSOR_COUNT:
        raise GGUFInvalid(f"GGUF tensor count {tensor_count} exceeds the limit {MAX_TENSOR_COUNT}")
    if kv_count > MAX_KV_COUNT:
        raise GGUFInvalid(f"GGUF key/value count {kv_count} exceeds the limit {MAX_KV_COUNT}")

    cur.spend(kv_count * _UNITS_PER_KEY + tensor_count * _UNITS_PER_TENSOR)
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        at = cur.pos
        key = _decode_name(cur.string(MAX_NAME_BYTES, "key"), "key", at)
        if key in metadata:
            raise GGUFInvalid(f"GGUF key {key!r} appears twice")
        cur.keep(sys.getsizeof(key) + _KEPT_BYTES_PER_KEY)
        metadata[key] = _read_value(cur, cur.u32(), 0, key)

    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for _ in range(tensor_count):
        at = cur.pos
        name = _decode_name(cur.string(MAX_NAME_BYTES, "tensor name"), "tensor name", at)
        if name in names:
            raise GGUFInvalid(f"GGUF tensor {name!r} appears twice")
        cur.keep(sys.getsizeof(name) + _KEPT_BYTES_PER_TENSOR)
        names.add(name)
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise GGUFInvalid(f"GGUF tensor {name!r} has {n_dims} dimensions (limit {MAX_DIMS})")
        shape = cur.unpack(_DIMS_STRUCTS[n_dims])
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise GGUFInvalid(f"GGUF tensor {name!r} has an impossible shape {shape}")
        ggml_type, offset = cur.u32(), cur.u64()
        if offset > MAX_TENSOR_OFFSET_BYTES:
            raise GGUFInvalid(f"GGUF tensor {name!r} has an impossible offset {offset}")
        tensors.append(TensorInfo(name, shape, ggml_type, offset))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT_BYTES)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise GGUFInvalid(f"GGUF general.alignment {alignment!r} is not a power of two")
    header_bytes = -(-cur.pos // alignment) * alignment
    if header_bytes > MAX_HEADER_BYTES:
        raise GGUFInvalid(f"GGUF header is larger than {MAX_HEADER_BYTES >> 20} MiB")
    return GGUFInfo(version, metadata, tuple(tensors), header_bytes)


def read_gguf_file(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse the header of the GGUF file at ``path``; unreadable files are ``GGUFInvalid`` too."""
    shown = os.fsdecode(path)
    try:
        # O_NONBLOCK so a FIFO given by mistake fails below instead of blocking in open().
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise GGUFInvalid(f"cannot open {shown}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise GGUFInvalid(f"{shown} is not a regular file")
        return read_gguf_header(lambda offset, size: os.pread(fd, size, offset))
    except OSError as e:
        raise GGUFInvalid(f"cannot read {shown}: {e.strerror}") from None
    finally:
        os.close(fd)


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 134515008 -> "134.52M", 7000000000 -> "7B"."""
    if n >= 1_000_000_000:
        x = n / 1_000_000_000
        return f"{x:.0f}B" if x == math.floor(x) else f"{x:.1f}B"
    if n >= 1_000_000:
        x = n / 1_000_000
        return f"{x:.0f}M" if x == math.floor(x) else f"{x:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def ollama_config(info: GGUFInfo) -> dict:
    """The model fields of the config blob Ollama writes for a GGUF model (None ones left out)."""
    arch = info.architecture
    config: dict[str, object] = {"model_format": "gguf"}
    if arch is not None:
        config["model_family"] = arch
        config["model_families"] = [arch]
    config["model_type"] = human_number(info.parameter_count)
    if (file_type := info.file_type) is not None:
        config["file_type"] = file_type
    return config
