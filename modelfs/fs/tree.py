"""The mount's namespace: ``<host>/<namespace>/<model>/<tag>/<file>``, as the FUSE
operations ask of it.

``Tree`` is the face ``fuse_ops`` and the daemon talk to; each of its jobs is done by
one piece, and the tree composes them and turns nodes into the attributes the kernel
caches:

- ``nodes``: the nodes and the table of them (``Inodes``), the kernel's lookup counts;
- ``directories``: which names exist, the model a tag directory shows, listings;
- ``lookups``: which node a name reaches (file inodes follow trust);
- ``published``: blobs complete in ``blobs/`` and the symlinks to them;
- ``openfiles``: open files, their reads, which open files read a blob;
- ``xattrs`` and ``facts``: extended attributes, and the GGUF and safetensors facts
  they show.

Each request says who makes it (``Caller``, ``access``). Knows nothing of pyfuse3:
``fuse_ops`` translates.
"""

from __future__ import annotations

import errno
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.completion import Completion
from modelfs.blobs.reader import Blobs
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name
from modelfs.fs.access import OWNER, Access, Caller
from modelfs.fs.directories import Directories
from modelfs.fs.facts import Facts
from modelfs.fs.lookups import Lookups
from modelfs.fs.modeltree import Layouts, perm_of
from modelfs.fs.nodes import (
    DIR_ENTRY_SECONDS,
    FILE_ATTR_SECONDS,
    LEVEL_KINDS,
    LINK_ENTRY_SECONDS,
    Attr,
    Inodes,
    Node,
    TreeError,
)
from modelfs.fs.openfiles import OpenFiles
from modelfs.fs.published import Published
from modelfs.fs.resolver import Resolver
from modelfs.fs.xattrs import Xattrs

__all__ = ["LINK_ENTRY_SECONDS", "Access", "Attr", "Caller", "Tree", "TreeError"]


class Tree:
    def __init__(
        self,
        resolver: Resolver,
        blobs: Blobs,
        completion: Completion,
        cache: BlobCache,
        *,
        lookup_ttl_seconds: float,
        in_thread: Callable[..., object],
        on_used: Callable[[Name], Awaitable[None]] | None = None,
        on_closed: Callable[[], None] | None = None,
        access: Access | None = None,
    ) -> None:
        self.access = access or Access(owner_uid=-1)
        self.lookup_ttl_seconds = lookup_ttl_seconds
        self.mtime_ns = time.time_ns()
        # How long the kernel may keep a link: short unless removals are watched (blobwatch).
        self.link_entry_seconds = LINK_ENTRY_SECONDS
        self.inodes = Inodes()
        self.nodes = self.inodes.nodes
        layouts = Layouts()
        self.published = Published(cache, in_thread=in_thread)
        fhs = itertools.count(1)  # one count for directory and file handles
        self.directories = Directories(
            self.inodes,
            self.published,
            layouts,
            resolver,
            blobs,
            completion,
            cache,
            self.access,
            lookup_ttl_seconds=lookup_ttl_seconds,
            in_thread=in_thread,
            fhs=fhs,
        )
        self.lookups = Lookups(self.inodes, self.directories, self.published, on_used=on_used)
        self.files = OpenFiles(
            self.inodes, layouts, blobs, completion, fhs=fhs, on_closed=on_closed
        )
        self.facts = Facts(blobs, layouts, self.published)
        self.xattrs = Xattrs(self.inodes, blobs, self.facts)

    # -- attributes ---------------------------------------------------------------------------

    def attr(self, node: Node) -> Attr:
        if node.link is not None:
            # If the blob is removed under the link (`modelfs unlink`, `ollama rm`), the
            # entry is invalidated at once when blobs/ is watched, else it expires within a
            # second; either way the next lookup gets a file served by the daemon.
            return Attr(
                node.inode,
                False,
                len(node.link.encode()),
                self.mtime_ns,
                min(self.lookup_ttl_seconds, self.link_entry_seconds),
                self.link_entry_seconds,
                is_link=True,
            )
        if node.is_dir:
            entry = self.lookup_ttl_seconds if node.level == len(LEVEL_KINDS) else DIR_ENTRY_SECONDS
            return Attr(node.inode, True, 0, self.mtime_ns, entry, DIR_ENTRY_SECONDS)
        if node.model_file is not None:
            f = node.model_file
            return Attr(
                node.inode,
                False,
                f.size,
                self.mtime_ns if f.mtime_ns is None else f.mtime_ns,
                self.lookup_ttl_seconds,
                FILE_ATTR_SECONDS,
                perm=perm_of(f),
            )
        size = node.layer.size if node.layer else len(node.manifest.raw)  # type: ignore[union-attr]
        return Attr(
            node.inode, False, size, self.mtime_ns, self.lookup_ttl_seconds, FILE_ATTR_SECONDS
        )

    async def getattr(self, inode: int) -> Attr:
        return self.attr(self.inodes.node(inode))

    # -- lookup and forget ----------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: str, caller: Caller = OWNER) -> Attr:
        """Resolve ``name`` in a directory; the kernel now holds one more reference to it."""
        return self.attr(await self.lookups.lookup(parent_inode, name, caller))

    def remember(self, inode: int) -> None:
        """A readdir entry the kernel accepted counts as a lookup."""
        self.inodes.remember(inode)

    def forget(self, inode: int, count: int) -> None:
        self.inodes.forget(inode, count)

    def readlink(self, inode: int) -> str:
        node = self.inodes.node(inode)
        if node.link is None:
            raise TreeError(errno.EINVAL)
        return node.link

    # -- directories ----------------------------------------------------------------------------

    async def opendir(self, inode: int, caller: Caller = OWNER) -> int:
        return await self.directories.opendir(inode, caller)

    def readdir(self, fh: int, start: int) -> tuple[int, Iterator[tuple[str, int]]]:
        """The directory's inode and its entries from ``start`` on, each with the id after it."""
        return self.directories.readdir(fh, start)

    def entry(self, dir_inode: int, name: str) -> Attr | None:
        """Attributes for a readdir entry (a lookup the kernel may or may not keep).

        None if the entry went away since the listing was taken (a re-resolved tag).
        """
        node = self.lookups.entry(dir_inode, name)
        return None if node is None else self.attr(node)

    def releasedir(self, fh: int) -> None:
        self.directories.releasedir(fh)

    def drop_unreferenced(self, inode: int) -> None:
        """Undo ``entry`` for a readdir entry the kernel did not take."""
        self.inodes.drop_unreferenced(inode)

    # -- files ----------------------------------------------------------------------------------

    async def open(self, inode: int, caller: Caller = OWNER) -> int:
        return await self.files.open(inode, caller)

    async def read(self, fh: int, offset: int, size: int) -> bytes | bytearray:
        return await self.files.read(fh, offset, size)

    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    # -- what the kernel must hear of a blob's change -------------------------------------------

    def enable_links(self, base: str) -> None:
        """From now on, a file whose blob is complete in ``blobs/`` is a symlink to it
        (``Published.enable_links``)."""
        self.published.enable_links(base)

    def blob_published(self, digest: Digest) -> list[tuple[int, str]]:
        """A blob became complete: the directory entries the kernel should look up again.

        They become symlinks to the blob (or, without links, the one inode every
        name shares) on their next lookup; handles already open keep reading
        through the daemon.
        """
        self.published.add(digest)
        return self.inodes.entries_naming({digest})

    def blob_removed(self, digest: Digest) -> list[tuple[int, str]]:
        """A published blob left ``blobs/``: the entries that must stop being links."""
        if not self.published.discard(digest):
            return []
        return self.inodes.entries_naming({digest})

    def forget_published(self) -> list[tuple[int, str]]:
        """Removals may have been missed: every link entry is looked up (and checked) again."""
        return self.inodes.entries_naming(self.published.forget_all())

    def inodes_reading(self, blob: object) -> list[int]:
        """Inodes whose open files may receive ``blob``'s checked chunks in their page cache."""
        return self.files.inodes_reading(blob)

    def open_digests(self) -> set[Digest]:
        """Blobs that have an open file in the mount."""
        return self.files.open_digests()

    def inodes_of(self, digest: Digest) -> list[int]:
        """Every file inode (not link) serving ``digest``, whichever manifest it came by."""
        return self.inodes.inodes_of(digest)

    # -- extended attributes --------------------------------------------------------------------

    async def getxattr(self, inode: int, name: str, caller: Caller = OWNER) -> bytes:
        return await self.xattrs.getxattr(inode, name, caller)

    def listxattr(self, inode: int) -> list[str]:
        return self.xattrs.listxattr(inode)
