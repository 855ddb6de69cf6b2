"""A ``Tree`` over fakes, for unit tests of the namespace's pieces (``modelfs/fs/``).

The registry side is a resolver over manifests in memory, the blob door serves bytes in
memory (and can refute a layout), completion records what it was told; the cache is a
real ``BlobCache`` in a temporary directory, so "complete in ``blobs/``" is a file there.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.handles import FileHandle
from modelfs.errors import LayoutMismatch, ModelNotFound
from modelfs.formats.digest import Digest
from modelfs.formats.files import ModelFile
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Manifest, parse_manifest
from modelfs.formats.names import Name, parse_name
from modelfs.fs.resolver import Resolved
from modelfs.fs.tree import Tree

HOST = "127.0.0.1:5000"
GGUF = b"GGUF-not-really" * 10


def ollama_manifest(
    model: bytes = GGUF, config: bytes = b"{}", media_type: str = MEDIA_TYPE_MODEL
) -> Manifest:
    """A classic Ollama manifest: ``config`` and one layer (a model) of ``model``'s bytes."""

    def desc(media_type: str, data: bytes) -> dict:
        return {"mediaType": media_type, "size": len(data), "digest": str(Digest.of_bytes(data))}

    return parse_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": desc("application/vnd.docker.container.image.v1+json", config),
                "layers": [desc(media_type, model)],
            }
        ).encode()
    )


class FakeResolver:
    """Names to manifests in memory; a repository's tags are the tags it has."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str, str, str], Manifest] = {}
        self.resolves: list[str] = []
        self.tag_lists: list[str] = []
        self.gate: trio.Event | None = None  # set: resolutions wait for it

    def set(self, name: str, manifest: Manifest | None) -> Name:
        n = parse_name(name)
        if manifest is None:
            self.manifests.pop(n.key, None)
        else:
            self.manifests[n.key] = manifest
        return n

    async def resolve(self, name: Name, *, anonymous: bool = False) -> Resolved:
        self.resolves.append(str(name))
        await trio.lowlevel.checkpoint()
        if self.gate is not None:
            await self.gate.wait()
        manifest = self.manifests.get(name.key)
        if manifest is None:
            raise ModelNotFound(f"{name}: not found")
        return Resolved(name, manifest, trio.current_time())

    async def repository_tags(self, name: Name, *, anonymous: bool = False) -> tuple[str, ...]:
        self.tag_lists.append(str(name))
        await trio.lowlevel.checkpoint()
        tags = tuple(key[3] for key in self.manifests if key[:3] == name.repository_key)
        if not tags:
            raise ModelNotFound(f"{name}: no such repository")
        return tags


class Handle:
    def __init__(self, data: bytes, log: list[str], refute: bool = False) -> None:
        self.data, self.log, self.refute = data, log, refute

    async def read(self, offset: int, size: int) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.refute:
            raise LayoutMismatch("laid out from bytes that its checked blob contradicts")
        return self.data[offset : offset + size]

    async def close(self) -> None:
        self.log.append("close")


class MemoryBlobs:
    """The blob door over bytes in memory. A file over extents is read by the real
    ``FileHandle``, unless ``refute`` is set: then its reads say its layout is a lie's."""

    def __init__(self) -> None:
        self.by_digest: dict[Digest, bytes] = {}
        self.log: list[str] = []
        self.opened: list[object] = []
        self.refute = False
        self.handles: list[object] = []  # every handle opened, in order
        self.reading: dict[object, set[object]] = {}

    def add(self, *blobs: bytes) -> None:
        for data in blobs:
            self.by_digest[Digest.of_bytes(data)] = data

    async def verification(self, name, manifest, layer, *, anonymous=False) -> str:
        return "index"  # checked by range: layouts read through ``open``

    async def open(self, name, manifest, target, *, anonymous=False, readahead=True):
        await trio.lowlevel.checkpoint()
        self.opened.append(target)
        handle: object
        if isinstance(target, ModelFile):
            if self.refute:
                return Handle(b"", self.log, refute=True)
            handle = FileHandle(self, name, manifest, target, anonymous=anonymous)  # type: ignore[arg-type]
        else:
            handle = Handle(self.by_digest[target.digest], self.log)
        self.handles.append(handle)
        return handle

    open_layer = open  # what a ``FileHandle`` opens its extents' blobs with

    def files_reading(self, blob: object) -> set[object]:
        """The open files the door says read the fetch state ``blob`` (``reading``)."""
        return self.reading.get(blob, set())


class FakeCompletion:
    def __init__(self) -> None:
        self.tracked: list[str] = []
        self.recorded: list[str] = []
        self.gate: trio.Event | None = None  # set: tracking waits for it (a slow disk)

    async def track(self, name: Name, manifest: Manifest, *, anonymous: bool = False) -> None:
        self.tracked.append(str(name))
        if self.gate is not None:
            await self.gate.wait()

    async def ensure_recorded(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> None:
        self.recorded.append(str(name))


async def in_thread(fn, *args):
    return fn(*args)


class Namespace:
    """A ``Tree`` and the fakes under it; ``path`` looks a path up part by part."""

    def __init__(self, tmp_path: Path, *, lookup_ttl_seconds: float = 1000.0, **kw) -> None:
        self.cache = BlobCache(tmp_path / "cache")
        self.cache.prepare()
        self.resolver = FakeResolver()
        self.blobs = MemoryBlobs()
        self.completion = FakeCompletion()
        self.closed = 0
        self.tree = Tree(
            self.resolver,  # type: ignore[arg-type]
            self.blobs,  # type: ignore[arg-type]
            self.completion,  # type: ignore[arg-type]
            self.cache,
            lookup_ttl_seconds=lookup_ttl_seconds,
            in_thread=in_thread,
            on_closed=self._closed,
            **kw,
        )

    def _closed(self) -> None:
        self.closed += 1

    async def path(self, path: str) -> int:
        """The inode ``path`` (``host/ns/model/tag/…``) reaches; each part is one lookup."""
        inode = 1
        for part in path.split("/"):
            inode = (await self.tree.lookup(inode, part)).inode
        return inode

    def publish(self, data: bytes) -> Digest:
        """Put ``data`` in the cache's ``blobs/`` as a complete blob."""
        digest = Digest.of_bytes(data)
        self.cache.store_bytes(data, digest)
        return digest
