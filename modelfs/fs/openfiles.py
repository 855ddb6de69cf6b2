"""Open files of the mount: a handle per open, reads through the blob door, and which
open files read which blob (for the pages a fetch pushes into the kernel's cache).

A layer file reads its blob; a file over extents of blobs (a tar member, a
safetensors file laid out from Ollama's tensor blobs) reads the file its model's
layout has now; ``manifest.json`` is served from memory. A layout its checked blobs
refute is dropped, and the tag directories showing it lay it out again.
"""

from __future__ import annotations

import dataclasses
import errno
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from modelfs.blobs.completion import Completion
from modelfs.blobs.files import lay_out
from modelfs.blobs.handles import OpenFile
from modelfs.blobs.reader import Blobs
from modelfs.errors import LayoutMismatch
from modelfs.formats.digest import Digest
from modelfs.formats.files import ModelFile
from modelfs.fs.access import OWNER, Caller
from modelfs.fs.modeltree import Layouts
from modelfs.fs.nodes import Inodes, Node, TreeError


@dataclass
class _Open:
    node: Node
    handle: OpenFile | None  # None for manifest.json (served from memory)


class OpenFiles:
    def __init__(
        self,
        inodes: Inodes,
        layouts: Layouts,
        blobs: Blobs,
        completion: Completion,
        *,
        fhs: Iterator[int],
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.inodes = inodes
        self.layouts = layouts
        self.blobs = blobs
        self.completion = completion
        self._fhs = fhs  # shared with directory listings
        self._on_closed = on_closed  # a file was closed (eviction may now proceed)
        self._handles: dict[int, _Open] = {}

    async def open(self, inode: int, caller: Caller = OWNER) -> int:
        node = self.inodes.node(inode)
        if node.is_dir:
            raise TreeError(errno.EISDIR)
        if node.link is not None:
            raise TreeError(errno.ELOOP)
        handle: OpenFile | None = None
        if node.layer is not None:
            assert node.source is not None and node.manifest is not None
            # Removed from the cache since its lookup (modelfs rm, eviction)? Then recorded
            # again: blobs no manifest names are never evicted.
            await self.completion.ensure_recorded(
                node.source, node.manifest, anonymous=caller.anonymous
            )
            handle = await self.blobs.open(
                node.source, node.manifest, node.layer, anonymous=caller.anonymous
            )
        elif node.model_file is not None:
            assert node.source is not None and node.manifest is not None
            node.model_file = await self._current_file(node, caller)
            handle = await self.blobs.open(
                node.source, node.manifest, node.model_file, anonymous=caller.anonymous
            )
        node.open_count += 1
        fh = next(self._fhs)
        self._handles[fh] = _Open(node, handle)
        return fh

    async def read(self, fh: int, offset: int, size: int) -> bytes | bytearray:
        opened = self._handles.get(fh)
        if opened is None:
            raise TreeError(errno.EBADF)
        if opened.handle is None:
            raw = opened.node.manifest.raw  # type: ignore[union-attr]
            return raw[offset : offset + size]
        try:
            return await opened.handle.read(offset, size)
        except LayoutMismatch:
            self._drop_layout(opened.node)
            raise

    async def release(self, fh: int) -> None:
        opened = self._handles.pop(fh, None)
        if opened is None:
            return
        opened.node.open_count -= 1
        if opened.handle is not None:
            await opened.handle.close()
        if opened.node.lookups <= 0 and opened.node.open_count <= 0:
            self.inodes.forget(opened.node.inode, 0)
        if self._on_closed is not None:
            self._on_closed()

    def inodes_reading(self, blob: object) -> list[int]:
        """Inodes with an open file the door says reads the fetch state ``blob`` at its own
        offsets (``Blobs.files_reading``).

        Only these may receive its checked chunks in their page cache: another manifest's
        inode of the same digest never does, nor a file that is not the blob whole.
        """
        reading = self.blobs.files_reading(blob)
        if not reading:
            return []
        return list({o.node.inode for o in self._handles.values() if o.handle in reading})

    def open_digests(self) -> set[Digest]:
        """Blobs that have an open file in the mount."""
        out = set()
        for o in self._handles.values():
            if o.node.layer is not None:
                out.add(o.node.layer.digest)
            elif o.node.model_file is not None:
                out.update(o.node.model_file.digests)
        return out

    async def _current_file(self, node: Node, caller: Caller) -> ModelFile:
        """The file as its model's layout has it now: laid out again if that layout was
        dropped (built from bytes its blobs contradicted) or no longer kept."""
        assert node.source is not None and node.manifest is not None
        assert node.model_file is not None
        name, manifest = node.source, node.manifest
        key = (name.repository_key, manifest.digest)
        tree = self.layouts.tree(key)
        if tree is None:
            await self.layouts.get(
                key, lambda: lay_out(self.blobs, name, manifest, anonymous=caller.anonymous)
            )
            tree = self.layouts.tree(key)
        found = tree.file(node.model_file.path) if tree is not None else None
        if found is None:
            raise TreeError(errno.ENOENT, f"{node.model_file.path} is no longer in the model")
        return found

    def _drop_layout(self, node: Node) -> None:
        """A file's layout was refuted by its checked blobs: forget it, and have the tag
        directories showing that model lay it out again on their next lookup."""
        if node.source is None or node.manifest is None:
            return
        digest = node.manifest.digest
        self.layouts.drop((node.source.repository_key, digest))
        for other in self.inodes.nodes.values():
            if other.resolved is not None and other.resolved.manifest.digest == digest:
                other.resolved = dataclasses.replace(other.resolved, at=-math.inf)
