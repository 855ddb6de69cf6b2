"""What the namespace's directories hold: which hosts and repositories exist, the model
a tag directory shows, and directory listings with their handles.

Directories exist for any valid name part (like autofs, looking one up needs no
network), but a host must look like one and a repository must exist (in the cache,
this mount, or the registry). A tag directory resolves its manifest, again after the
lookup TTL: a classic Ollama model shows one file per layer
(``manifest.layer_filenames``) plus ``manifest.json``; any other model shows its files
(``modeltree``), laid out once per manifest. Listings show what the cache knows and
what this mount has resolved; names that are not listed can still be looked up.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.completion import Completion
from modelfs.blobs.files import lay_out
from modelfs.blobs.reader import Blobs
from modelfs.errors import ModelNotFound
from modelfs.formats.artifacts import Kind, kind_of
from modelfs.formats.manifest import MANIFEST_FILENAME, layer_filenames
from modelfs.formats.names import DEFAULT_TAG, from_parts
from modelfs.fs.access import OWNER, Access, Caller
from modelfs.fs.modeltree import Layouts
from modelfs.fs.nodes import LEVEL_KINDS, Inodes, Node, TreeError, fill
from modelfs.fs.published import Published
from modelfs.fs.resolver import Resolved, Resolver

log = logging.getLogger(__name__)


class Directories:
    def __init__(
        self,
        inodes: Inodes,
        published: Published,
        layouts: Layouts,
        resolver: Resolver,
        blobs: Blobs,
        completion: Completion,
        cache: BlobCache,
        access: Access,
        *,
        lookup_ttl_seconds: float,
        in_thread: Callable[..., object],
        fhs: Iterator[int],
    ) -> None:
        self.inodes = inodes
        self.published = published
        self.layouts = layouts
        self.resolver = resolver
        self.blobs = blobs
        self.completion = completion
        self.cache = cache
        self.access = access
        self.lookup_ttl_seconds = lookup_ttl_seconds
        self._in_thread = in_thread
        self._fhs = fhs  # shared with open files: one handle number never names two things
        self._listings: dict[int, tuple[int, list[str]]] = {}

    # -- names that exist -----------------------------------------------------------------------

    async def check_host(self, host: str) -> None:
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

    async def check_repository(self, parts: tuple[str, ...], caller: Caller) -> None:
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

    def check_reach(self, host: str, caller: Caller) -> None:
        if not self.access.may_reach(host, caller):
            log.info("lookup of registry %s refused by the mount's registries policy", host)
            raise TreeError(errno.EACCES, f"registry {host} is not allowed on this mount")

    # -- what a tag directory shows -------------------------------------------------------------

    async def resolve_tag(self, node: Node, caller: Caller, *, force: bool = False) -> Resolved:
        """Resolve (or re-resolve after the TTL) the manifest behind a tag directory."""
        now = trio.current_time()
        if (
            node.resolved is not None
            and not force
            and now - node.resolved.at < self.lookup_ttl_seconds
        ):
            return node.resolved
        name = from_parts(*node.parts)
        self.check_reach(name.host, caller)
        resolved = await self.resolver.resolve(name, anonymous=caller.anonymous)
        if (
            node.resolved is None
            or node.resolved.manifest.digest != resolved.manifest.digest
            or (
                node.model_dirs is not None
                and self.layouts.tree((name.repository_key, resolved.manifest.digest)) is None
            )
        ):
            manifest = resolved.manifest
            model_dirs = None
            if kind_of(manifest) is not Kind.OLLAMA:
                model_dirs = await self.layouts.get(
                    (name.repository_key, manifest.digest),
                    lambda: lay_out(self.blobs, name, manifest, anonymous=caller.anonymous),
                )
            await self.completion.track(name, manifest, anonymous=caller.anonymous)
            # The entries and the manifest they come from change together, with no wait
            # between: a lookup in this directory meanwhile has both old or both new (an
            # assembled file's extents are over its own manifest's blobs).
            node.model_dirs = model_dirs
            if model_dirs is None:
                node.entries = {}
                node.files = {
                    fname: (layer, manifest) for fname, layer in layer_filenames(manifest)
                }
                node.files[MANIFEST_FILENAME] = (None, manifest)
            else:
                fill(node, model_dirs[""], manifest)
        node.resolved = resolved
        return resolved

    async def resolve_in_model(self, node: Node, caller: Caller) -> None:
        """Resolve the tag a directory shows (after its TTL) and refresh its entries."""
        tag = node.tag or node
        resolved = await self.resolve_tag(tag, caller)
        if node.tag is not None:
            entries = (tag.model_dirs or {}).get(node.subpath)
            if entries is None:  # the tag now names a model without this directory
                node.files, node.entries = {}, {}
                raise TreeError(errno.ENOENT, f"{node.subpath} is no longer in the model")
            fill(node, entries, resolved.manifest)

    # -- listings -------------------------------------------------------------------------------

    async def opendir(self, inode: int, caller: Caller = OWNER) -> int:
        node = self.inodes.node(inode)
        if not node.is_dir:
            raise TreeError(errno.ENOTDIR)
        if node.level == len(LEVEL_KINDS):
            await self.resolve_in_model(node, caller)
            model = node.model_dirs is not None or node.tag is not None
            names = list(node.entries) if model else list(node.files)
            await self.published.check([layer for layer, _m in node.files.values() if layer])
        else:
            names = await self._listing(node, caller)
        fh = next(self._fhs)
        self._listings[fh] = (inode, names)
        return fh

    def readdir(self, fh: int, start: int) -> tuple[int, Iterator[tuple[str, int]]]:
        """The directory's inode and its entries from ``start`` on, each with the id after it.

        Lazily: the kernel pages through a large directory a buffer at a time, and each call
        costs only the entries that buffer takes, not the whole listing again."""
        listing = self._listings.get(fh)
        if listing is None:
            raise TreeError(errno.EBADF)
        inode, names = listing
        return inode, ((names[i], i + 1) for i in range(max(start, 0), len(names)))

    def releasedir(self, fh: int) -> None:
        self._listings.pop(fh, None)

    async def _known_parts(self, *, resolved: bool = True) -> list[tuple[str, ...]]:
        """The name parts of every model in the cache (and every tag this mount resolved)."""

        def from_cache() -> list[tuple[str, ...]]:
            return [m.name.parts for m in self.cache.iter_models()]

        known: list[tuple[str, ...]] = list(await self._in_thread(from_cache))  # type: ignore[call-overload]
        if resolved:
            known += [n.parts for n in self.inodes.nodes.values() if n.resolved is not None]
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
