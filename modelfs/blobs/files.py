"""Laying a model out as files made of extents over blobs.

``lay_out`` answers ``formats.files.files_of``'s byte requests (tar headers, the heads of
Ollama's tensor blobs) with range reads: through the blob door (``Blobs.open``), checked
as any read is, when the blob can be checked by range (a chunk index, a small blob, one
in the cache); else unchecked (``Blobs.read_unchecked``), so that a listing never fetches
a blob whole, and each file then carries the unchecked ranges it rests on: its first read
compares them with the checked blob before serving any byte (``FileHandle``). Each
round's requests are read in parallel; the rounds are bounded. The files are then read
through the same door (``Blobs.open(name, manifest, file)``, handles.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from modelfs.blobs.handles import layers_by_digest, read_exact
from modelfs.blobs.reader import Blobs
from modelfs.errors import ManifestInvalid, first_modelfs_error
from modelfs.formats.files import (
    BlobBytes,
    ByteRequest,
    ModelTree,
    Needs,
    files_of,
    resting_on,
    with_config_read,
)
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.names import Name

T = TypeVar("T")

log = logging.getLogger(__name__)

# A tar layer of many members takes a round per 256 KiB of headers: this bounds a hostile
# layout's requests, not an honest model's (ten thousand small members fit).
MAX_LAYOUT_ROUNDS = 64
LAYOUT_READS_IN_FLIGHT = 8


async def lay_out(
    blobs: Blobs, name: Name, manifest: Manifest, *, anonymous: bool = False
) -> ModelTree:
    """The model's files, reading the blob ranges their layout needs: checked where the
    blob can be checked by range (a chunk index, a small blob, one in the cache), else
    **unchecked** (a blob checked only whole would be fetched whole for a listing), each
    file then carrying the unchecked ranges it rests on (``ModelFile.unchecked``), which
    its first read compares with the checked blob (``FileHandle``)."""
    checked = checked_reads(blobs, name, manifest, anonymous=anonymous)
    layers = layers_by_digest(manifest)
    unchecked = BlobBytes()

    async def read(request: ByteRequest) -> bytes:
        layer = layers.get(request.digest)
        if (
            layer is None
            or request.digest == manifest.config.digest  # small: checked whole, at once
            or not await _checked_only_whole(blobs, name, manifest, layer, anonymous)
        ):
            return await checked(request)
        data = await blobs.read_unchecked(
            name,
            request.digest,
            request.offset,
            request.offset + request.length,
            anonymous=anonymous,
        )
        unchecked.add(request.digest, request.offset, data)
        return data

    def ask(known: BlobBytes) -> ModelTree | Needs:
        try:
            return with_config_read(files_of(manifest, known), manifest, known)
        except ManifestInvalid as e:  # the one line the mount logs says which model
            raise ManifestInvalid(f"{name}: {e}") from None

    tree = resting_on(await answer(name, BlobBytes(), ask, read), unchecked)
    for layer, why in tree.skipped:
        log.info("%s: layer %s not shown: %s", name, layer.digest.short, why)
    return tree


ReadRange = Callable[[ByteRequest], Awaitable[bytes]]


async def _checked_only_whole(
    blobs: Blobs, name: Name, manifest: Manifest, layer: Layer, anonymous: bool
) -> bool:
    return await blobs.verification(name, manifest, layer, anonymous=anonymous) == "whole"


def checked_reads(
    blobs: Blobs, name: Name, manifest: Manifest, *, anonymous: bool = False
) -> ReadRange:
    """Range reads through the blob door: each checked as any read of the blob is."""
    layers = layers_by_digest(manifest)

    async def read(request: ByteRequest) -> bytes:
        layer = layers.get(request.digest)
        if layer is None:
            raise ManifestInvalid(f"{name}: a layout read of a blob not in the manifest")
        handle = await blobs.open(name, manifest, layer, anonymous=anonymous, readahead=False)
        try:
            return await read_exact(handle, request.offset, request.length)
        finally:
            await handle.close()

    return read


async def answer(
    name: Name, known: BlobBytes, ask: Callable[[BlobBytes], T | Needs], read: ReadRange
) -> T:
    """``ask(known)`` once it no longer ``Needs`` bytes: each round's ranges read in
    parallel (``LAYOUT_READS_IN_FLIGHT`` at once) and added to ``known``."""
    limiter = trio.CapacityLimiter(LAYOUT_READS_IN_FLIGHT)

    async def fetch(request: ByteRequest) -> None:
        async with limiter:
            data = await read(request)
        known.add(request.digest, request.offset, data)

    for _round in range(MAX_LAYOUT_ROUNDS):
        found = ask(known)
        if not isinstance(found, Needs):
            return found
        try:
            async with trio.open_nursery() as nursery:
                for request in found.reads:
                    nursery.start_soon(fetch, request)
        except BaseExceptionGroup as group:
            # One read's error is what the reader sees (its errno), not a group of them.
            first = first_modelfs_error(group)
            if first is None:
                raise
            raise first from None
    raise ManifestInvalid(
        f"invalid model {name}: its files are not laid out after {MAX_LAYOUT_ROUNDS} rounds of reads"
    )
