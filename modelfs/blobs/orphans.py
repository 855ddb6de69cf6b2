"""Blob bytes no model names any more: freed once nothing reads them.

``modelfs rm`` (or ``ollama rm``) of a model a mount is reading removes the
manifest at once, but it cannot remove a partial blob a mount holds (its lock
is taken) and a fetch in flight may still publish the blob afterwards. Those
bytes belong to no model: ``ls`` and ``du`` do not count them, ``status`` does,
and nothing would ever free them. ``collect`` frees them once no reader of this
mount holds them and no modelfs process locks them:

- a partial blob (``.modelfs/partial/``, modelfs's own) no manifest names,
  complete or pending;
- a blob in ``blobs/`` no manifest names, but only one this daemon published
  (``published_here``): other blobs there may be another program's, written
  before the manifest that will name them (``ollama pull`` writes blobs first).

A manifest that cannot be read may name any blob: nothing is collected then.
Runs in a worker thread, under the lock eviction and completion share.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.sharing import unlink_locked
from modelfs.formats.digest import Digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collected:
    digests: tuple[Digest, ...]
    freed_bytes: int
    waiting: bool = False  # some are still read (or locked): look again soon


def collect(cache: BlobCache, busy: Collection[Digest], published_here: set[Digest]) -> Collected:
    """Free the partial blobs no manifest names, and the blobs of ``published_here`` no manifest
    names, except those in ``busy`` or locked by a modelfs process. ``published_here`` loses
    the digests that are gone or named again."""
    candidates = _partials(cache) | {d for d in published_here if cache.has_blob(d)}
    if not candidates:
        published_here.clear()
        return Collected((), 0)
    references = cache.referenced_blobs()
    if any(u.mentions is None for u in references.unreadable):
        return Collected((), 0)
    freed = 0
    gone: list[Digest] = []
    waiting = False
    for digest in sorted(candidates, key=str):
        if digest in references:
            continue
        if digest in busy:
            waiting = True
            continue
        lock = cache.lock_blob(digest)
        if lock is None:
            waiting = True  # another modelfs process reads it
            continue
        try:
            bytes_freed = _remove(cache, digest, digest in published_here)
            # Its lock file too, under the lock (a joiner checks the path still names it).
            with contextlib.suppress(OSError):
                unlink_locked(lock, cache.lock_path(digest))
        finally:
            os.close(lock)
        freed += bytes_freed
        gone.append(digest)
        if bytes_freed:
            log.info("freed blob %s: no model in the cache names it any more", digest.short)
    # A blob a model names again is that model's (rm removes it); one gone needs no watch.
    published_here -= {d for d in published_here if d in references or not cache.has_blob(d)}
    return Collected(tuple(gone), freed, waiting)


def _partials(cache: BlobCache) -> set[Digest]:
    return set(cache.partial_digests())


def _remove(cache: BlobCache, digest: Digest, published: bool) -> int:
    paths = [cache.partial_path(digest), cache.state_path(digest)]
    if published:
        paths.append(cache.blob_path(digest))
    freed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            freed += os.stat(path).st_blocks * 512
            path.unlink()
    return freed
