"""Chunk math and the chunk index: how a blob is cut into fixed-size, separately verifiable pieces.

A large blob is read in chunks of ``chunk_bytes``. When the model carries a
chunk index (a layer of type ``application/vnd.modelfs.chunks.v1+json`` written
by ``modelfs create``), each chunk has its own sha256 and can be trusted as soon
as it arrives; the index itself is vouched for by the manifest's digest chain.
Chunk digests are BLAKE3 (what ``modelfs create`` writes: ~5x less CPU per byte
than sha256, and the whole-blob sha256 is computed anyway before a blob is
published) or sha256 (indexes written before, and by other tools). The format
is documented in docs/on-disk-format.md.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import blake3

from modelfs.errors import DigestInvalid, ManifestInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, Layer

CHUNK_BYTES = 4 << 20
MIN_CHUNK_BYTES = 64 << 10
MAX_CHUNK_BYTES = 64 << 20
MAX_INDEX_BYTES = 64 << 20
CHUNK_INDEX_VERSION = 1

Buffer = bytes | bytearray | memoryview


def _sha256(data: Buffer) -> bytes:
    return hashlib.sha256(data).digest()


def _blake3(data: Buffer) -> bytes:
    return blake3.blake3(data).digest()  # one thread: the cores are busy fetching and serving


# The chunk digest algorithms an index may name: each gives 32 bytes.
CHUNK_ALGORITHMS: dict[str, Callable[[Buffer], bytes]] = {"sha256": _sha256, "blake3": _blake3}


class ChunkHasher(Protocol):
    def update(self, data: Buffer, /) -> object: ...
    def digest(self) -> bytes: ...


CHUNK_HASHERS: dict[str, Callable[[], ChunkHasher]] = {
    "sha256": hashlib.sha256,
    "blake3": blake3.blake3,
}
# What ``modelfs create`` writes.
DEFAULT_CHUNK_ALGORITHM = "blake3"


def chunk_count(size: int, chunk_bytes: int) -> int:
    return (size + chunk_bytes - 1) // chunk_bytes


def chunk_span(index: int, size: int, chunk_bytes: int) -> tuple[int, int]:
    """Byte range ``[start, end)`` of chunk ``index`` in a blob of ``size`` bytes."""
    start = index * chunk_bytes
    return start, min(start + chunk_bytes, size)


def runs(indices: Iterable[int], max_run: int) -> Iterator[tuple[int, int]]:
    """Group ascending chunk indices into runs ``[lo, hi)`` of consecutive chunks, each ≤ max_run."""
    lo = hi = None
    for i in indices:
        if lo is not None and hi is not None and i == hi and hi - lo < max_run:
            hi += 1
            continue
        if lo is not None and hi is not None:
            yield lo, hi
        lo, hi = i, i + 1
    if lo is not None and hi is not None:
        yield lo, hi


@dataclass(frozen=True)
class ChunkLayout:
    """Where a blob's chunks start and end: the unit that is fetched, verified and tracked.

    Either fixed-size (``chunk_bytes``: every chunk that long but the last, as
    modelfs's own indexes and blobs without an index are cut) or the contiguous
    ranges a registry chose (``ends``: where each chunk ends, exclusive, ascending,
    the last at ``size``; Ollama's chunksums), of any sizes.
    """

    size: int
    chunk_bytes: int = 0
    ends: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 and not self.ends and self.size:
            raise ValueError("a chunk layout needs chunk_bytes or ends")

    @property
    def fixed(self) -> bool:
        return not self.ends

    @property
    def count(self) -> int:
        if self.ends:
            return len(self.ends)
        return chunk_count(self.size, self.chunk_bytes) if self.size else 0

    @property
    def typical_bytes(self) -> int:
        """The length of a chunk, or of an average one for registry-chosen ranges."""
        if self.ends:
            return max(1, self.size // len(self.ends))
        return self.chunk_bytes

    @property
    def largest_bytes(self) -> int:
        if self.ends:
            return max(e - s for s, e in zip((0, *self.ends), self.ends, strict=False))
        return min(self.chunk_bytes, self.size)

    def span(self, i: int) -> tuple[int, int]:
        """Byte range ``[start, end)`` of chunk ``i``."""
        if self.ends:
            return (self.ends[i - 1] if i else 0), self.ends[i]
        return chunk_span(i, self.size, self.chunk_bytes)

    def index_at(self, offset: int) -> int:
        """The chunk holding byte ``offset`` (``0 <= offset < size``)."""
        if self.ends:
            return bisect.bisect_right(self.ends, offset)
        return offset // self.chunk_bytes

    def covering(self, offset: int, length: int) -> range:
        """The chunks a read of ``length`` bytes at ``offset`` touches (empty past the end)."""
        end = min(offset + length, self.size)
        if length <= 0 or offset >= end:
            return range(0)
        return range(self.index_at(offset), self.index_at(end - 1) + 1)

    def bytes_of(self, lo: int, hi: int) -> int:
        """How many bytes chunks ``[lo, hi)`` hold."""
        if lo >= hi:
            return 0
        return self.span(hi - 1)[1] - self.span(lo)[0]

    def runs(
        self, indices: Iterable[int], max_chunks: int, max_bytes: int
    ) -> Iterator[tuple[int, int]]:
        """Ascending chunk indices grouped into runs ``[lo, hi)`` of consecutive chunks, each
        of at most ``max_chunks`` chunks and ``max_bytes`` bytes (but at least one chunk)."""
        lo = hi = -1
        for i in indices:
            if (
                lo >= 0
                and i == hi
                and hi - lo < max_chunks
                and self.bytes_of(lo, hi + 1) <= max_bytes
            ):
                hi += 1
                continue
            if lo >= 0:
                yield lo, hi
            lo, hi = i, i + 1
        if lo >= 0:
            yield lo, hi

    @property
    def key(self) -> str:
        """Names the layout in a partial blob's persisted state: a state is only trusted for
        the layout it was written with."""
        if not self.ends:
            return f"fixed-{self.chunk_bytes}"
        body = ",".join(map(str, self.ends)).encode()
        return "ranges-" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class BlobChunks:
    """The per-chunk digests (raw 32-byte values, of ``algorithm``) of one blob."""

    digest: Digest
    size: int
    chunk_bytes: int  # 0 when the chunks are a registry's own ranges (``ends``)
    hashes: tuple[bytes, ...]
    algorithm: str = "sha256"
    ends: tuple[int, ...] = ()
    # Where the digests come from (what ``user.modelfs.verify`` says): the manifest's own
    # index layer ("index"), an index published beside it ("published-index"), the
    # registry's chunksums ("chunksums"), or one kept from a whole check ("local-index").
    source: str = "index"

    @property
    def layout(self) -> ChunkLayout:
        return ChunkLayout(self.size, self.chunk_bytes, self.ends)

    def verify(self, index: int, data: Buffer) -> bool:
        return CHUNK_ALGORITHMS[self.algorithm](data) == self.hashes[index]

    def hasher(self) -> ChunkHasher:
        """A fresh incremental hash of this index's algorithm (for chunks that arrive in pieces)."""
        return CHUNK_HASHERS[self.algorithm]()


@dataclass(frozen=True)
class ChunkIndex:
    chunk_bytes: int
    blobs: dict[Digest, BlobChunks]


def chunk_hash(algorithm: str, data: Buffer) -> bytes:
    return CHUNK_ALGORITHMS[algorithm](data)


def serialize_chunk_index(chunk_bytes: int, blobs: Iterable[BlobChunks]) -> bytes:
    """The index of ``blobs``, which all use one algorithm."""
    blobs = list(blobs)
    algorithms = {b.algorithm for b in blobs} or {DEFAULT_CHUNK_ALGORITHM}
    if len(algorithms) != 1:
        raise ValueError(f"one chunk index, one algorithm: got {sorted(algorithms)}")
    doc = {
        "schemaVersion": CHUNK_INDEX_VERSION,
        "mediaType": MEDIA_TYPE_CHUNK_INDEX,
        "algorithm": algorithms.pop(),
        "chunkSize": chunk_bytes,
        "blobs": [
            {
                "digest": str(b.digest),
                "size": b.size,
                "chunks": [h.hex() for h in b.hashes],
            }
            for b in blobs
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_chunk_index(raw: bytes, layers: Iterable[Layer]) -> ChunkIndex:
    """Validate a chunk index against the manifest's layers; raise ManifestInvalid if it lies.

    Entries for blobs the manifest does not list are an error, as is an entry
    whose size or chunk count disagrees with the manifest.
    """
    if len(raw) > MAX_INDEX_BYTES:
        raise ManifestInvalid(f"invalid chunk index: {len(raw)} bytes is over the limit")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ManifestInvalid("invalid chunk index: not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != CHUNK_INDEX_VERSION:
        raise ManifestInvalid("invalid chunk index: unknown schemaVersion")
    algorithm = doc.get("algorithm", "sha256")
    if not isinstance(algorithm, str) or algorithm not in CHUNK_ALGORITHMS:
        raise ManifestInvalid(
            f"invalid chunk index: chunk digest algorithm {algorithm!r} is not one of "
            f"{', '.join(CHUNK_ALGORITHMS)}"
        )
    chunk_bytes = doc.get("chunkSize")
    if (
        not isinstance(chunk_bytes, int)
        or isinstance(chunk_bytes, bool)
        or not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES
        or chunk_bytes % 4096
    ):
        raise ManifestInvalid(f"invalid chunk index: chunkSize {chunk_bytes!r} is not usable")
    sizes = {layer.digest: layer.size for layer in layers}
    entries = doc.get("blobs")
    if not isinstance(entries, list):
        raise ManifestInvalid("invalid chunk index: blobs is not a list")
    blobs: dict[Digest, BlobChunks] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ManifestInvalid(f"invalid chunk index: entry {n} is not an object")
        try:
            digest = Digest.parse(entry.get("digest"))
        except DigestInvalid as e:
            raise ManifestInvalid(f"invalid chunk index: entry {n}: {e}") from None
        if digest not in sizes:
            raise ManifestInvalid(f"invalid chunk index: {digest} is not a layer of the manifest")
        size = entry.get("size")
        if size != sizes[digest] or isinstance(size, bool):
            raise ManifestInvalid(
                f"invalid chunk index: {digest} has size {size!r}, the manifest says {sizes[digest]}"
            )
        hexes = entry.get("chunks")
        if not isinstance(hexes, list) or len(hexes) != chunk_count(sizes[digest], chunk_bytes):
            raise ManifestInvalid(f"invalid chunk index: {digest} has the wrong number of chunks")
        hashes = []
        for h in hexes:
            if not isinstance(h, str) or len(h) != 64:
                raise ManifestInvalid(f"invalid chunk index: {digest} has a malformed chunk digest")
            try:
                hashes.append(bytes.fromhex(h))
            except ValueError:
                raise ManifestInvalid(
                    f"invalid chunk index: {digest} has a malformed chunk digest"
                ) from None
        blobs[digest] = BlobChunks(digest, sizes[digest], chunk_bytes, tuple(hashes), algorithm)
    return ChunkIndex(chunk_bytes=chunk_bytes, blobs=blobs)
