"""The namespace's nodes and the table of them: which inode each name reaches, and how
long the kernel holds it.

A node is a directory (one per name part down to the tag, then a model's own
directories), a file, or a symlink to a published blob. The table (``Inodes``) keeps
every node the kernel may still hold, by inode, with the keys that lead back to one: a
name directory by its parent and lowercased name, a model's directory by its parent and
name, a file by what vouches for its bytes (``UnpublishedKey`` until its blob is
published, then the digest), a link by its digest and depth. A node leaves the table
when the kernel forgets its last lookup and no file of it is open.
"""

from __future__ import annotations

import errno
import itertools
import stat
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from modelfs.errors import ModelfsError
from modelfs.formats.digest import Digest
from modelfs.formats.files import ModelFile
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.names import Name, PartKind
from modelfs.fs.modeltree import Entries
from modelfs.fs.resolver import Resolved

ROOT_INODE = 1
DIR_ENTRY_SECONDS = 300.0
FILE_ATTR_SECONDS = 3600.0
# (blob digest, repository, manifest digest): a file's key until its blob is published.
UnpublishedKey = tuple[Digest, tuple[str, str, str], Digest]
LINK_ENTRY_SECONDS = 1.0
LEVEL_KINDS = (PartKind.HOST, PartKind.NAMESPACE, PartKind.MODEL, PartKind.TAG)


class TreeError(ModelfsError):
    """A filesystem-level refusal with its own errno (ENOTDIR, EROFS, ENODATA …)."""

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass(frozen=True)
class Attr:
    inode: int
    is_dir: bool
    size: int
    mtime_ns: int
    entry_seconds: float
    attr_seconds: float
    is_link: bool = False
    perm: int = 0o444  # of a file

    @property
    def mode(self) -> int:
        if self.is_link:
            return stat.S_IFLNK | 0o777
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | self.perm)


@dataclass
class Node:
    inode: int
    parent: int
    name: str  # as first seen
    is_dir: bool
    parts: tuple[str, ...] = ()  # name parts down to this directory
    lookups: int = 0
    # tag directories
    resolved: Resolved | None = None
    files: dict[str, tuple[Layer | None, Manifest]] = field(default_factory=dict)
    # files: the layer (None for manifest.json), and a model that has it (to fetch it from)
    layer: Layer | None = None
    source: Name | None = None
    manifest: Manifest | None = None
    open_count: int = 0
    # symlinks to a published blob: the link's target
    link: str | None = None
    # Models shown as their files (modeltree): a tag directory's directories by path; a
    # directory's entries (``files`` holds those that are whole layers); a directory
    # inside the model, its tag directory and path; a file, what the model says of it.
    model_dirs: dict[str, Entries] | None = None
    entries: Entries = field(default_factory=dict)
    tag: Node | None = None
    subpath: str = ""
    depth: int = 0  # directories between the tag directory and this node
    model_file: ModelFile | None = None

    @property
    def level(self) -> int:
        return len(self.parts)


class Inodes:
    """Every node the kernel may hold, by inode, and the keys that name one."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {
            ROOT_INODE: Node(ROOT_INODE, ROOT_INODE, "", True, lookups=1)
        }
        self.dirs: dict[tuple[int, str], int] = {}  # (parent inode, lowercased name) -> inode
        self.model_dirs: dict[tuple[int, str], int] = {}  # (parent inode, name): inside a model
        # published blob digest, manifest digest (manifest.json), or UnpublishedKey -> inode
        self.files: dict[Hashable, int] = {}
        self.links: dict[Hashable, int] = {}  # published blob digest (and depth) -> symlink inode
        self._inodes = itertools.count(ROOT_INODE + 1)

    def node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise TreeError(errno.ENOENT, f"stale inode {inode}")
        return node

    def new_inode(self) -> int:
        return next(self._inodes)

    def named_dir(self, parent: Node, name: str) -> Node | None:
        """The live directory of name part ``name`` under ``parent``, if any."""
        inode = self.dirs.get((parent.inode, name.lower()))
        return self.nodes.get(inode) if inode is not None else None

    def add_named_dir(self, node: Node) -> None:
        self.nodes[node.inode] = node
        self.dirs[(node.parent, node.name.lower())] = node.inode

    def keyed(self, table: dict[Hashable, int], key: Hashable, make: Callable[[int], Node]) -> Node:
        """The live node ``table`` has for ``key``, or a new one from ``make(inode)``."""
        inode = table.get(key)
        node = self.nodes.get(inode) if inode is not None else None
        if node is None:
            node = make(self.new_inode())
            self.nodes[node.inode] = node
            table[key] = node.inode
        return node

    def remember(self, inode: int) -> None:
        """A readdir entry the kernel accepted counts as a lookup."""
        node = self.nodes.get(inode)
        if node is not None:
            node.lookups += 1

    def forget(self, inode: int, count: int) -> None:
        node = self.nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        node.lookups -= count
        if node.lookups > 0 or node.open_count > 0:
            return
        del self.nodes[inode]
        if node.is_dir and node.tag is not None:
            self.model_dirs.pop((node.parent, node.name), None)
        elif node.is_dir:
            self.dirs.pop((node.parent, node.name.lower()), None)
        elif node.link is not None:
            assert node.layer is not None
            key = link_key(node.layer.digest, node.depth)
            if self.links.get(key) == inode:
                del self.links[key]
        else:
            for key in keys_of(node):
                if self.files.get(key) == inode:
                    del self.files[key]

    def drop_unreferenced(self, inode: int) -> None:
        """Undo a readdir entry the kernel did not take."""
        node = self.nodes.get(inode)
        if node is not None and node.lookups == 0 and node.open_count == 0:
            self.forget(inode, 0)

    def inodes_of(self, digest: Digest) -> list[int]:
        """Every file inode (not link) serving ``digest``, whichever manifest it came by."""
        return [
            n.inode
            for n in self.nodes.values()
            if n.layer is not None and n.link is None and n.layer.digest == digest
        ]

    def entries_naming(self, digests: set[Digest]) -> list[tuple[int, str]]:
        """The directory entries (parent inode, name) of files of these blobs."""
        return [
            (node.inode, fname)
            for node in list(self.nodes.values())
            for fname, (layer, _m) in node.files.items()
            if layer is not None and layer.digest in digests
        ]


def keys_of(node: Node) -> list[Hashable]:
    """The keys a file node may be kept under in ``Inodes.files``."""
    if node.layer is None and node.model_file is not None:
        assert node.source is not None and node.manifest is not None
        return [assembled_key(node.model_file, node.source, node.manifest)]
    if node.layer is None:
        return [node.manifest.digest]  # type: ignore[union-attr]
    assert node.source is not None and node.manifest is not None
    return [node.layer.digest, unpublished_key(node.layer, node.source, node.manifest)]


def unpublished_key(layer: Layer, source: Name, manifest: Manifest) -> UnpublishedKey:
    return (layer.digest, source.repository_key, manifest.digest)


def assembled_key(f: ModelFile, source: Name, manifest: Manifest) -> tuple[object, ...]:
    return ("file", f.path, source.repository_key, manifest.digest)


def link_key(digest: Digest, depth: int) -> Digest | tuple[Digest, int]:
    """Links at another depth in a model's directories point elsewhere (relative links)."""
    return digest if depth == 0 else (digest, depth)


def fill(node: Node, entries: Entries, manifest: Manifest) -> None:
    """A model directory's entries; ``files`` keeps those served as whole layers."""
    node.entries = entries
    node.files = {
        name: (f.layer, manifest)
        for name, f in entries.items()
        if f is not None and f.layer is not None
    }
