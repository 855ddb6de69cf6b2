"""modelfs.formats.gguf: agreement with gguf-py on real and synthetic files, Ollama's figures, hostility."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from gguf_synth import SmolLM2Unavailable, smollm2_gguf_path, write_synthetic_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelfs.formats.gguf as mg
from modelfs.errors import GGUFInvalid
from modelfs.formats.gguf import (
    FILE_TYPE_NAMES,
    GGUFArray,
    GGUFInfo,
    TensorInfo,
    human_number,
    ollama_config,
    read_gguf_file,
    read_gguf_header,
)

# A hostile header must be refused in well under this (the bound is generous for slow CI).
HOSTILE_SECONDS = 2.0


def over_bytes(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, size: data[offset : offset + size]


def s(text: str | bytes) -> bytes:
    """A GGUF string."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def head(tensor_count: int = 0, kv_count: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensor_count, kv_count)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", mg.TYPE_UINT32, value)


def tensor(name: str, shape: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, ggml_type, offset)


def refused(data: bytes | Callable[[int, int], bytes], match: str) -> GGUFInvalid:
    read = over_bytes(data) if isinstance(data, bytes) else data
    start = time.perf_counter()
    with pytest.raises(GGUFInvalid, match=match) as info:
        read_gguf_header(read)
    assert time.perf_counter() - start < HOSTILE_SECONDS
    assert "\n" not in str(info.value)
    return info.value


# --- the real model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    try:
        return smollm2_gguf_path()
    except SmolLM2Unavailable as e:
        print(f"SmolLM2 unavailable: {e}")
        pytest.skip(f"SmolLM2 unavailable: {e}")


@pytest.fixture(scope="module")
def smollm2_reference(smollm2: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(smollm2)


def test_smollm2_matches_gguf_py(smollm2: Path, smollm2_reference: gguf.GGUFReader) -> None:
    ref = smollm2_reference
    info = read_gguf_file(smollm2)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.header_bytes == ref.data_offset
    assert [t.name for t in info.tensors] == [t.name for t in ref.tensors]
    assert [t.shape for t in info.tensors] == [tuple(int(d) for d in t.shape) for t in ref.tensors]
    assert [t.ggml_type for t in info.tensors] == [int(t.tensor_type) for t in ref.tensors]
    assert [t.offset for t in info.tensors] == [
        t.data_offset - ref.data_offset for t in ref.tensors
    ]
    expected_params = sum(int(t.n_elements) for t in ref.tensors)
    assert info.parameter_count == expected_params == 134_515_008
    assert human_number(info.parameter_count) == "134.52M"  # what `ollama show` prints
    assert ollama_config(info) == {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "134.52M",
        "file_type": "Q4_1",
    }


def test_smollm2_metadata_matches_gguf_py(
    smollm2: Path, smollm2_reference: gguf.GGUFReader
) -> None:
    info = read_gguf_file(smollm2)
    fields = {k: f for k, f in smollm2_reference.fields.items() if not k.startswith("GGUF.")}
    assert list(info.metadata) == list(fields)
    for key, field in fields.items():
        ours = info.metadata[key]
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert isinstance(ours, GGUFArray)
            assert ours.item_type == field.types[-1]
            assert ours.count == len(field.data)
            if ours.count <= mg.KEPT_ARRAY_ITEMS:
                assert ours.values == field.contents()
            else:
                assert ours.values is None
        else:
            assert ours == field.contents(), key
    assert info.metadata["tokenizer.ggml.tokens"] == GGUFArray(mg.TYPE_STRING, 49152, None)


def test_smollm2_header_over_a_read_callable_is_fast_and_batched(smollm2: Path) -> None:
    calls: list[tuple[int, int]] = []
    with open(smollm2, "rb") as f:

        def read(offset: int, size: int) -> bytes:
            calls.append((offset, size))
            return os.pread(f.fileno(), size, offset)

        start = time.perf_counter()
        info = read_gguf_header(read)
        elapsed = time.perf_counter() - start
    assert info == read_gguf_file(smollm2)
    # ~98k vocabulary and merge strings in a 1.7 MiB header: a few block reads, not one per token.
    assert len(calls) <= 2 + info.header_bytes // mg.READ_BLOCK_BYTES * 2
    assert elapsed < 1.0
    # The header alone (no tensor data) is enough.
    with open(smollm2, "rb") as f:
        prefix = f.read(info.header_bytes)
    assert read_gguf_header(over_bytes(prefix)) == info


# --- synthetic files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("total_bytes", "vocab_tokens"),
    [(1 << 20, 32000), ((10 << 20) + 12345, 3000), (20_001, 100), (5000, 0)],
)
def test_synthetic_files_read_back_by_both_readers(
    tmp_path: Path, total_bytes: int, vocab_tokens: int
) -> None:
    path = tmp_path / "synthetic.gguf"
    write_synthetic_gguf(path, total_bytes, seed=7, vocab_tokens=vocab_tokens)
    assert path.stat().st_size == total_bytes
    info = read_gguf_file(path)
    ref = gguf.GGUFReader(path)
    assert info.header_bytes == ref.data_offset
    assert [t.name for t in info.tensors] == [t.name for t in ref.tensors]
    assert info.parameter_count == sum(int(t.n_elements) for t in ref.tensors)
    assert info.architecture == "llama"
    assert info.file_type == "Q4_0"
    assert info.metadata["tokenizer.ggml.tokens"].count == vocab_tokens
    # The tensors fill the file exactly: the last one ends at the last byte.
    last = ref.tensors[-1]
    assert last.data_offset + last.n_bytes == total_bytes
    assert ollama_config(info)["model_family"] == "llama"


def test_synthetic_header_is_megabytes_like_a_real_model(tmp_path: Path) -> None:
    path = tmp_path / "big-vocab.gguf"
    write_synthetic_gguf(path, 4 << 20, vocab_tokens=100_000, arch="qwen2")
    info = read_gguf_file(path)
    assert info.header_bytes > 1 << 20
    assert info.architecture == "qwen2"
    assert info.metadata["qwen2.block_count"] == 2


def test_synthetic_alignment_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "aligned.gguf"
    write_synthetic_gguf(path, 300_000, vocab_tokens=10, alignment=4096)
    info = read_gguf_file(path)
    ref = gguf.GGUFReader(path)
    assert info.metadata["general.alignment"] == 4096
    assert info.header_bytes == ref.data_offset
    assert info.header_bytes % 4096 == 0
    assert all(t.offset % 4096 == 0 for t in info.tensors)


def test_synthetic_is_deterministic_by_seed(tmp_path: Path) -> None:
    def digest(name: str, seed: int) -> str:
        path = tmp_path / name
        write_synthetic_gguf(path, (3 << 20) + 1, seed=seed, vocab_tokens=1000)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest("a", 1) == digest("b", 1)
    assert digest("c", 2) != digest("a", 1)


def test_synthetic_refuses_a_size_smaller_than_its_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        write_synthetic_gguf(tmp_path / "tiny.gguf", 1000)


# --- figures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1K"),
        (1499, "1K"),
        (999_499, "999K"),
        (1_000_000, "1M"),
        (1_500_000, "1.50M"),
        (2_000_000, "2M"),
        (134_515_008, "134.52M"),
        (999_999_999, "1000.00M"),
        (1_000_000_000, "1B"),
        (7_000_000_000, "7B"),
        (7_241_732_096, "7.2B"),
        (70_553_706_496, "70.6B"),
    ],
)
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


def test_file_type_table_matches_llama_cpp() -> None:
    expected = {
        int(ft): ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
        for ft in gguf.LlamaFileType
        if ft.name != "GUESSED"
    }
    assert expected == FILE_TYPE_NAMES


def _info(metadata: dict[str, object], *shapes: tuple[int, ...]) -> GGUFInfo:
    tensors = tuple(TensorInfo(f"t{i}", shape, 0, 0) for i, shape in enumerate(shapes))
    return GGUFInfo(3, metadata, tensors, 32)


def test_derived_fields_and_config_leave_out_what_is_absent() -> None:
    bare = _info({}, (3, 4), (5,))
    assert bare.architecture is None
    assert bare.file_type is None
    assert bare.parameter_count == 17
    assert ollama_config(bare) == {"model_format": "gguf", "model_type": "17"}
    assert _info({"general.file_type": 15}).file_type == "Q4_K_M"
    assert _info({"general.file_type": 99}).file_type == "unknown(99)"
    assert _info({"general.file_type": "Q4_0", "general.architecture": 3}).file_type is None
    assert _info({"general.architecture": 3}).architecture is None


# --- hostile input ------------------------------------------------------------------


def test_empty_and_foreign_files() -> None:
    refused(b"", r"^not a GGUF file \(empty\)$")
    # What it starts with instead, said so a user can tell what the file is: no Python repr.
    refused(
        b"PK\x03\x04" + bytes(100),
        r'^not a GGUF file \(it starts with bytes 50 4b 03 04, not "GGUF"\)$',
    )
    refused(b"FROM ./x.gguf\n", r'^not a GGUF file \(it starts with "FROM", not "GGUF"\)$')
    refused(b"\x7fEL", "not a GGUF file")
    refused(b"GG", "^GGUF header truncated at byte 2$")
    refused(b"GGUF\x03\x00", "^GGUF header truncated at byte 6$")


@pytest.mark.parametrize("version", [0, 1, 4, 0x7FFFFFFF])
def test_unsupported_versions(version: int) -> None:
    refused(head(version=version), f"^GGUF version {version} is not supported")


def test_big_endian_file_is_named_as_such() -> None:
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    refused(data, "big-endian")


def test_minimal_headers_are_accepted() -> None:
    info = read_gguf_header(over_bytes(head(version=2)))
    assert info == GGUFInfo(2, {}, (), 32)
    assert info.parameter_count == 0
    # An array of arrays (depth 2) is fine; its items are kept when few.
    inner = struct.pack("<IQ", mg.TYPE_UINT8, 2) + b"\x01\x02"
    data = head(kv_count=1) + s("k") + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_ARRAY, 1) + inner
    info = read_gguf_header(over_bytes(data))
    assert info.metadata["k"] == GGUFArray(mg.TYPE_ARRAY, 1, [GGUFArray(mg.TYPE_UINT8, 2, [1, 2])])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (head(kv_count=1 << 63), "key/value count 9223372036854775808 exceeds"),
        (head(tensor_count=(1 << 64) - 1), "tensor count .* exceeds"),
        (head(kv_count=5), "truncated at byte 24"),
        (head(tensor_count=1000), "truncated at byte 24"),
        (head(kv_count=1) + struct.pack("<Q", 1 << 62), "key at byte 24 is 4611686018427387904"),
        (head(kv_count=1) + struct.pack("<Q", 10) + b"abc", "truncated at byte 35"),
        (head(kv_count=1) + s(b"\xff\xfe"), "key at byte 24 is not valid UTF-8"),
        (head(kv_count=1) + s("k") + struct.pack("<I", 13), "unknown value type 13"),
        (head(kv_count=1) + s("k") + struct.pack("<I", 1 << 31), "unknown value type"),
        (
            head(kv_count=1) + s("k") + struct.pack("<IQ", mg.TYPE_STRING, (1 << 64) - 1),
            "string at byte 37 is 18446744073709551615 bytes long",
        ),
        (
            head(kv_count=1) + s("k") + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_UINT8, 1 << 63),
            "array of 9223372036854775808 items",
        ),
        (
            head(kv_count=1) + s("k") + struct.pack("<IIQ", mg.TYPE_ARRAY, 99, 0),
            "array of unknown value type 99",
        ),
        (
            head(kv_count=1)
            + s("k")
            + struct.pack(
                "<IIQIIQ", mg.TYPE_ARRAY, mg.TYPE_ARRAY, 1, mg.TYPE_ARRAY, mg.TYPE_UINT8, 0
            ),
            "nests arrays deeper than 2",
        ),
        (
            # 2^24 uint64 items (128 MiB) claimed in a tiny file: refused without reading them.
            head(kv_count=1) + s("k") + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_UINT64, 1 << 24),
            "truncated",
        ),
        (
            # 100k strings claimed, each length a huge number.
            head(kv_count=1)
            + s("k")
            + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_STRING, 100_000)
            + b"\xff" * 64,
            "string at byte 49 is",
        ),
        (
            head(kv_count=1)
            + s("k")
            + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_STRING, 100_000)
            + s("a") * 10,
            "truncated at byte 139",
        ),
        (head(kv_count=2) + kv_u32("k", 1) + kv_u32("k", 2), "key 'k' appears twice"),
        (head(tensor_count=1) + s("t") + struct.pack("<I", 1000), "1000 dimensions"),
        (head(tensor_count=1) + s("t") + struct.pack("<I", 1 << 31), "2147483648 dimensions"),
        (head(tensor_count=1) + tensor("t", (1 << 62, 1 << 62)), "impossible shape"),
        (head(tensor_count=1) + tensor("t", (4,), offset=1 << 63), "impossible offset"),
        (head(tensor_count=2) + tensor("t", (4,)) + tensor("t", (4,)), "tensor 't' appears twice"),
        (head(tensor_count=1) + tensor("t", (4, 4))[:-3], "truncated at byte 62"),
        (head(kv_count=1) + kv_u32("general.alignment", 0), "alignment 0 is not a power of two"),
        (head(kv_count=1) + kv_u32("general.alignment", 48), "alignment 48 is not"),
        (
            head(kv_count=1) + s("general.alignment") + struct.pack("<If", mg.TYPE_FLOAT32, 32.0),
            "alignment 32.0 is not",
        ),
        (
            # A power of two, but it would put tensor data 2 GiB into the file.
            head(kv_count=1) + kv_u32("general.alignment", 1 << 31),
            "larger than 512 MiB",
        ),
    ],
)
def test_hostile_headers(data: bytes, match: str) -> None:
    refused(data, match)


def test_header_size_is_bounded_without_reading_it() -> None:
    """Four 128 MiB arrays in a (virtual) file: refused at the 512 MiB bound, after a few reads."""
    segments: dict[int, bytes] = {0: head(kv_count=5)}
    pos = 24
    for i in range(5):
        entry = s(f"k{i}") + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_UINT64, 1 << 24)
        segments[pos] = entry
        pos += len(entry) + (8 << 24)
    calls = 0

    def read(offset: int, size: int) -> bytes:
        nonlocal calls
        calls += 1
        out = bytearray(size)  # zeros everywhere else, and the file never ends
        for start, seg in segments.items():
            lo, hi = max(start, offset), min(start + len(seg), offset + size)
            if lo < hi:
                out[lo - offset : hi - offset] = seg[lo - start : hi - start]
        return bytes(out)

    refused(read, "larger than 512 MiB")
    assert calls < 20


def test_parsing_work_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 2^24 empty strings would be 128 MiB of header and seconds of parsing: refused up front.
    strings = (
        head(kv_count=1) + s("k") + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_STRING, 1 << 24)
    )
    refused(
        lambda offset, size: (strings + bytes(size))[offset : offset + size], "too many entries"
    )
    path = tmp_path / "synthetic.gguf"
    write_synthetic_gguf(path, 200_000, vocab_tokens=5000)
    monkeypatch.setattr(mg, "MAX_HEADER_WORK_UNITS", 4000)
    with pytest.raises(GGUFInvalid, match=r"^GGUF header has too many entries"):
        read_gguf_file(path)


def test_real_headers_are_far_below_the_work_bound(
    smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mg, "MAX_HEADER_WORK_UNITS", mg.MAX_HEADER_WORK_UNITS >> 5)
    assert read_gguf_file(smollm2).architecture == "llama"


def test_header_bound_applies_to_real_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "synthetic.gguf"
    write_synthetic_gguf(path, 100_000, vocab_tokens=1000)
    size = read_gguf_file(path).header_bytes
    monkeypatch.setattr(mg, "MAX_HEADER_BYTES", size - 1)
    with pytest.raises(GGUFInvalid, match="header is larger than"):
        read_gguf_file(path)


def test_truncation_anywhere_in_a_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.gguf"
    write_synthetic_gguf(path, 64 << 10, vocab_tokens=500)
    data = path.read_bytes()
    header_bytes = read_gguf_file(path).header_bytes
    assert 8 << 10 < header_bytes < 64 << 10
    # Everything before the alignment padding is header content.
    content_end = header_bytes - mg.DEFAULT_ALIGNMENT_BYTES + 1
    rng = random.Random(0)
    cuts = set(range(4, 300)) | {rng.randrange(4, content_end) for _ in range(200)}
    cuts |= set(range(content_end - 100, content_end))
    for cut in sorted(cuts):
        read = over_bytes(data[:cut])
        start = time.perf_counter()
        with pytest.raises(GGUFInvalid, match=f"^GGUF header truncated at byte {cut}$"):
            read_gguf_header(read)
        assert time.perf_counter() - start < HOSTILE_SECONDS


def test_short_reads_are_not_truncation(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.gguf"
    write_synthetic_gguf(path, 64 << 10, vocab_tokens=2000)
    data = path.read_bytes()
    # A reader that never returns more than 7 bytes at a time still gets the whole header.
    info = read_gguf_header(lambda offset, size: data[offset : offset + min(size, 7)])
    assert info == read_gguf_file(path)


def test_files_that_are_not_regular_files(tmp_path: Path) -> None:
    with pytest.raises(GGUFInvalid, match=r"^cannot open .*missing\.gguf: No such file"):
        read_gguf_file(tmp_path / "missing.gguf")
    with pytest.raises(GGUFInvalid, match="is not a regular file"):
        read_gguf_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(GGUFInvalid, match="is not a regular file"):
        read_gguf_file(fifo)
    (tmp_path / "zip.gguf").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(GGUFInvalid, match="not a GGUF file"):
        read_gguf_file(tmp_path / "zip.gguf")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([2, 3]),
    rest=st.binary(max_size=512),
)
def test_random_bytes_after_a_valid_prefix_only_raise_gguf_invalid(
    version: int, rest: bytes
) -> None:
    data = b"GGUF" + struct.pack("<I", version) + rest
    start = time.perf_counter()
    try:
        read_gguf_header(over_bytes(data))
    except GGUFInvalid as e:
        assert "\n" not in str(e)
    assert time.perf_counter() - start < HOSTILE_SECONDS


def _small_valid_header() -> bytes:
    kvs = [
        s("general.architecture") + struct.pack("<I", mg.TYPE_STRING) + s("llama"),
        kv_u32("general.file_type", 2),
        s("general.alignment") + struct.pack("<II", mg.TYPE_UINT32, 32),
        s("tok")
        + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_STRING, 70)
        + b"".join(s(f"t{i}") for i in range(70)),
        s("few")
        + struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_INT16, 3)
        + struct.pack("<3h", 1, 2, 3),
        s("f") + struct.pack("<Id", mg.TYPE_FLOAT64, 1.5),
        s("b") + struct.pack("<IB", mg.TYPE_BOOL, 1),
    ]
    tensors = [tensor("a", (4, 8)), tensor("b", (16,), 1, 128)]
    return head(len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)


def test_small_valid_header_reads() -> None:
    info = read_gguf_header(over_bytes(_small_valid_header()))
    assert info.architecture == "llama"
    assert info.file_type == "Q4_0"
    assert info.metadata["tok"] == GGUFArray(mg.TYPE_STRING, 70, None)
    assert info.metadata["few"] == GGUFArray(mg.TYPE_INT16, 3, [1, 2, 3])
    assert info.metadata["f"] == 1.5
    assert info.metadata["b"] is True
    assert info.tensors == (TensorInfo("a", (4, 8), 0, 0), TensorInfo("b", (16,), 1, 128))
    assert info.parameter_count == 48
    assert info.header_bytes % 32 == 0


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_valid_header_only_raises_gguf_invalid(data: st.DataObject) -> None:
    blob = bytearray(_small_valid_header())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    start = time.perf_counter()
    try:
        read_gguf_header(over_bytes(bytes(blob[:cut])))
    except GGUFInvalid as e:
        assert "\n" not in str(e)
    assert time.perf_counter() - start < HOSTILE_SECONDS
