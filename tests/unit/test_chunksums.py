"""modelfs.formats.chunksums: Ollama's chunksums bodies, taken whole or refused with one reason."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.ollama_front import chunksums_body

from modelfs.errors import ManifestInvalid
from modelfs.formats.chunksums import MAX_CHUNKSUMS_BYTES, parse_chunksums
from modelfs.formats.digest import Digest

BLOB = Digest("ab" * 32)


def body_for(data: bytes, ends: list[int]) -> bytes:
    entries, start = [], 0
    for end in ends:
        entries.append((Digest(hashlib.sha256(data[start:end]).hexdigest()), start, end - 1))
        start = end
    return chunksums_body(entries)


def test_a_body_as_the_registry_sends_it():
    data = os.urandom(10_000)
    chunks = parse_chunksums(body_for(data, [1000, 1001, 7000, 10_000]), BLOB, 10_000)
    layout = chunks.layout
    assert layout.count == 4
    assert [layout.span(i) for i in range(4)] == [
        (0, 1000),
        (1000, 1001),
        (1001, 7000),
        (7000, 10_000),
    ]
    assert all(chunks.verify(i, data[slice(*layout.span(i))]) for i in range(4))
    assert not chunks.verify(2, data[:5999])
    assert chunks.algorithm == "sha256" and chunks.source == "chunksums"


def test_any_whitespace_separates_the_words():
    data = b"x" * 100
    raw = body_for(data, [40, 100]).replace(b"\n", b" \r\n\t ")
    assert parse_chunksums(raw, BLOB, 100).layout.count == 2


def entry(d: str = "sha256:" + "0" * 64, r: str = "0-99") -> bytes:
    return f"{d} {r}\n".encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (entry()[: -len("0-99\n")], "cut short"),
        (entry(r="0-49"), "cut short"),
        (entry(r="0-49") + entry(r="60-99"), "gap"),
        (entry(r="0-49") + entry(r="40-99"), "overlaps"),
        (entry(r="50-99") + entry(r="0-49"), "gap"),
        (entry(r="0-100"), "past the blob's end"),
        (entry(r="0-49") + entry(r="50-49"), "ends before"),
        (entry(r="0-49") + entry(r="50-99") + entry(r="100-109"), "past the blob"),
        (entry(d="sha256:" + "0" * 63), "malformed digest"),
        (entry(d="sha256:" + "G" * 64), "malformed digest"),
        (entry(d="sha512:" + "0" * 64), "malformed digest"),
        (entry(d="0" * 64), "malformed digest"),
        (entry(r="-1-99"), "malformed range"),
        (entry(r="00-99"), "malformed range"),
        (entry(r="0-+99"), "malformed range"),
        (entry(r="0..99"), "malformed range"),
        (entry(r="0-99999999999999999999"), "malformed range"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(raw, reason):
    with pytest.raises(ManifestInvalid, match=reason):
        parse_chunksums(raw, BLOB, 100)


def test_an_absurdly_long_body_is_refused_unparsed():
    raw = entry() * (MAX_CHUNKSUMS_BYTES // len(entry()) + 1)
    with pytest.raises(ManifestInvalid, match="more than"):
        parse_chunksums(raw, BLOB, 100)


def test_a_range_too_large_to_hold_is_refused():
    size = (256 << 20) + 1
    with pytest.raises(ManifestInvalid, match="too large"):
        parse_chunksums(entry(r=f"0-{size - 1}"), BLOB, size)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 1 << 40),
    cuts=st.lists(st.integers(1, (1 << 40) - 1), max_size=30),
)
def test_every_contiguous_cover_is_taken_and_spans_every_byte(size, cuts):
    ends = sorted({c for c in cuts if c < size} | {size})
    if any(e - s > 256 << 20 for s, e in zip([0, *ends], ends, strict=False)):
        return  # too large a range: refused, tested above
    raw = chunksums_body([(BLOB, s, e - 1) for s, e in zip([0, *ends], ends, strict=False)])
    layout = parse_chunksums(raw, BLOB, size).layout
    assert layout.count == len(ends)
    assert layout.span(0)[0] == 0 and layout.span(layout.count - 1)[1] == size
    for i in range(1, layout.count):
        assert layout.span(i)[0] == layout.span(i - 1)[1]
    probe = min(size - 1, cuts[0] if cuts else 0)
    i = layout.index_at(probe)
    assert layout.span(i)[0] <= probe < layout.span(i)[1]


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400), size=st.integers(1, 1 << 20))
def test_arbitrary_bytes_are_taken_or_refused_never_anything_else(raw, size):
    try:
        chunks = parse_chunksums(raw, BLOB, size)
    except ManifestInvalid:
        return
    assert chunks.layout.span(chunks.layout.count - 1)[1] == size


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(2, 10_000),
    cut=st.integers(1, 9_999),
    damage=st.sampled_from(["drop_last", "swap", "shift", "extend", "truncate_text"]),
)
def test_a_damaged_cover_is_refused(size, cut, damage):
    cut = min(cut, size - 1)
    entries = [(BLOB, 0, cut - 1), (BLOB, cut, size - 1)]
    if damage == "drop_last":
        entries = entries[:1]
    elif damage == "swap":
        entries = entries[::-1]
    elif damage == "shift":
        entries[1] = (BLOB, cut + 1, size - 1) if cut + 1 <= size - 1 else (BLOB, cut - 1, size - 1)
    elif damage == "extend":
        entries[1] = (BLOB, cut, size)
    raw = chunksums_body(entries)
    if damage == "truncate_text":
        raw = raw[: len(raw) - len(f"{size - 1}\n") - 1]
    with pytest.raises(ManifestInvalid):
        parse_chunksums(raw, BLOB, size)
