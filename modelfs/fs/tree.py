"""The mount's namespace: ``<host>/<namespace>/<model>/<tag>/<file>``, inodes, attributes, handles.

Directories exist for any valid name part (like autofs, looking one up needs no
network); looking up a tag resolves its manifest. A classic Ollama model's tag
directory holds one file per layer (``manifest.layer_filenames``) plus
``manifest.json``; any other model's shows its files (``modeltree``).

Inodes follow trust (docs/verification.md): until a blob is published, a file's
inode is keyed by the blob digest *and* the repository and manifest that vouch
for it, so the kernel's page cache of one never serves another manifest's
readers; once the blob's whole sha256 has matched and it is in ``blobs/``, every
name that reaches it shares one inode (or one symlink to the blob). Listings show
what the cache knows and what this mount has resolved; names that are not
listed can still be looked up.

Each request says who makes it (``Caller``): requests for other users of an
``allow_other`` mount resolve and fetch without the owner's credentials (unless
``share_credentials``) and reach only the registries ``Access`` allows them.

Knows nothing of pyfuse3: ``fuse_ops`` translates. Names of directories compare
case-insensitively, as model names do.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import math
import stat
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import trio

from modelfs.blobs.blobcache import (
    XATTR_DIGEST,
    XATTR_MEDIA_TYPE,
    XATTR_VERIFY,
    BlobCache,
)
from modelfs.blobs.completion import Completion
from modelfs.blobs.files import lay_out
from modelfs.blobs.folderfacts import XATTR_NAMES as SAFETENSORS_XATTR_NAMES
from modelfs.blobs.folderfacts import read_folder_facts
from modelfs.blobs.handles import OpenFile
from modelfs.blobs.header import label_blob_file, read_model_header
from modelfs.blobs.reader import Blobs
from modelfs.errors import (
    GGUFInvalid,
    LayoutMismatch,
    ManifestInvalid,
    ModelfsError,
    ModelNotFound,
    NameInvalid,
)
from modelfs.formats.artifacts import Kind, kind_of
from modelfs.formats.digest import Digest
from modelfs.formats.files import ModelFile
from modelfs.formats.manifest import (
    GGUF_MEDIA_TYPES,
    MANIFEST_FILENAME,
    Layer,
    Manifest,
    layer_filenames,
)
from modelfs.formats.modelfacts import XATTR_NAMES as GGUF_XATTR_NAMES
from modelfs.formats.modelfacts import XATTR_PREFIX as GGUF_XATTR_PREFIX
from modelfs.formats.names import DEFAULT_TAG, Name, PartKind, check_part, from_parts
from modelfs.formats.safetensors import XATTR_PREFIX as SAFETENSORS_XATTR_PREFIX
from modelfs.fs.modeltree import Entries, Layouts, perm_of
from modelfs.fs.resolver import Resolved, Resolver

log = logging.getLogger(__name__)

ROOT_INODE = 1
DIR_ENTRY_SECONDS = 300.0
FILE_ATTR_SECONDS = 3600.0
# (blob digest, repository, manifest digest): a file's key until its blob is published.
UnpublishedKey = tuple[Digest, tuple[str, str, str], Digest]
LINK_ENTRY_SECONDS = 1.0
LEVEL_KINDS = (PartKind.HOST, PartKind.NAMESPACE, PartKind.MODEL, PartKind.TAG)


@dataclass(frozen=True)
class Access:
    """Who may make the daemon do what (the mount's ``allow_other`` policy)."""

    owner_uid: int
    share_credentials: bool = False  # -o share_credentials: others' requests carry the owner's
    # -o registries=…: the only hosts any lookup may reach (None: any)
    registries: frozenset[str] | None = None
    # Under allow_other without -o registries: the hosts other users' lookups may reach
    # (those in the config file and those in the cache), asked afresh for each lookup.
    others_may_reach: Callable[[], Collection[str]] | None = None

    def caller(self, uid: int | None) -> Caller:
        owner = uid is None or uid == self.owner_uid
        return Caller(owner=owner, anonymous=not owner and not self.share_credentials)

    def may_reach(self, host: str, caller: Caller) -> bool:
        host = host.lower()
        if self.registries is not None and host not in self.registries:
            return False
        if caller.owner or self.registries is not None or self.others_may_reach is None:
            return True
        return host in {h.lower() for h in self.others_may_reach()}


@dataclass(frozen=True)
class Caller:
    owner: bool = True
    anonymous: bool = False  # without the owner's credentials


OWNER = Caller()


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


@dataclass
class _Open:
    node: Node
    handle: OpenFile | None  # None for manifest.json (served from memory)


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
        self.resolver = resolver
        self.blobs = blobs
        self.completion = completion
        self.cache = cache
        self.lookup_ttl_seconds = lookup_ttl_seconds
        self._in_thread = in_thread
        self._on_used = on_used  # a model's file was looked up (cache eviction's LRU)
        self._on_closed = on_closed  # a file was closed (eviction may now proceed)
        self.mtime_ns = time.time_ns()
        self.nodes: dict[int, Node] = {
            ROOT_INODE: Node(ROOT_INODE, ROOT_INODE, "", True, lookups=1)
        }
        self._dirs: dict[tuple[int, str], int] = {}  # (parent inode, lowercased name) -> inode
        self._model_dirs: dict[tuple[int, str], int] = {}  # (parent inode, name): inside a model
        self._layouts = Layouts()
        # published blob digest, manifest digest (manifest.json), or UnpublishedKey -> inode
        self._blobs: dict[Digest | UnpublishedKey, int] = {}
        self._links: dict[Digest, int] = {}  # published blob digest -> symlink inode
        # Where symlinks to published blobs point, as ``link_base + digest.filename``;
        # None: every file is served by the daemon (see ``enable_links``).
        self.link_base: str | None = None
        self._published: set[Digest] = set()
        # user.modelfs.gguf.* of each GGUF file whose header has been read, keyed as its
        # inode is (``_facts_key``): what one manifest's header says is never another's
        # (bounded by the models this mount has shown; a few hundred bytes each).
        self._gguf_facts: dict[Digest | UnpublishedKey, dict[str, bytes]] = {}
        # user.modelfs.safetensors.* of each model of safetensors files (on its tag
        # directory), keyed as its assembled files' inodes are: by repository and manifest.
        self._folder_facts: dict[tuple[object, ...], dict[str, bytes]] = {}
        # How long the kernel may keep a link: short unless removals are watched (blobwatch).
        self.link_entry_seconds = LINK_ENTRY_SECONDS
        self._inodes = itertools.count(ROOT_INODE + 1)
        self._handles: dict[int, _Open] = {}
        self._fhs = itertools.count(1)
        self._dir_listings: dict[int, tuple[int, list[str]]] = {}

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

    def node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise TreeError(errno.ENOENT, f"stale inode {inode}")
        return node

    async def getattr(self, inode: int) -> Attr:
        return self.attr(self.node(inode))

    # -- lookup and forget ----------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: str, caller: Caller = OWNER) -> Attr:
        """Resolve ``name`` in a directory; the kernel now holds one more reference to it."""
        parent = self.node(parent_inode)
        if not parent.is_dir:
            raise TreeError(errno.ENOTDIR)
        if name in (".", ".."):
            raise TreeError(errno.ENOENT)
        if parent.level < len(LEVEL_KINDS):
            node = await self._lookup_dir(parent, name, caller)
        else:
            node = await self._lookup_file(parent, name, caller)
        node.lookups += 1
        return self.attr(node)

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
            self._model_dirs.pop((node.parent, node.name), None)
        elif node.is_dir:
            self._dirs.pop((node.parent, node.name.lower()), None)
        elif node.link is not None:
            assert node.layer is not None
            key = _link_key(node.layer.digest, node.depth)
            if self._links.get(key) == inode:  # type: ignore[call-overload]
                del self._links[key]  # type: ignore[arg-type]
        else:
            for key in self._keys_of(node):
                if self._blobs.get(key) == inode:
                    del self._blobs[key]

    async def _lookup_dir(self, parent: Node, name: str, caller: Caller) -> Node:
        kind = LEVEL_KINDS[parent.level]
        try:
            check_part(kind, name)
        except NameInvalid:
            raise TreeError(errno.ENOENT, f"not a valid {kind.name.lower()}: {name!r}") from None
        if parent.level == 0:
            self._check_reach(name, caller)
            await self._check_host(name)
        parts = (*parent.parts, name)
        if len(parts) == len(LEVEL_KINDS) - 1:
            await self._check_repository(parts, caller)
        key = (parent.inode, name.lower())
        inode = self._dirs.get(key)
        node = self.nodes.get(inode) if inode is not None else None
        if node is None:
            node = Node(next(self._inodes), parent.inode, name, True, parts=parts)
        if len(parts) == len(LEVEL_KINDS):
            await self._resolve_tag(node, caller, force=True)
        self.nodes[node.inode] = node
        self._dirs[key] = node.inode
        return node

    async def _check_host(self, host: str) -> None:
        """ENOENT for a name that cannot be a registry host: one with neither a dot nor a port
        that is not localhost (Docker's rule for a name's first part), unless this mount was
        told of it (``-o registries``) or has models of it."""
        lowered = host.lower()
        if "." in host or ":" in host or lowered == "localhost":
            return
        if self.access.registries is not None and lowered in self.access.registries:
            return
        if any(parts[0].lower() == lowered for parts in await self._known_parts()):
            return
        raise TreeError(errno.ENOENT, f"{host!r} is not a registry host")

    async def _check_repository(self, parts: tuple[str, ...], caller: Caller) -> None:
        """ENOENT for a model directory the registry says does not exist (404 NAME_UNKNOWN),
        unless the cache or this mount knows a model of it; no network for those."""
        prefix = [p.lower() for p in parts]
        if any(
            [p.lower() for p in known[: len(parts)]] == prefix
            for known in await self._known_parts()
        ):
            return
        name = from_parts(*parts, DEFAULT_TAG)
        await self.resolver.repository_tags(name, anonymous=caller.anonymous)

    def _check_reach(self, host: str, caller: Caller) -> None:
        if not self.access.may_reach(host, caller):
            log.info("lookup of registry %s refused by the mount's registries policy", host)
            raise TreeError(errno.EACCES, f"registry {host} is not allowed on this mount")

    async def _resolve_tag(self, node: Node, caller: Caller, *, force: bool = False) -> Resolved:
        """Resolve (or re-resolve after the TTL) the manifest behind a tag directory."""
        now = trio.current_time()
        if (
            node.resolved is not None
            and not force
            and now - node.resolved.at < self.lookup_ttl_seconds
        ):
            return node.resolved
        name = from_parts(*node.parts)
        self._check_reach(name.host, caller)
        resolved = await self.resolver.resolve(name, anonymous=caller.anonymous)
        if (
            node.resolved is None
            or node.resolved.manifest.digest != resolved.manifest.digest
            or (
                node.model_dirs is not None
                and self._layouts.tree((name.repository_key, resolved.manifest.digest)) is None
            )
        ):
            manifest = resolved.manifest
            if kind_of(manifest) is Kind.OLLAMA:
                node.model_dirs = None
                node.entries = {}
                node.files = {
                    fname: (layer, manifest) for fname, layer in layer_filenames(manifest)
                }
                node.files[MANIFEST_FILENAME] = (None, manifest)
            else:
                node.model_dirs = await self._layouts.get(
                    (name.repository_key, manifest.digest),
                    lambda: lay_out(self.blobs, name, manifest, anonymous=caller.anonymous),
                )
                _fill(node, node.model_dirs[""], manifest)
            await self.completion.track(name, manifest, anonymous=caller.anonymous)
        node.resolved = resolved
        return resolved

    async def _lookup_file(self, parent: Node, name: str, caller: Caller) -> Node:
        await self._resolve_in_model(parent, caller)
        entry = parent.files.get(name)
        if entry is None:
            if name not in parent.entries:
                raise TreeError(errno.ENOENT)
            if parent.entries[name] is None:
                return self._subdir_node(parent, name)
        elif entry[0] is not None:
            await self._check_published([entry[0]])
        if self._on_used is not None:
            await self._on_used(from_parts(*parent.parts))
        return self._entry_node(parent, name)

    async def _resolve_in_model(self, node: Node, caller: Caller) -> None:
        """Resolve the tag a directory shows (after its TTL) and refresh its entries."""
        tag = node.tag or node
        resolved = await self._resolve_tag(tag, caller)
        if node.tag is not None:
            entries = (tag.model_dirs or {}).get(node.subpath)
            if entries is None:  # the tag now names a model without this directory
                node.files, node.entries = {}, {}
                raise TreeError(errno.ENOENT, f"{node.subpath} is no longer in the model")
            _fill(node, entries, resolved.manifest)

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
        key = (parent.inode, name)
        inode = self._model_dirs.get(key)
        node = self.nodes.get(inode) if inode is not None else None
        if node is None:
            node = Node(
                next(self._inodes),
                parent.inode,
                name,
                True,
                parts=parent.parts,
                tag=tag,
                subpath=subpath,
                depth=parent.depth + 1,
            )
            self.nodes[node.inode] = node
            self._model_dirs[key] = node.inode
        entries = (tag.model_dirs or {}).get(subpath, {})
        _fill(node, entries, tag.resolved.manifest)  # type: ignore[union-attr]
        return node

    def _assembled_node(self, parent: Node, name: str, f: ModelFile) -> Node:
        """A file that is not one whole layer: an inode per manifest and path."""
        manifest = (parent.tag or parent).resolved.manifest  # type: ignore[union-attr]
        source = from_parts(*parent.parts)
        return self._keyed_node(
            self._blobs,  # type: ignore[arg-type]
            _assembled_key(f, source, manifest),  # type: ignore[arg-type]
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

    # -- symlinks to published blobs ----------------------------------------------------------

    def enable_links(self, base: str) -> None:
        """From now on, a file whose blob is complete in ``blobs/`` is a symlink to it.

        Readers of a complete, verified blob then read (and mmap) the cache file
        directly: at disk speed, and unaffected if the daemon dies. ``base`` is
        the link target's prefix, an absolute path: a read-only bind mount of
        ``blobs/`` outside the mount, or the cache's own ``blobs/``.
        """
        self.link_base = base

    async def _check_published(self, layers: list[Layer]) -> None:
        """Learn which of ``layers`` are complete in ``blobs/`` (one thread hop for all)."""

        def check() -> list[bool]:
            found = [self.cache.has_blob(layer.digest, layer.size) for layer in layers]
            for layer, present in zip(layers, found, strict=True):
                if present and self.link_base is not None:
                    # A link's xattrs are its target's: label the blob file itself.
                    self.cache.label_blob(layer.digest, layer.media_type)
                    if layer.media_type in GGUF_MEDIA_TYPES:
                        label_blob_file(self.cache, layer)
            return found

        found: list[bool] = await self._in_thread(check)  # type: ignore[assignment]
        for layer, present in zip(layers, found, strict=True):
            if present:
                self._published.add(layer.digest)
            else:
                self._published.discard(layer.digest)

    def blob_published(self, digest: Digest) -> list[tuple[int, str]]:
        """A blob became complete: the directory entries the kernel should look up again.

        They become symlinks to the blob (or, without links, the one inode every
        name shares) on their next lookup; handles already open keep reading
        through the daemon.
        """
        self._published.add(digest)
        return self._entries_of({digest})

    def blob_removed(self, digest: Digest) -> list[tuple[int, str]]:
        """A published blob left ``blobs/``: the entries that must stop being links."""
        if digest not in self._published:
            return []
        self._published.discard(digest)
        return self._entries_of({digest})

    def forget_published(self) -> list[tuple[int, str]]:
        """Removals may have been missed: every link entry is looked up (and checked) again."""
        gone, self._published = self._published, set()
        return self._entries_of(gone)

    def _entries_of(self, digests: set[Digest]) -> list[tuple[int, str]]:
        return [
            (node.inode, fname)
            for node in list(self.nodes.values())
            for fname, (layer, _m) in node.files.items()
            if layer is not None and layer.digest in digests
        ]

    def readlink(self, inode: int) -> str:
        node = self.node(inode)
        if node.link is None:
            raise TreeError(errno.EINVAL)
        return node.link

    def _link_node(self, parent: Node, name: str, layer: Layer) -> Node:
        assert self.link_base is not None
        # A relative link climbs out of the model's directories, too.
        up = "" if self.link_base.startswith("/") else "../" * parent.depth
        link = up + self.link_base + layer.digest.filename
        return self._keyed_node(
            self._links,
            _link_key(layer.digest, parent.depth),  # type: ignore[arg-type]
            lambda inode: Node(
                inode, parent.inode, name, False, layer=layer, link=link, depth=parent.depth
            ),
        )

    def _keyed_node(
        self, table: dict[Digest, int], key: Digest, make: Callable[[int], Node]
    ) -> Node:
        """The live node ``table`` has for ``key``, or a new one from ``make(inode)``."""
        inode = table.get(key)
        node = self.nodes.get(inode) if inode is not None else None
        if node is None:
            node = make(next(self._inodes))
            self.nodes[node.inode] = node
            table[key] = node.inode
        return node

    @staticmethod
    def _keys_of(node: Node) -> list[Digest | UnpublishedKey]:
        if node.layer is None and node.model_file is not None:
            assert node.source is not None and node.manifest is not None
            return [_assembled_key(node.model_file, node.source, node.manifest)]  # type: ignore[list-item]
        if node.layer is None:
            return [node.manifest.digest]  # type: ignore[union-attr]
        assert node.source is not None and node.manifest is not None
        return [node.layer.digest, _unpublished_key(node.layer, node.source, node.manifest)]

    def _file_node(self, parent: Node, name: str, layer: Layer | None, manifest: Manifest) -> Node:
        published = layer is not None and layer.digest in self._published
        if published and self.link_base is not None:
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
            key = _unpublished_key(layer, source, manifest)
        return self._keyed_node(
            self._blobs,
            key,
            lambda inode: Node(
                inode, parent.inode, name, False, layer=layer, source=source, manifest=manifest
            ),
        )

    # -- directories ----------------------------------------------------------------------------

    async def opendir(self, inode: int, caller: Caller = OWNER) -> int:
        node = self.node(inode)
        if not node.is_dir:
            raise TreeError(errno.ENOTDIR)
        if node.level == len(LEVEL_KINDS):
            await self._resolve_in_model(node, caller)
            model = node.model_dirs is not None or node.tag is not None
            names = list(node.entries) if model else list(node.files)
            await self._check_published([layer for layer, _m in node.files.values() if layer])
        else:
            names = await self._listing(node, caller)
        fh = next(self._fhs)
        self._dir_listings[fh] = (inode, names)
        return fh

    async def _known_parts(self, *, resolved: bool = True) -> list[tuple[str, ...]]:
        """The name parts of every model in the cache (and every tag this mount resolved)."""

        def from_cache() -> list[tuple[str, ...]]:
            return [m.name.parts for m in self.cache.iter_models()]

        known: list[tuple[str, ...]] = list(await self._in_thread(from_cache))  # type: ignore[call-overload]
        if resolved:
            known += [n.parts for n in self.nodes.values() if n.resolved is not None]
        return known

    async def _listing(self, node: Node, caller: Caller = OWNER) -> list[str]:
        """Child names of a non-tag directory: the models in the cache (a model this mount
        shows is recorded there, and one ``modelfs rm`` removed is not listed again); a
        model directory's also the tags the registry lists."""
        known = await self._known_parts(resolved=False)
        seen: dict[str, str] = {}
        depth = node.level
        prefix = [p.lower() for p in node.parts]
        for parts in known:
            if [p.lower() for p in parts[:depth]] == prefix:
                child = parts[depth]
                seen.setdefault(child.lower(), child)
        if depth == len(LEVEL_KINDS) - 1 and self.access.may_reach(node.parts[0], caller):
            try:
                listed = await self.resolver.repository_tags(
                    from_parts(*node.parts, DEFAULT_TAG), anonymous=caller.anonymous
                )
            except ModelNotFound:
                listed = None
            for tag in listed or ():
                seen.setdefault(tag.lower(), tag)
        return sorted(seen.values())

    def readdir(self, fh: int, start: int) -> tuple[int, list[tuple[str, int]]]:
        """The directory's inode and its entries from ``start`` on, each with the id after it."""
        listing = self._dir_listings.get(fh)
        if listing is None:
            raise TreeError(errno.EBADF)
        inode, names = listing
        return inode, [(n, i + 1) for i, n in enumerate(names)][start:]

    def entry(self, dir_inode: int, name: str) -> Attr | None:
        """Attributes for a readdir entry (a lookup the kernel may or may not keep).

        None if the entry went away since the listing was taken (a re-resolved tag).
        """
        parent = self.node(dir_inode)
        if parent.level < len(LEVEL_KINDS):
            kind = LEVEL_KINDS[parent.level]
            try:
                check_part(kind, name)
            except NameInvalid:
                return None
            key = (parent.inode, name.lower())
            inode = self._dirs.get(key)
            node = self.nodes.get(inode) if inode is not None else None
            if node is None:
                node = Node(
                    next(self._inodes), parent.inode, name, True, parts=(*parent.parts, name)
                )
                self.nodes[node.inode] = node
                self._dirs[key] = node.inode
            return self.attr(node)
        if name not in parent.files and name not in parent.entries:
            return None
        return self.attr(self._entry_node(parent, name))

    def releasedir(self, fh: int) -> None:
        self._dir_listings.pop(fh, None)

    def drop_unreferenced(self, inode: int) -> None:
        """Undo ``entry`` for a readdir entry the kernel did not take."""
        node = self.nodes.get(inode)
        if node is not None and node.lookups == 0 and node.open_count == 0:
            self.forget(inode, 0)

    # -- files ----------------------------------------------------------------------------------

    async def open(self, inode: int, caller: Caller = OWNER) -> int:
        node = self.node(inode)
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

    async def _current_file(self, node: Node, caller: Caller) -> ModelFile:
        """The file as its model's layout has it now: laid out again if that layout was
        dropped (built from bytes its blobs contradicted) or no longer kept."""
        assert node.source is not None and node.manifest is not None
        assert node.model_file is not None
        name, manifest = node.source, node.manifest
        key = (name.repository_key, manifest.digest)
        tree = self._layouts.tree(key)
        if tree is None:
            await self._layouts.get(
                key, lambda: lay_out(self.blobs, name, manifest, anonymous=caller.anonymous)
            )
            tree = self._layouts.tree(key)
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
        self._layouts.drop((node.source.repository_key, digest))
        for other in self.nodes.values():
            if other.resolved is not None and other.resolved.manifest.digest == digest:
                other.resolved = dataclasses.replace(other.resolved, at=-math.inf)

    async def release(self, fh: int) -> None:
        opened = self._handles.pop(fh, None)
        if opened is None:
            return
        opened.node.open_count -= 1
        if opened.handle is not None:
            await opened.handle.close()
        if opened.node.lookups <= 0 and opened.node.open_count <= 0:
            self.forget(opened.node.inode, 0)
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

    def inodes_of(self, digest: Digest) -> list[int]:
        """Every file inode (not link) serving ``digest``, whichever manifest it came by."""
        return [
            n.inode
            for n in self.nodes.values()
            if n.layer is not None and n.link is None and n.layer.digest == digest
        ]

    # -- extended attributes --------------------------------------------------------------------

    def xattrs(self, inode: int) -> dict[str, bytes]:
        node = self.node(inode)
        if node.is_dir:
            if node.resolved is not None:
                m = node.resolved.manifest
                return {
                    XATTR_DIGEST: str(m.digest).encode(),
                    XATTR_MEDIA_TYPE: m.media_type.encode(),
                }
            return {}
        if node.layer is not None:
            return {
                XATTR_DIGEST: str(node.layer.digest).encode(),
                XATTR_MEDIA_TYPE: node.layer.media_type.encode(),
            }
        if node.model_file is not None:
            media_type = node.model_file.media_type
            return {XATTR_MEDIA_TYPE: media_type.encode()} if media_type else {}
        m = node.manifest
        assert m is not None
        return {XATTR_DIGEST: str(m.digest).encode(), XATTR_MEDIA_TYPE: m.media_type.encode()}

    async def getxattr(self, inode: int, name: str, caller: Caller = OWNER) -> bytes:
        node = self.node(inode)
        if name == XATTR_VERIFY and node.layer is not None:
            assert node.source is not None and node.manifest is not None
            how = await self.blobs.verification(
                node.source, node.manifest, node.layer, anonymous=caller.anonymous
            )
            return how.encode()
        if name == XATTR_VERIFY and _reads_blobs(node):
            return await self._file_verification(node, caller)
        if name.startswith(GGUF_XATTR_PREFIX) and _is_gguf(node):
            value = (await self._gguf_xattrs(node, caller)).get(name)
        elif name.startswith(SAFETENSORS_XATTR_PREFIX) and _has_safetensors(node):
            value = (await self._safetensors_xattrs(node, caller)).get(name)
        else:
            value = self.xattrs(inode).get(name)
        if value is None:
            raise TreeError(errno.ENODATA)
        return value

    async def _file_verification(self, node: Node, caller: Caller) -> bytes:
        """How a file over extents of several blobs (a tar member, a safetensors file laid
        out from Ollama's tensor blobs) is checked: each of its blobs' ways, once each, in
        the order the file first reads them (``whole``, ``published-index,whole`` …). Its
        generated bytes (a safetensors header) are built only from checked ranges."""
        assert node.model_file is not None and node.source is not None and node.manifest
        layers = {layer.digest: layer for layer in node.manifest.layers}
        ways: dict[str, None] = {}
        for digest in node.model_file.digests:
            how = await self.blobs.verification(
                node.source, node.manifest, layers[digest], anonymous=caller.anonymous
            )
            ways[how] = None
        return ",".join(ways).encode()

    async def _gguf_xattrs(self, node: Node, caller: Caller) -> dict[str, bytes]:
        """The facts of a GGUF file's header: read once per blob (at most the chunks it
        spans), never on listxattr (``ls -l`` asks for xattrs; it must not fetch)."""
        assert node.layer is not None and node.source is not None and node.manifest is not None
        key = self._facts_key(node)
        known = self._gguf_facts.get(key)
        if known is None:
            try:
                header = await read_model_header(
                    self.blobs, node.source, node.manifest, node.layer, anonymous=caller.anonymous
                )
                known = header.xattrs()
            except GGUFInvalid as e:
                log.info("%s has no GGUF facts: %s", node.name, e)
                known = {}
            self._gguf_facts[key] = known
        return known

    async def _safetensors_xattrs(self, node: Node, caller: Caller) -> dict[str, bytes]:
        """The facts of a model of safetensors files (its tag directory's): read once per
        manifest from config.json and the weights' headers (``blobs.folderfacts``), never
        on listxattr."""
        assert node.resolved is not None
        manifest = node.resolved.manifest
        name = from_parts(*node.parts)
        key = _folder_key(name, manifest)
        known = self._folder_facts.get(key)
        if known is None:
            layout_key = (name.repository_key, manifest.digest)
            await self._layouts.get(
                layout_key,
                lambda: lay_out(self.blobs, name, manifest, anonymous=caller.anonymous),
            )
            try:
                folder = await read_folder_facts(
                    self.blobs,
                    name,
                    manifest,
                    anonymous=caller.anonymous,
                    tree=self._layouts.tree(layout_key),
                )
                known = folder.xattrs()
            except ManifestInvalid as e:
                log.info("%s has no safetensors facts: %s", name, e)
                known = {}
            self._folder_facts[key] = known
        return known

    def _facts_key(self, node: Node) -> Digest | UnpublishedKey:
        """What a GGUF file's facts are kept under: as its inode is keyed (``_file_node``).

        Until the blob is published its header is only what this manifest's chunk index
        (or the registry it came from, unchecked) vouches for; another manifest naming the
        same digest may carry other bytes, so it gets facts of its own.
        """
        assert node.layer is not None
        if node.link is not None or node.layer.digest in self._published:
            return node.layer.digest
        assert node.source is not None and node.manifest is not None
        return _unpublished_key(node.layer, node.source, node.manifest)

    def listxattr(self, inode: int) -> list[str]:
        node = self.node(inode)
        names = list(self.xattrs(inode))
        if node.layer is not None or _reads_blobs(node):
            names.append(XATTR_VERIFY)
        if _is_gguf(node):
            known = self._gguf_facts.get(self._facts_key(node))
            names += GGUF_XATTR_NAMES if known is None else list(known)
        if _has_safetensors(node):
            assert node.resolved is not None
            key = _folder_key(from_parts(*node.parts), node.resolved.manifest)
            facts = self._folder_facts.get(key)
            names += SAFETENSORS_XATTR_NAMES if facts is None else list(facts)
        return names


def _reads_blobs(node: Node) -> bool:
    """A file that is not one whole layer but reads ranges of blobs (a tar member, a laid-out
    safetensors file); not one only of generated bytes (``.modelfs/manifest.json``)."""
    return (
        node.layer is None
        and node.model_file is not None
        and node.manifest is not None
        and bool(node.model_file.digests)
    )


def _is_gguf(node: Node) -> bool:
    return node.layer is not None and node.layer.media_type in GGUF_MEDIA_TYPES


def _has_safetensors(node: Node) -> bool:
    """A tag directory showing a model with top-level ``*.safetensors`` files."""
    if not node.is_dir or node.tag is not None or node.model_dirs is None:
        return False
    top = node.model_dirs.get("", {})
    return node.resolved is not None and any(
        f is not None and n.endswith(".safetensors") for n, f in top.items()
    )


def _folder_key(source: Name, manifest: Manifest) -> tuple[object, ...]:
    return ("safetensors facts", source.repository_key, manifest.digest)


def _unpublished_key(layer: Layer, source: Name, manifest: Manifest) -> UnpublishedKey:
    return (layer.digest, source.repository_key, manifest.digest)


def _assembled_key(f: ModelFile, source: Name, manifest: Manifest) -> tuple[object, ...]:
    return ("file", f.path, source.repository_key, manifest.digest)


def _link_key(digest: Digest, depth: int) -> Digest | tuple[Digest, int]:
    """Links at another depth in a model's directories point elsewhere (relative links)."""
    return digest if depth == 0 else (digest, depth)


def _fill(node: Node, entries: Entries, manifest: Manifest) -> None:
    """A model directory's entries; ``files`` keeps those served as whole layers."""
    node.entries = entries
    node.files = {
        name: (f.layer, manifest)
        for name, f in entries.items()
        if f is not None and f.layer is not None
    }
