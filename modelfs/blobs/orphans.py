"""What ``partial/`` and ``blobs/`` (and ``unindexed/``) hold that no model needs: the one set of
rules that frees it.

Run when a cache is prepared (the daemon's start, ``pull``, ``create``, ``show``, ``index``),
with nothing of that process in use yet, and at each eviction check of a daemon, with the
digests its readers hold (``busy``) and the blobs it published (``published_here``); and
after ``push --format docker`` of a GGUF model under its own name (``free_unnamed``), with
the config blob it wrote only to upload it.

What is left over (freed):
- a scratch file (``sha256-<hex>.<pid>-<n>.scratch``) of a process that is gone;
- a partial blob (data, chunk state and lock file in ``.modelfs/partial/``, modelfs's own)
  whose blob is already in ``blobs/``, or that no manifest (complete or pending) names:
  its model was removed while a mount read it, or the process fetching it was killed;
- a blob in ``blobs/`` no manifest names, but only one this daemon published
  (``published_here``): other blobs there may be another program's, written before the
  manifest that will name them (``ollama pull`` writes blobs first).

What is in use (kept; looked at again soon if no model names it: ``Collected.waiting``):
- a digest in ``busy`` (a file of this daemon open on it, a fetch in flight);
- a partial another modelfs process of the cache uses, or a small blob it fetches whole: it
  holds the lock file's ``MEMBER`` or ``SMALL`` byte (``sharing``), so that
  ``BlobCache.lock_blob`` is refused;
- a digest with a scratch file of a process still running.

And two more kinds of leftover, no blob:
- a ``--no-chunk-index`` mark (``.modelfs/unindexed/``) no manifest has the digest of.
  ``BlobCache.unlink`` drops the marks with the last manifest of their digest, but a modelfs
  before that drop, a crash between the two, or ``ollama rm`` left marks nothing else
  removes. A mark is written before its manifest (and a layout's lives while its push runs),
  so one no manifest has yet may be work in progress: it names its writer's process, and is
  kept while that process runs (``unindexed``). A mark with no id (written by an older
  modelfs, whose writer cannot be known) is kept for ``UNKNOWN_WRITER_MARK_SECONDS`` after it
  was written.
- a mark of a model the mount fetched (``.modelfs/lazy/<host>/<namespace>/<model>/<tag>``)
  whose model has no manifest, complete or pending, any more: removed outside modelfs
  (``ollama rm``, a manifest file deleted). A mount touches the mark just before it writes
  the manifest (``completion``), so one touched less than ``LAZY_MARK_GRACE_SECONDS`` ago
  stays, and one touched while it is being removed is put back: left, it would make the
  model of that name pulled again by another program evictable.

Fail closed: a manifest that does not parse keeps every digest in its bytes, one that cannot
be read keeps everything (``References``); a lock that cannot be tried at all (a filesystem
without record locks) keeps the partial. There is no age limit: whether a writer is still
there is known exactly (its lock, its pid), and a partial its model still names is progress
to resume, however old (only a mark without a pid has one, and a lazy mark its grace:
nothing else tells).

Blocks on disk I/O: the daemon runs it in a worker thread, under the lock eviction and
completion share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelfs.blobs import unindexed
from modelfs.blobs.sharing import unlink_locked
from modelfs.errors import CacheError, NameInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name, from_parts
from modelfs.pids import pid_alive

if TYPE_CHECKING:
    from modelfs.blobs.blobcache import BlobCache

log = logging.getLogger(__name__)

_SCRATCH_NAME_RE = re.compile(r"sha256-([0-9a-f]{64})\.(\d+)-\d+\.scratch$")
# A mark of a model the mount fetched, touched this recently, stays though no manifest of the
# model is there: the mount touches it just before writing the manifest (a write and fsync
# away), and while it uses a model it touches the mark at most every 30 s.
LAZY_MARK_GRACE_SECONDS = 600.0
_LAZY_MARK_DEPTH = 4  # <host>/<namespace>/<model>/<tag>


@dataclass(frozen=True)
class Collected:
    digests: tuple[Digest, ...]
    freed_bytes: int
    waiting: bool = False  # some are still read (or locked): look again soon


def collect(
    cache: BlobCache,
    busy: Collection[Digest] = (),
    published_here: set[Digest] | None = None,
) -> Collected:
    """Free what the cache holds that no model needs (the module docstring's rules).

    ``published_here`` loses the digests that are gone or named again."""
    published_here = set() if published_here is None else published_here
    _sweep_unindexed_marks(cache)
    _sweep_lazy_marks(cache)
    freed, live_scratch = _sweep_scratch(cache)
    partials = set(cache.partial_digests())
    candidates = partials | {d for d in published_here if cache.has_blob(d)}
    if not candidates:
        published_here.clear()
        return Collected((), freed)
    references = cache.referenced_blobs()
    gone: list[Digest] = []
    waiting = False
    for digest in sorted(candidates, key=str):
        published = cache.has_blob(digest)
        named = digest in references
        if named and (not published or digest not in partials):
            continue  # a model's: its progress to resume, or its blob
        ours = digest in published_here and not named
        # In use: looked at again soon if its bytes are no model's (a blob a model names
        # leaves only a lock or state file: the next regular check is soon enough).
        if digest in busy or digest in live_scratch:
            waiting = waiting or not named
            continue
        try:
            lock = cache.lock_blob(digest)
        except CacheError as e:
            log.debug("keeping the partial of blob %s: %s", digest.short, e)
            continue
        if lock is None:
            waiting = waiting or not named  # another modelfs process uses it
            continue
        try:
            bytes_freed = _remove(cache, digest, ours)
            # Its lock file too, under the lock (a joiner checks the path still names it).
            with contextlib.suppress(OSError):
                unlink_locked(lock, cache.lock_path(digest))
        finally:
            os.close(lock)
        freed += bytes_freed
        gone.append(digest)
        if bytes_freed:
            why = "no model in the cache names it any more" if ours or not published else None
            log.info(
                "freed %s %s: %s",
                "blob" if ours else "the partial of blob",
                digest.short,
                why or "the blob is complete in the cache",
            )
    # A blob a model names again is that model's (rm removes it); one gone needs no watch.
    # While a manifest cannot be read at all, every digest is "named": keep watching them.
    blind = any(u.mentions is None for u in references.unreadable)
    published_here -= {
        d for d in published_here if (d in references and not blind) or not cache.has_blob(d)
    }
    return Collected(tuple(gone), freed, waiting)


def free_unnamed(cache: BlobCache, digests: Collection[Digest]) -> Collected:
    """Free those of ``digests`` (blobs this process published to the cache only to upload
    them) that no manifest names, under ``collect``'s rules: one another modelfs process
    uses, or a manifest names (even one that cannot be read), stays."""
    try:
        cache.private_mkdir(cache.partial_dir)  # where the blobs' locks are taken
        cache.private_mkdir(cache.tmp_dir)  # where marks are taken aside to be removed
    except OSError as e:
        log.debug("keeping blobs %s: %s", ", ".join(d.short for d in digests), e)
        return Collected((), 0)
    return collect(cache, published_here=set(digests))


def _sweep_scratch(cache: BlobCache) -> tuple[int, set[Digest]]:
    """Remove the scratch files of processes gone; the bytes freed, and the digests with a
    scratch file of a process still running."""
    freed = 0
    live: set[Digest] = set()
    try:
        names = os.listdir(cache.partial_dir)
    except OSError:
        return 0, live
    for n in names:
        m = _SCRATCH_NAME_RE.match(n)
        if m is None:
            continue
        if pid_alive(int(m.group(2))):
            live.add(Digest(m.group(1)))
            continue
        path = cache.partial_dir / n
        with contextlib.suppress(OSError):
            freed += path.stat().st_blocks * 512
            path.unlink()
    return freed, live


def _sweep_unindexed_marks(cache: BlobCache) -> None:
    """Remove the ``--no-chunk-index`` marks no manifest has the digest of, whose writer is
    gone (the module docstring's rules)."""
    for digest in unindexed.remove_unheld(cache):
        log.info(
            "removed the --no-chunk-index mark of manifest %s: no manifest in the cache has "
            "that digest",
            digest.short,
        )


def _sweep_lazy_marks(cache: BlobCache) -> None:
    """Remove the marks of models the mount fetched whose model has no manifest any more,
    untouched for ``LAZY_MARK_GRACE_SECONDS`` (the module docstring's rules)."""
    now = time.time()
    for path in _lazy_mark_paths(cache):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < LAZY_MARK_GRACE_SECONDS:
            continue
        try:
            name = from_parts(*path.relative_to(cache.lazy_dir).parts)
        except NameInvalid:
            continue  # not a mark modelfs wrote: not its to remove
        if _has_manifest(cache, name) is not False:
            continue  # there, or a manifest directory that cannot be listed may hold it
        # Taken aside before it is removed: a mount that touched it since it was judged above
        # (just before writing the manifest) gets it back.
        claim = cache.temp_path()
        try:
            os.rename(path, claim)
        except OSError:
            continue
        try:
            after = os.lstat(claim)
        except OSError:
            continue
        if (after.st_ino, after.st_mtime_ns) != (st.st_ino, st.st_mtime_ns):
            try:
                os.link(claim, path)
            except FileExistsError:
                pass  # a new one there (touched after it was taken aside) is as recent
            except OSError:
                with contextlib.suppress(OSError):
                    os.rename(claim, path)
            with contextlib.suppress(OSError):
                claim.unlink()
            continue
        with contextlib.suppress(OSError):
            claim.unlink()
        log.info(
            "%s has no manifest in the cache any more (removed outside modelfs): removed its "
            "mark of a model the mount fetched",
            name,
        )


def _lazy_mark_paths(cache: BlobCache) -> list[Path]:
    level = [cache.lazy_dir]
    for _depth in range(_LAZY_MARK_DEPTH):
        below: list[Path] = []
        for d in level:
            try:
                below.extend(d / n for n in sorted(os.listdir(d)))
            except OSError:
                continue
        level = below
    return level


def _has_manifest(cache: BlobCache, name: Name) -> bool | None:
    """Whether ``name`` has a manifest, complete or pending (each part matched without
    case); None when a directory on the way cannot be listed."""
    for base in (cache.manifests_dir, cache.pending_dir):
        level = [base]
        for part in name.parts:
            below: list[Path] = []
            for d in level:
                try:
                    names = os.listdir(d)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError:
                    return None
                below.extend(d / n for n in names if n.lower() == part.lower())
            level = below
        if any(p.is_file() for p in level):
            return True
    return False


def _remove(cache: BlobCache, digest: Digest, published: bool) -> int:
    paths = [cache.partial_path(digest), cache.state_path(digest)]
    if published:
        # The blob, and the local chunk index that describes only it.
        paths += [cache.blob_path(digest), cache.local_index_path(digest)]
    freed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            freed += os.stat(path).st_blocks * 512
            path.unlink()
    return freed
