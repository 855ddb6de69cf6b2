"""Ollama's chunksums: a registry's own cut of a large blob into separately verifiable ranges.

``GET /v2/<namespace>/<model>/chunksums/<digest>`` (registry.ollama.ai) answers with
``Content-Location: <where the blob's bytes are>`` and a body of whitespace-separated
pairs ``<digest> <start>-<end>``: the sha256 of bytes ``start`` to ``end`` (inclusive)
of the blob. The ranges are contiguous, in order, and cover the whole blob. This
module turns such a body into ``BlobChunks`` with a ``ChunkLayout`` of those ranges,
or refuses it whole (``ManifestInvalid``, one reason): a body cut short, unsorted,
overlapping, with gaps, past the blob's end, with malformed digests, ranges too
large to hold, or too long a body. Parsing is bounded by ``MAX_CHUNKSUMS_BYTES``,
which the caller enforces while reading.
"""

from __future__ import annotations

import re

from modelfs.errors import ManifestInvalid
from modelfs.formats.chunks import BlobChunks
from modelfs.formats.digest import Digest

# A body longer than this is refused unread: ~80 bytes a range, so ~100k ranges.
MAX_CHUNKSUMS_BYTES = 8 << 20
# A range this large cannot usefully be fetched and checked as one piece (and might have
# to be held in memory when the cache is full): such chunksums are not used.
MAX_RANGE_BYTES = 256 << 20
SOURCE = "chunksums"

_DIGEST = re.compile(rb"sha256:([0-9a-f]{64})")
_RANGE = re.compile(rb"(0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,18})")


def parse_chunksums(raw: bytes, digest: Digest, size: int) -> BlobChunks:
    """The chunks a chunksums body describes for blob ``digest`` of ``size`` bytes."""
    if len(raw) > MAX_CHUNKSUMS_BYTES:
        raise ManifestInvalid(f"invalid chunksums: more than {MAX_CHUNKSUMS_BYTES} bytes")
    if size <= 0:
        raise ManifestInvalid("invalid chunksums: the blob is empty")
    words = raw.split()
    if not words:
        raise ManifestInvalid("invalid chunksums: empty")
    if len(words) % 2:
        raise ManifestInvalid("invalid chunksums: cut short (a digest without its range)")
    hashes: list[bytes] = []
    ends: list[int] = []
    expected = 0
    for n in range(0, len(words), 2):
        d = _DIGEST.fullmatch(words[n])
        if d is None:
            raise ManifestInvalid(f"invalid chunksums: malformed digest in entry {n // 2}")
        r = _RANGE.fullmatch(words[n + 1])
        if r is None:
            raise ManifestInvalid(f"invalid chunksums: malformed range in entry {n // 2}")
        start, end = int(r.group(1)), int(r.group(2))
        if start != expected:
            what = "overlaps the one before" if start < expected else "leaves a gap"
            raise ManifestInvalid(f"invalid chunksums: range {start}-{end} {what}")
        if end < start:
            raise ManifestInvalid(f"invalid chunksums: range {start}-{end} ends before it starts")
        if end >= size:
            raise ManifestInvalid(f"invalid chunksums: range {start}-{end} is past the blob's end")
        if end - start + 1 > MAX_RANGE_BYTES:
            raise ManifestInvalid(f"invalid chunksums: range {start}-{end} is too large to use")
        hashes.append(bytes.fromhex(d.group(1).decode()))
        ends.append(end + 1)
        expected = end + 1
    if expected != size:
        raise ManifestInvalid(
            f"invalid chunksums: cut short (ranges end at byte {expected} of {size})"
        )
    return BlobChunks(digest, size, 0, tuple(hashes), "sha256", tuple(ends), SOURCE)
