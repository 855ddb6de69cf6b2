"""modelfs.blobs.partial: the persisted chunk bitmap is trusted only when it is intact and for these parameters."""

from __future__ import annotations

import json

import pytest

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.partial import PartialFile, decode_state, encode_state, present_bytes_in_state
from modelfs.formats.chunks import ChunkLayout
from modelfs.formats.digest import Digest

D = Digest("ab" * 32)
SIZE = 10 * 1024 + 3
CB = 1024
L = ChunkLayout(SIZE, CB)
# The same blob cut at a registry's own ranges: three chunks of unequal sizes.
RANGES = ChunkLayout(SIZE, 0, (1000, 7000, SIZE))


def test_roundtrip():
    present = bytes([0b1010_0101, 0b0000_0100])
    raw = encode_state(D, L, True, present)
    assert decode_state(raw, D, L, True) == bytearray(present)


@pytest.mark.parametrize(
    "args",
    [
        (Digest("cd" * 32), L, True),
        (D, ChunkLayout(SIZE + 1, CB), True),
        (D, ChunkLayout(SIZE, CB * 2), True),
        (D, L, False),
        (D, RANGES, True),
    ],
)
def test_state_for_other_parameters_is_not_trusted(args):
    raw = encode_state(D, L, True, bytes(2))
    assert decode_state(raw, *args) is None


def test_corrupted_state_is_not_trusted():
    raw = encode_state(D, L, True, bytes([0xFF, 0x07]))
    doc = json.loads(raw)
    doc["present"] = "//8="  # claims more chunks, checksum no longer matches
    assert decode_state(json.dumps(doc).encode(), D, L, True) is None
    assert decode_state(raw[:-5], D, L, True) is None
    assert decode_state(b"\x00garbage", D, L, True) is None
    assert present_bytes_in_state(b"\x00garbage", D, SIZE) == 0


def test_present_bytes_counts_the_short_last_chunk():
    # chunks 0 and 10 (the 3-byte tail)
    raw = encode_state(D, L, True, bytes([0b1, 0b100]))
    assert present_bytes_in_state(raw, D, SIZE) == CB + 3


def test_partial_file_persists_and_reloads(tmp_path):
    cache = BlobCache(tmp_path)
    cache.prepare()
    p = PartialFile(cache, D, L, True)
    p.open()
    p.reserve(0, CB)
    p.write(0, b"x" * CB)
    p.mark(0)
    p.save_state(bytes(p.present))
    p.close()

    again = PartialFile(cache, D, L, True)
    again.open()
    assert again.has(0) and not again.has(1)
    assert again.recheck_pending(0), "chunks from a previous run must be re-verified before use"
    assert again.read(0, 4) == b"xxxx"
    again.close()


def test_partial_file_of_wrong_size_starts_over(tmp_path):
    cache = BlobCache(tmp_path)
    cache.prepare()
    p = PartialFile(cache, D, L, True)
    p.open()
    p.mark(0)
    p.save_state(bytes(p.present))
    p.close()
    with open(cache.partial_path(D), "r+b") as f:
        f.truncate(5)  # the data file no longer matches what the state claims
    again = PartialFile(cache, D, L, True)
    again.open()
    assert again.present_count == 0
    again.close()


def test_state_of_a_registrys_ranges_is_trusted_only_for_those_ranges():
    raw = encode_state(D, RANGES, True, bytes([0b101]))
    assert decode_state(raw, D, RANGES, True) == bytearray([0b101])
    other = ChunkLayout(SIZE, 0, (1000, 7001, SIZE))
    assert decode_state(raw, D, other, True) is None
    assert decode_state(raw, D, L, True) is None
    # chunks 0 (1000 bytes) and 2 (SIZE - 7000), counted without knowing the ranges
    assert present_bytes_in_state(raw, D, SIZE) == 1000 + SIZE - 7000
    doc = json.loads(raw)
    doc["presentBytes"] = SIZE  # claims more than the checksum vouches for
    assert present_bytes_in_state(json.dumps(doc).encode(), D, SIZE) == 0


def test_partial_file_with_ranges_verifies_a_chunk_read_back_in_pieces(tmp_path):
    from modelfs.formats.chunks import BlobChunks, chunk_hash

    cache = BlobCache(tmp_path)
    cache.prepare()
    data = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)
    hashes = tuple(
        chunk_hash("sha256", data[s:e]) for s, e in [(0, 1000), (1000, 7000), (7000, SIZE)]
    )
    chunks = BlobChunks(D, SIZE, 0, hashes, "sha256", RANGES.ends)
    p = PartialFile(cache, D, RANGES, True)
    p.open()
    p.write(0, data)
    assert all(p.verify_chunk(i, chunks) for i in range(3))
    p.write(1500, b"X")
    assert not p.verify_chunk(1, chunks)
    p.close()
