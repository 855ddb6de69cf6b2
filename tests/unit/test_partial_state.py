"""modelfs.blobs.partial: the persisted chunk bitmap is trusted only when it is intact and for these parameters."""

from __future__ import annotations

import json

import pytest

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.partial import PartialFile, decode_state, encode_state, present_bytes_in_state
from modelfs.formats.digest import Digest

D = Digest("ab" * 32)
SIZE = 10 * 1024 + 3
CB = 1024


def test_roundtrip():
    present = bytes([0b1010_0101, 0b0000_0100])
    raw = encode_state(D, SIZE, CB, True, present)
    assert decode_state(raw, D, SIZE, CB, True) == bytearray(present)


@pytest.mark.parametrize(
    "args",
    [
        (Digest("cd" * 32), SIZE, CB, True),
        (D, SIZE + 1, CB, True),
        (D, SIZE, CB * 2, True),
        (D, SIZE, CB, False),
    ],
)
def test_state_for_other_parameters_is_not_trusted(args):
    raw = encode_state(D, SIZE, CB, True, bytes(2))
    assert decode_state(raw, *args) is None


def test_corrupted_state_is_not_trusted():
    raw = encode_state(D, SIZE, CB, True, bytes([0xFF, 0x07]))
    doc = json.loads(raw)
    doc["present"] = "//8="  # claims more chunks, checksum no longer matches
    assert decode_state(json.dumps(doc).encode(), D, SIZE, CB, True) is None
    assert decode_state(raw[:-5], D, SIZE, CB, True) is None
    assert decode_state(b"\x00garbage", D, SIZE, CB, True) is None
    assert present_bytes_in_state(b"\x00garbage", D, SIZE) == 0


def test_present_bytes_counts_the_short_last_chunk():
    # chunks 0 and 10 (the 3-byte tail)
    raw = encode_state(D, SIZE, CB, True, bytes([0b1, 0b100]))
    assert present_bytes_in_state(raw, D, SIZE) == CB + 3


def test_partial_file_persists_and_reloads(tmp_path):
    cache = BlobCache(tmp_path)
    cache.prepare()
    p = PartialFile(cache, D, SIZE, CB, True)
    p.open()
    p.reserve(0, CB)
    p.write(0, b"x" * CB)
    p.mark(0)
    p.save_state(bytes(p.present))
    p.close()

    again = PartialFile(cache, D, SIZE, CB, True)
    again.open()
    assert again.has(0) and not again.has(1)
    assert again.recheck_pending(0), "chunks from a previous run must be re-verified before use"
    assert again.read(0, 4) == b"xxxx"
    again.close()


def test_partial_file_of_wrong_size_starts_over(tmp_path):
    cache = BlobCache(tmp_path)
    cache.prepare()
    p = PartialFile(cache, D, SIZE, CB, True)
    p.open()
    p.mark(0)
    p.save_state(bytes(p.present))
    p.close()
    with open(cache.partial_path(D), "r+b") as f:
        f.truncate(5)  # the data file no longer matches what the state claims
    again = PartialFile(cache, D, SIZE, CB, True)
    again.open()
    assert again.present_count == 0
    again.close()
