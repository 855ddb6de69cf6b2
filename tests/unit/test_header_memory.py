"""A hostile GGUF header costs a bounded amount of memory (issue: security).

A registry can serve headers of hundreds of MiB whose strings are invalid UTF-8 (each bad byte
decodes to U+FFFD: two bytes of str per byte of header) or push a str to four bytes a
character. Parsing one must cost at most what a header may keep (MAX_KEPT_BYTES) plus read
buffers, whatever its size and shape; and only a few parses run at once in a process.
"""

from __future__ import annotations

import struct
import tracemalloc
from types import SimpleNamespace

import pytest
import trio

import modelfs.blobs.header as mh
import modelfs.formats.gguf as mg
from modelfs.blobs.reader import Blobs
from modelfs.errors import GGUFInvalid, Transient
from modelfs.formats.digest import Digest
from modelfs.formats.gguf import GGUFInfo, read_gguf_header
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer
from modelfs.formats.modelfacts import model_facts
from modelfs.formats.names import parse_name

HEADER_BYTES = 56 << 20  # the probe's size
# What a parse may allocate at its peak: the 32 MiB a header may keep, plus read buffers.
PARSE_PEAK_BOUND_BYTES = 40 << 20
WAIT_SECONDS = 10.0


def gguf_string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def string_kv(key: str, raw: bytes) -> bytes:
    return gguf_string(key.encode()) + struct.pack("<I", mg.TYPE_STRING) + gguf_string(raw)


def header_of(kvs: list[bytes]) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs) + bytes(64)


def hostile_header(string_bytes: int, fill: bytes) -> bytes:
    """About HEADER_BYTES of string values of ``string_bytes`` each, made of ``fill``."""
    count = HEADER_BYTES // string_bytes
    value = (fill * (string_bytes // len(fill) + 1))[:string_bytes]
    return header_of([string_kv(f"general.k{i}", value) for i in range(count)])


def peak_of_parse(data: bytes) -> tuple[int, GGUFInfo | GGUFInvalid]:
    """The parser's peak allocation over ``data`` (the reads' copies included), and its answer."""
    tracemalloc.start()
    try:
        try:
            answer: GGUFInfo | GGUFInvalid = read_gguf_header(
                lambda offset, size: data[offset : offset + size]
            )
        except GGUFInvalid as e:
            answer = e
        return tracemalloc.get_traced_memory()[1], answer
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("string_bytes", "fill"),
    [
        (14 << 20, b"\xff"),  # a few huge strings of bad bytes (the probe)
        (1 << 20, b"\xff"),  # many of a MiB, each kept unless bounded
        (256 << 10, b"\xc3"),  # a truncated two-byte sequence, over and over
        (16 << 10, b"\xff"),  # thousands of small ones
        (512 << 10, "a🙂".encode()),  # valid, but four bytes of str a character
    ],
    ids=["4x14MiB", "56x1MiB", "224x256KiB", "3584x16KiB", "wide-chars"],
)
def test_a_header_of_hostile_strings_costs_a_bounded_amount_of_memory(
    string_bytes: int, fill: bytes
) -> None:
    data = hostile_header(string_bytes, fill)
    assert len(data) >= HEADER_BYTES - string_bytes
    peak, answer = peak_of_parse(data)
    assert peak <= PARSE_PEAK_BOUND_BYTES, (
        f"parsing a {len(data) >> 20} MiB header of {string_bytes >> 10} KiB strings allocated "
        f"{peak / (1 << 20):.0f} MiB at its peak (bound {PARSE_PEAK_BOUND_BYTES >> 20} MiB)"
    )
    if isinstance(answer, GGUFInvalid):
        assert "holds more than 32 MiB of metadata" in str(answer)
    else:
        assert len(answer.metadata) == HEADER_BYTES // string_bytes


def test_strings_over_a_mib_are_skipped_unread_and_still_count() -> None:
    template = b"\xff" * (8 << 20)
    data = header_of(
        [
            string_kv("general.architecture", b"llama"),
            string_kv("tokenizer.chat_template", template),
            string_kv("general.name", "caf\xe9 \xff".encode("latin-1")),
        ]
    )
    reads: list[tuple[int, int]] = []

    def read(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return data[offset : offset + size]

    info = read_gguf_header(read)
    assert info.metadata["tokenizer.chat_template"] == mg.GGUFSkippedString(len(template))
    assert info.architecture == "llama"
    # Short values are still read leniently: a stray byte becomes U+FFFD.
    assert info.metadata["general.name"] == "caf\ufffd \ufffd"
    assert model_facts(info, len(data) + 100).chat_template is True
    # A read block before it and one after, not the string itself.
    assert sum(size for _o, size in reads) < 3 * mg.READ_BLOCK_BYTES, "the skipped string was read"


async def test_only_a_few_headers_are_parsed_at_once_and_a_waiter_gives_up_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = header_of([string_kv("general.architecture", b"llama")])
    release = trio.Event()
    inside = 0
    most = 0

    async def read(offset: int, size: int) -> bytes:
        nonlocal inside, most
        if offset == 0:
            inside += 1
            most = max(most, inside)
            with trio.fail_after(WAIT_SECONDS):
                await release.wait()
            inside -= 1
        return data[offset : offset + size]

    async def until(condition: object) -> None:
        with trio.fail_after(WAIT_SECONDS):
            while not condition():  # type: ignore[operator]
                await trio.sleep(0.01)

    parsed: list[str | None] = []

    async def parse() -> None:
        info, _touched = await mh._parse(read, 4 << 20)
        parsed.append(info.architecture)

    callers = mh.MAX_HEADER_PARSES + 4
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(parse)
        slots = mh.parse_slots()
        await until(lambda: inside == mh.MAX_HEADER_PARSES and slots.statistics().tasks_waiting)
        await until(lambda: slots.statistics().tasks_waiting == callers - mh.MAX_HEADER_PARSES)
        assert inside == mh.MAX_HEADER_PARSES, "more headers parsed at once than the cap"
        # A request that finds every slot taken for too long fails, it does not wait forever.
        monkeypatch.setattr(mh, "PARSE_SLOT_WAIT_SECONDS", 0.05)
        with pytest.raises(Transient, match="GGUF headers were being read"):
            await mh._parse(read, 4 << 20)
        release.set()
    assert most == mh.MAX_HEADER_PARSES
    assert parsed == ["llama"] * callers


async def test_a_header_read_unchecked_keeps_only_the_chunk_it_is_in() -> None:
    """A blob checked only whole has its header read from the registry into memory: a 40 MiB
    header (a vocabulary of 512 KiB strings, each walked) must not be held whole."""
    chunk_bytes = 4 << 20
    token = gguf_string(b"\xff" * (512 << 10))
    array = struct.pack("<IIQ", mg.TYPE_ARRAY, mg.TYPE_STRING, 80) + token * 80
    data = header_of([gguf_string(b"tokenizer.ggml.tokens") + array])
    data += bytes(-len(data) % chunk_bytes + chunk_bytes)
    fetched: list[int] = []

    async def request(_registry, req) -> None:
        fetched.append(req.start // chunk_bytes)
        req.on_piece(req.start, memoryview(data)[req.start : req.end])

    fetcher = SimpleNamespace(
        registry_for=lambda anonymous: None,
        settings=SimpleNamespace(chunk_bytes=chunk_bytes, attempts=1),
        request=request,
        stats=SimpleNamespace(fetched=lambda host, n: None),
    )
    layer = Layer(Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))
    unchecked = mh._UncheckedChunks(
        Blobs(fetcher),  # type: ignore[arg-type]
        parse_name("127.0.0.1:5000/library/m:1"),
        layer,
        False,
    )
    tracemalloc.start()
    try:
        info, touched = await mh._parse(unchecked.read, chunk_bytes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.metadata["tokenizer.ggml.tokens"] == mg.GGUFArray(mg.TYPE_STRING, 80, None)
    assert len(touched) == 11 and sorted(fetched) == sorted(set(fetched)), "a chunk was refetched"
    assert peak < 6 * chunk_bytes, (
        f"reading a {len(data) >> 20} MiB header unchecked held {peak >> 20} MiB at its peak"
    )
