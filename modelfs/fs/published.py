"""Which blobs this mount has seen complete in ``blobs/``, and whether a file of one is a
symlink to it.

Once a blob's whole sha256 has matched and it is in ``blobs/``, every name that reaches
it shares one inode, or, with links enabled (``enable_links``), is a symlink to the
blob file. The mount learns of a blob published, removed, or of removals it may have
missed; the tree then has the kernel look up again the entries that change.
"""

from __future__ import annotations

from collections.abc import Callable

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.header import label_blob_file
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import GGUF_MEDIA_TYPES, Layer


class Published:
    def __init__(self, cache: BlobCache, *, in_thread: Callable[..., object]) -> None:
        self.cache = cache
        self._in_thread = in_thread
        # Where symlinks to published blobs point, as ``link_base + digest.filename``;
        # None: every file is served by the daemon (see ``enable_links``).
        self.link_base: str | None = None
        self._digests: set[Digest] = set()

    def __contains__(self, digest: Digest) -> bool:
        return digest in self._digests

    def enable_links(self, base: str) -> None:
        """From now on, a file whose blob is complete in ``blobs/`` is a symlink to it.

        Readers of a complete, verified blob then read (and mmap) the cache file
        directly: at disk speed, and unaffected if the daemon dies. ``base`` is
        the link target's prefix, an absolute path: a read-only bind mount of
        ``blobs/`` outside the mount, or the cache's own ``blobs/``.
        """
        self.link_base = base

    def link_target(self, layer: Layer, depth: int) -> str:
        """Where a link to ``layer``'s blob from ``depth`` directories into a model points."""
        assert self.link_base is not None
        # A relative link climbs out of the model's directories, too.
        up = "" if self.link_base.startswith("/") else "../" * depth
        return up + self.link_base + layer.digest.filename

    async def check(self, layers: list[Layer]) -> None:
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
                self._digests.add(layer.digest)
            else:
                self._digests.discard(layer.digest)

    def add(self, digest: Digest) -> None:
        self._digests.add(digest)

    def discard(self, digest: Digest) -> bool:
        """Forget a blob as published; False if it was not."""
        if digest not in self._digests:
            return False
        self._digests.discard(digest)
        return True

    def forget_all(self) -> set[Digest]:
        """Forget every blob as published (removals may have been missed): those that were."""
        gone, self._digests = self._digests, set()
        return gone
