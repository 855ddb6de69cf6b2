"""modelfs.formats.chunks: chunk math and the chunk index format."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfs.errors import ManifestInvalid
from modelfs.formats.chunks import (
    BlobChunks,
    ChunkLayout,
    chunk_count,
    chunk_hash,
    chunk_span,
    parse_chunk_index,
    runs,
    serialize_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer

CB = 1 << 20


@pytest.mark.parametrize(
    ("size", "count"), [(0, 0), (1, 1), (CB - 1, 1), (CB, 1), (CB + 1, 2), (10 * CB, 10)]
)
def test_chunk_count(size, count):
    assert chunk_count(size, CB) == count


def test_last_chunk_is_short():
    assert chunk_span(2, 2 * CB + 5, CB) == (2 * CB, 2 * CB + 5)


@given(
    size=st.integers(0, 50 * CB),
    offset=st.integers(0, 60 * CB),
    length=st.integers(0, 20 * CB),
)
def test_covering_touches_exactly_the_chunks_of_the_bytes(size, offset, length):
    touched = ChunkLayout(size, CB).covering(offset, length)
    end = min(offset + length, size)
    if offset >= end:
        assert len(touched) == 0
        return
    first, last = chunk_span(touched.start, size, CB), chunk_span(touched.stop - 1, size, CB)
    assert first[0] <= offset < first[1]
    assert last[0] < end <= last[1]


def test_runs_split_gaps_and_cap_length():
    assert list(runs([0, 1, 2, 5, 6, 9], 8)) == [(0, 3), (5, 7), (9, 10)]
    assert list(runs(range(10), 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(runs([], 4)) == []


def make_index(size=3 * CB + 7):
    data = random.Random(size).randbytes(size)
    digest = Digest.of_bytes(data)
    hashes = tuple(hashlib.sha256(data[i : i + CB]).digest() for i in range(0, size, CB))
    layer = Layer(digest, MEDIA_TYPE_MODEL, size)
    return data, layer, serialize_chunk_index(CB, [BlobChunks(digest, size, CB, hashes)])


def test_index_roundtrip_and_verify():
    data, layer, raw = make_index()
    index = parse_chunk_index(raw, [layer])
    chunks = index.blobs[layer.digest]
    assert chunks.verify(0, data[:CB])
    assert chunks.verify(3, data[3 * CB :])
    assert not chunks.verify(1, data[:CB])


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(schemaVersion=2), "schemaVersion"),
        (lambda d: d.update(chunkSize=1000), "chunkSize"),
        (lambda d: d.update(chunkSize=True), "chunkSize"),
        (lambda d: d.update(algorithm="md5"), "sha256"),
        (lambda d: d["blobs"][0].update(size=5), "size"),
        (lambda d: d["blobs"][0].update(digest="sha256:" + "0" * 64), "not a layer"),
        (lambda d: d["blobs"][0]["chunks"].pop(), "number of chunks"),
        (lambda d: d["blobs"][0]["chunks"].__setitem__(0, "zz" * 32), "malformed"),
        (lambda d: d["blobs"][0]["chunks"].__setitem__(0, 7), "malformed"),
        (lambda d: d.update(blobs={}), "not a list"),
    ],
)
def test_lying_or_broken_index_is_refused(mutate, fragment):
    _data, layer, raw = make_index()
    d = json.loads(raw)
    mutate(d)
    with pytest.raises(ManifestInvalid) as info:
        parse_chunk_index(json.dumps(d).encode(), [layer])
    assert fragment in str(info.value)


def test_index_not_json():
    with pytest.raises(ManifestInvalid):
        parse_chunk_index(b"\x00\x01", [])


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_both_chunk_algorithms_roundtrip_and_verify(algorithm):
    size = 3 * CB + 7
    data = random.Random(5).randbytes(size)
    digest = Digest.of_bytes(data)
    hashes = tuple(chunk_hash(algorithm, data[i : i + CB]) for i in range(0, size, CB))
    layer = Layer(digest, MEDIA_TYPE_MODEL, size)
    raw = serialize_chunk_index(CB, [BlobChunks(digest, size, CB, hashes, algorithm)])
    assert json.loads(raw)["algorithm"] == algorithm
    chunks = parse_chunk_index(raw, [layer]).blobs[digest]
    assert chunks.algorithm == algorithm
    assert chunks.verify(1, data[CB : 2 * CB])
    assert not chunks.verify(1, data[:CB])


def test_blake3_and_sha256_digests_are_not_interchangeable():
    # An index that says blake3 but carries sha256 values verifies nothing.
    size = 2 * CB
    data = random.Random(6).randbytes(size)
    digest = Digest.of_bytes(data)
    hashes = tuple(chunk_hash("sha256", data[i : i + CB]) for i in range(0, size, CB))
    layer = Layer(digest, MEDIA_TYPE_MODEL, size)
    raw = serialize_chunk_index(CB, [BlobChunks(digest, size, CB, hashes, "sha256")])
    doc = json.loads(raw)
    doc["algorithm"] = "blake3"
    chunks = parse_chunk_index(json.dumps(doc).encode(), [layer]).blobs[digest]
    assert not chunks.verify(0, data[:CB])


def test_an_unknown_chunk_algorithm_is_refused():
    _data, layer, raw = make_index()
    doc = json.loads(raw)
    doc["algorithm"] = "md5"
    with pytest.raises(ManifestInvalid, match="'md5' is not one of sha256, blake3"):
        parse_chunk_index(json.dumps(doc).encode(), [layer])
