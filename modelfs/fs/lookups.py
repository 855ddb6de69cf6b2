"""Which node a name reaches: ``<host>/<namespace>/<model>/<tag>/<file>`` looked up one
part at a time, and the nodes of a directory's entries.

Inodes follow trust (docs/verification.md): until a blob is published, a file's inode
is keyed by the blob digest *and* the repository and manifest that vouch for it, so
the kernel's page cache of one never serves another manifest's readers; once the
blob's whole sha256 has matched and it is in ``blobs/``, every name that reaches it
shares one inode (or one symlink to the blob). A file that is not one whole layer (a
tar member, an assembled safetensors file) has an inode per manifest and path.
Names of directories compare case-insensitively, as model names do.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

from modelfs.errors import NameInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.files import ModelFile
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.names import Name, check_part, from_parts
from modelfs.fs.access import OWNER, Caller
from modelfs.fs.directories import Directories
from modelfs.fs.nodes import (
    LEVEL_KINDS,
    Inodes,
    Node,
    TreeError,
    UnpublishedKey,
    assembled_key,
    fill,
    link_key,
    unpublished_key,
)
from modelfs.fs.published import Published


class Lookups:
    def __init__(
        self,
        inodes: Inodes,
        directories: Directories,
        published: Published,
        *,
        on_used: Callable[[Name], Awaitable[None]] | None = None,
    ) -> None:
        self.inodes = inodes
        self.directories = directories
        self.published = published
        self._on_used = on_used  # a model's file was looked up (cache eviction's LRU)

    async def lookup(self, parent_inode: int, name: str, caller: Caller = OWNER) -> Node:
        """Resolve ``name`` in a directory; the kernel now holds one more reference to it."""
        parent = self.inodes.node(parent_inode)
        if not parent.is_dir:
            raise TreeError(errno.ENOTDIR)
        if name in (".", ".."):
            raise TreeError(errno.ENOENT)
        if parent.level < len(LEVEL_KINDS):
            node = await self._lookup_dir(parent, name, caller)
        else:
            node = await self._lookup_file(parent, name, caller)
        node.lookups += 1
        return node

    def entry(self, dir_inode: int, name: str) -> Node | None:
        """The node of a readdir entry (a lookup the kernel may or may not keep).

        None if the entry went away since the listing was taken (a re-resolved tag).
        """
        parent = self.inodes.node(dir_inode)
        if parent.level < len(LEVEL_KINDS):
            kind = LEVEL_KINDS[parent.level]
            try:
                check_part(kind, name)
            except NameInvalid:
                return None
            node = self.inodes.named_dir(parent, name)
            if node is None:
                node = Node(
                    self.inodes.new_inode(), parent.inode, name, True, parts=(*parent.parts, name)
                )
                self.inodes.add_named_dir(node)
            return node
        if name not in parent.files and name not in parent.entries:
            return None
        return self._entry_node(parent, name)

    async def _lookup_dir(self, parent: Node, name: str, caller: Caller) -> Node:
        kind = LEVEL_KINDS[parent.level]
        try:
            check_part(kind, name)
        except NameInvalid:
            raise TreeError(errno.ENOENT, f"not a valid {kind.name.lower()}: {name!r}") from None
        if parent.level == 0:
            self.directories.check_reach(name, caller)
            await self.directories.check_host(name)
        parts = (*parent.parts, name)
        if len(parts) == len(LEVEL_KINDS) - 1:
            await self.directories.check_repository(parts, caller)
        node = self.inodes.named_dir(parent, name)
        if node is None:
            # In the table before the tag resolves: a readdir entry of the same name given
            # meanwhile (``entry``) is this inode, not a second one for the same directory.
            node = Node(self.inodes.new_inode(), parent.inode, name, True, parts=parts)
            self.inodes.add_named_dir(node)
        if len(parts) == len(LEVEL_KINDS):
            try:
                await self.directories.resolve_tag(node, caller, force=True)
            except BaseException:
                self.inodes.drop_unreferenced(node.inode)  # a tag that does not resolve
                raise
        return node

    async def _lookup_file(self, parent: Node, name: str, caller: Caller) -> Node:
        await self.directories.resolve_in_model(parent, caller)
        entry = parent.files.get(name)
        if entry is None:
            if name not in parent.entries:
                raise TreeError(errno.ENOENT)
            if parent.entries[name] is None:
                return self._subdir_node(parent, name)
        elif entry[0] is not None:
            await self.published.check([entry[0]])
        if self._on_used is not None:
            await self._on_used(from_parts(*parent.parts))
        if name not in parent.files and name not in parent.entries:
            # The tag moved meanwhile to a model without it (not a directory of that name).
            raise TreeError(errno.ENOENT, f"{name} left the model while it was looked up")
        return self._entry_node(parent, name)

    def _entry_node(self, parent: Node, name: str) -> Node:
        """The node of a file (or subdirectory) ``parent`` lists, as the listing has it."""
        entry = parent.files.get(name)
        if entry is not None:
            node = self._file_node(parent, name, *entry)
            if node.model_file is None and node.link is None:
                node.model_file = parent.entries.get(name)  # mode and mtime
            return node
        f = parent.entries.get(name)
        if f is None:
            return self._subdir_node(parent, name)
        return self._assembled_node(parent, name, f)

    def _subdir_node(self, parent: Node, name: str) -> Node:
        tag = parent.tag or parent
        subpath = f"{parent.subpath}/{name}" if parent.subpath else name
        node = self.inodes.keyed(
            self.inodes.model_dirs,  # type: ignore[arg-type]
            (parent.inode, name),
            lambda inode: Node(
                inode,
                parent.inode,
                name,
                True,
                parts=parent.parts,
                tag=tag,
                subpath=subpath,
                depth=parent.depth + 1,
            ),
        )
        entries = (tag.model_dirs or {}).get(subpath, {})
        fill(node, entries, tag.resolved.manifest)  # type: ignore[union-attr]
        return node

    def _assembled_node(self, parent: Node, name: str, f: ModelFile) -> Node:
        """A file that is not one whole layer: an inode per manifest and path."""
        manifest = (parent.tag or parent).resolved.manifest  # type: ignore[union-attr]
        source = from_parts(*parent.parts)
        return self.inodes.keyed(
            self.inodes.files,
            assembled_key(f, source, manifest),
            lambda inode: Node(
                inode,
                parent.inode,
                name,
                False,
                source=source,
                manifest=manifest,
                model_file=f,
                depth=parent.depth,
            ),
        )

    def _file_node(self, parent: Node, name: str, layer: Layer | None, manifest: Manifest) -> Node:
        published = layer is not None and layer.digest in self.published
        if published and self.published.link_base is not None:
            return self._link_node(parent, name, layer)  # type: ignore[arg-type]
        source = from_parts(*parent.parts)
        key: Digest | UnpublishedKey
        if layer is None:
            key = manifest.digest
        elif published:
            key = layer.digest
        else:
            # Another manifest naming the same digest gets another inode: its page cache
            # holds only bytes this manifest's chunk index (or whole digest) vouched for.
            key = unpublished_key(layer, source, manifest)
        return self.inodes.keyed(
            self.inodes.files,
            key,
            lambda inode: Node(
                inode, parent.inode, name, False, layer=layer, source=source, manifest=manifest
            ),
        )

    def _link_node(self, parent: Node, name: str, layer: Layer) -> Node:
        link = self.published.link_target(layer, parent.depth)
        return self.inodes.keyed(
            self.inodes.links,
            link_key(layer.digest, parent.depth),
            lambda inode: Node(
                inode, parent.inode, name, False, layer=layer, link=link, depth=parent.depth
            ),
        )
