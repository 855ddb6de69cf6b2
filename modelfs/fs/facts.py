"""What the mount's ``user.modelfs.gguf.*`` and ``user.modelfs.safetensors.*`` xattrs say:
the facts of a GGUF file's header and of a model of safetensors files, read once and kept.

A GGUF file's facts are read from its header (at most the chunks it spans) and kept
as its inode is keyed: until its blob is published, per repository and manifest, since
what one manifest's header says is never another's. A safetensors model's facts (on
its tag directory) are read from config.json and the weights' headers, per repository
and manifest. Neither is read on listxattr (``ls -l`` asks for xattrs; it must not
fetch). Only the facts of the last ``MAX_FACTS_ENTRIES`` files and models asked about
are kept: a daemon that lists thousands of models over its life keeps no more; a
forgotten entry is read again when next asked for.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable

from modelfs.blobs.files import lay_out
from modelfs.blobs.folderfacts import read_folder_facts
from modelfs.blobs.header import read_model_header
from modelfs.blobs.reader import Blobs
from modelfs.errors import GGUFInvalid, ManifestInvalid
from modelfs.formats.manifest import Manifest
from modelfs.formats.names import Name, from_parts
from modelfs.fs.access import Caller
from modelfs.fs.modeltree import Layouts
from modelfs.fs.nodes import Node, unpublished_key
from modelfs.fs.published import Published

log = logging.getLogger(__name__)

# Files and models whose facts are kept (a few hundred bytes each).
MAX_FACTS_ENTRIES = 256

Xattrs = dict[str, bytes]


class RecentFacts:
    """Facts by key: the ``max_entries`` most recently read or asked for."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._kept: OrderedDict[Hashable, Xattrs] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: Hashable) -> Xattrs | None:
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
        return found

    def put(self, key: Hashable, facts: Xattrs) -> None:
        self._kept[key] = facts
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)


class Facts:
    def __init__(
        self,
        blobs: Blobs,
        layouts: Layouts,
        published: Published,
        *,
        max_entries: int = MAX_FACTS_ENTRIES,
    ) -> None:
        self.blobs = blobs
        self.layouts = layouts
        self.published = published
        self.gguf_facts = RecentFacts(max_entries)
        self.folder_facts = RecentFacts(max_entries)

    async def gguf(self, node: Node, caller: Caller) -> Xattrs:
        """The facts of a GGUF file's header: read once per key (``_gguf_key``)."""
        assert node.layer is not None and node.source is not None and node.manifest is not None
        key = self._gguf_key(node)
        known = self.gguf_facts.get(key)
        if known is None:
            try:
                header = await read_model_header(
                    self.blobs, node.source, node.manifest, node.layer, anonymous=caller.anonymous
                )
                known = header.xattrs()
            except GGUFInvalid as e:
                log.info("%s has no GGUF facts: %s", node.name, e)
                known = {}
            self.gguf_facts.put(key, known)
        return known

    def gguf_known(self, node: Node) -> Xattrs | None:
        """The GGUF facts kept for a file, if read; never reads them."""
        return self.gguf_facts.get(self._gguf_key(node))

    async def folder(self, node: Node, caller: Caller) -> Xattrs:
        """The facts of a model of safetensors files (its tag directory's): read once per
        manifest from config.json and the weights' headers (``blobs.folderfacts``)."""
        assert node.resolved is not None
        manifest = node.resolved.manifest
        name = from_parts(*node.parts)
        key = _folder_key(name, manifest)
        known = self.folder_facts.get(key)
        if known is None:
            layout_key = (name.repository_key, manifest.digest)
            await self.layouts.get(
                layout_key,
                lambda: lay_out(self.blobs, name, manifest, anonymous=caller.anonymous),
            )
            try:
                folder = await read_folder_facts(
                    self.blobs,
                    name,
                    manifest,
                    anonymous=caller.anonymous,
                    tree=self.layouts.tree(layout_key),
                )
                known = folder.xattrs()
            except ManifestInvalid as e:
                log.info("%s has no safetensors facts: %s", name, e)
                known = {}
            self.folder_facts.put(key, known)
        return known

    def folder_known(self, node: Node) -> Xattrs | None:
        """The safetensors facts kept for a tag directory, if read; never reads them."""
        assert node.resolved is not None
        return self.folder_facts.get(_folder_key(from_parts(*node.parts), node.resolved.manifest))

    def _gguf_key(self, node: Node) -> Hashable:
        """What a GGUF file's facts are kept under: as its inode is keyed (``lookups``).

        Until the blob is published its header is only what this manifest's chunk index
        (or the registry it came from, unchecked) vouches for; another manifest naming the
        same digest may carry other bytes, so it gets facts of its own.
        """
        assert node.layer is not None
        if node.link is not None or node.layer.digest in self.published:
            return node.layer.digest
        assert node.source is not None and node.manifest is not None
        return unpublished_key(node.layer, node.source, node.manifest)


def _folder_key(source: Name, manifest: Manifest) -> tuple[object, ...]:
    return ("safetensors facts", source.repository_key, manifest.digest)
