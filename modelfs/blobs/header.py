"""A model's GGUF header, read through the blob layer without fetching its weights.

``modelfs show`` and the mount's ``user.modelfs.gguf.*`` xattrs need only the
front of the weights blob: the metadata and the tensor table (1.8 MB for
SmolLM2; about 8 MB with a 128k-token vocabulary). It is read chunk by chunk as
the parser reaches it, never ahead:

- a blob in ``blobs/`` is read from its file;
- a blob with chunk digests (its index, a published one, chunksums, a local
  index) is read through the blob layer: each chunk checked, and kept in the
  partial file for the readers that come next, as any read would be;
- a blob that can only be checked whole cannot have its first chunks checked
  before all of it is here, so they are read from the registry into memory and
  the answer says so (``checked`` is False). Nothing unchecked reaches the cache.

A parse holds at most ``MAX_KEPT_BYTES`` of what it parsed plus a read block or two
(``formats/gguf``) and, read unchecked, the last ``KEPT_UNCHECKED_CHUNKS`` chunks; at
most ``MAX_HEADER_PARSES`` run at once in a process. So a hostile registry's headers
cost the daemon a bounded amount of memory however many files are asked about at
once. A request waits for a parse slot at most ``PARSE_SLOT_WAIT_SECONDS``, then
fails as a transient error (EIO in the mount).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from trio.lowlevel import RunVar

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.fetchcontext import READ_WAIT_SECONDS
from modelfs.blobs.reader import Blobs
from modelfs.errors import GGUFInvalid, Transient
from modelfs.formats.gguf import GGUFInfo, read_gguf_file, read_gguf_header
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.modelfacts import XATTR_HEADER_CHECKED, ModelFacts, model_facts
from modelfs.formats.names import Name

log = logging.getLogger(__name__)

Read = Callable[[int, int], Awaitable[bytes | bytearray]]

MAX_HEADER_PARSES = 2
# Chunks of a blob checked only whole that a header read keeps in memory: the parser reads
# forward and buffers what it has read, so it never needs more than the one it is in (and
# the one before, at a chunk's edge).
KEPT_UNCHECKED_CHUNKS = 2
PARSE_SLOT_WAIT_SECONDS = READ_WAIT_SECONDS
# One limiter per trio run (per daemon or CLI process).
_parse_slots: RunVar[trio.CapacityLimiter] = RunVar("modelfs_header_parse_slots")


@dataclass(frozen=True)
class ModelHeader:
    info: GGUFInfo
    facts: ModelFacts
    verification: str  # as ``user.modelfs.verify`` says it: complete, index, ..., whole
    checked: bool  # the header's bytes were checked against the blob's digests
    chunks_read: int  # chunks of the blob the header took (fetched, or read from the cache)

    def xattrs(self) -> dict[str, bytes]:
        """The mount's ``user.modelfs.gguf.*`` attributes of the file."""
        return {**self.facts.xattrs(), XATTR_HEADER_CHECKED: b"yes" if self.checked else b"no"}


async def read_model_header(
    blobs: Blobs, name: Name, manifest: Manifest, layer: Layer, *, anonymous: bool = False
) -> ModelHeader:
    """The GGUF header of ``layer`` (a weights blob of ``manifest``, fetched for ``name``)."""
    how = await blobs.verification(name, manifest, layer, anonymous=anonymous)
    chunk_bytes = blobs.chunk_bytes
    if how == "whole" and not blobs.is_small(layer):
        unchecked = _UncheckedChunks(blobs, name, layer, anonymous)
        info, touched = await _parse(unchecked.read, chunk_bytes)
        return ModelHeader(info, model_facts(info, layer.size), how, False, len(touched))
    handle = await blobs.open(name, manifest, layer, anonymous=anonymous, readahead=False)
    try:
        info, touched = await _parse(handle.read, chunk_bytes)
    finally:
        await handle.close()
    return ModelHeader(info, model_facts(info, layer.size), how, how != "deferred", len(touched))


def parse_slots() -> trio.CapacityLimiter:
    """This process's header parse slots (MAX_HEADER_PARSES)."""
    try:
        return _parse_slots.get()
    except LookupError:
        slots = trio.CapacityLimiter(MAX_HEADER_PARSES)
        _parse_slots.set(slots)
        return slots


async def _parse(read: Read, chunk_bytes: int) -> tuple[GGUFInfo, set[int]]:
    """Run the (synchronous, CPU-bound) header parser in a thread, its reads on trio,
    once one of the process's parse slots is free."""
    slots = parse_slots()
    acquired = False
    with trio.move_on_after(PARSE_SLOT_WAIT_SECONDS):
        await slots.acquire()
        acquired = True
    if not acquired:
        raise Transient(
            f"{MAX_HEADER_PARSES} GGUF headers were being read for "
            f"{PARSE_SLOT_WAIT_SECONDS:.0f} s; try again"
        )
    try:
        return await _parse_now(read, chunk_bytes)
    finally:
        slots.release()


async def _parse_now(read: Read, chunk_bytes: int) -> tuple[GGUFInfo, set[int]]:
    touched: set[int] = set()

    def read_sync(offset: int, size: int) -> bytes | bytearray:
        data = trio.from_thread.run(read, offset, size)
        if data:
            touched.update(
                range(offset // chunk_bytes, (offset + len(data) - 1) // chunk_bytes + 1)
            )
        return data

    info = await trio.to_thread.run_sync(read_gguf_header, read_sync)
    return info, touched


class _UncheckedChunks:
    """Chunks of a blob read from its registry into memory, unchecked, for its header only
    (``Blobs.read_unchecked``); the last KEPT_UNCHECKED_CHUNKS of them, so a huge header
    costs no more than a small one."""

    def __init__(self, blobs: Blobs, name: Name, layer: Layer, anonymous: bool) -> None:
        self.blobs = blobs
        self.name = name
        self.layer = layer
        self.anonymous = anonymous
        self.chunk_bytes = blobs.chunk_bytes
        self.chunks: dict[int, bytes] = {}

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.layer.size)
        if offset >= end:
            return b""
        i = offset // self.chunk_bytes
        data = await self._chunk(i)
        start = offset - i * self.chunk_bytes
        return data[start : start + (end - offset)]

    async def _chunk(self, i: int) -> bytes:
        if (data := self.chunks.get(i)) is not None:
            return data
        start = i * self.chunk_bytes
        stop = min(start + self.chunk_bytes, self.layer.size)
        data = self.chunks[i] = await self.blobs.read_unchecked(
            self.name, self.layer.digest, start, stop, anonymous=self.anonymous
        )
        while len(self.chunks) > KEPT_UNCHECKED_CHUNKS:
            del self.chunks[next(iter(self.chunks))]  # the oldest: dicts keep insertion order
        return data


def label_blob_file(cache: BlobCache, layer: Layer) -> None:
    """Best effort (a worker thread): put the ``user.modelfs.gguf.*`` xattrs on a complete
    GGUF blob in ``blobs/``, for readers that reach it through a link. Once per blob."""
    path = cache.blob_path(layer.digest)
    try:
        os.getxattr(path, XATTR_HEADER_CHECKED)
        return
    except OSError as e:
        if e.errno != errno.ENODATA:
            log.debug("cannot label blob %s: %s", layer.digest.short, e)
            return
    try:
        info = read_gguf_file(path)
    except GGUFInvalid as e:
        log.debug("blob %s has no GGUF facts: %s", layer.digest.short, e)
        return
    facts = model_facts(info, layer.size).xattrs()
    try:
        for key, value in facts.items():
            os.setxattr(path, key, value)
        os.setxattr(path, XATTR_HEADER_CHECKED, b"yes")  # last: marks the set complete
    except OSError as e:
        log.debug("cannot label blob %s: %s", layer.digest.short, e)
