"""The ``--no-chunk-index`` marks of manifests (``.modelfs/unindexed/``): which folder models
were created without a chunk index, so that push publishes none beside them.

A mark belongs first to the writer that is creating the manifest, then to the manifest. Every
mark is a file of its own, never replaced, so that removing one can never remove another
writer's (docs/on-disk-format.md):

- ``sha256-<hex>.<n>.<pid>``: written by process ``pid`` (``<n>`` 16 random hex digits)
  before the manifest it marks; the manifest still to come, or, for a layout a push sends,
  the push running. Only the ``BlobCache`` that wrote it removes it (``drop``, ``clear``),
  or anyone once that process is gone.
- ``sha256-<hex>.<n>``: the same mark once its writer wrote the manifest (renamed by
  ``BlobCache.write_manifest``): the manifest's; it goes when no manifest has the digest.
- ``sha256-<hex>``: a mark an older modelfs wrote, holding its writer's pid (or nothing). It
  may be written again in place by that older modelfs: removed only after it was taken
  aside and found to be the file that was judged stale.

Whoever removes marks lists them first, then reads the manifests: a manifest written after
that reading had its mark written before it, either listed (its writer's, kept) or not
listed at all (not touched).

Blocks on disk I/O: async callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelfs.formats.digest import Digest
from modelfs.pids import pid_alive

log = logging.getLogger(__name__)


class MarkCache(Protocol):
    """What the marks need of the cache they are kept in (``BlobCache``)."""

    unindexed_dir: Path

    def temp_path(self) -> Path: ...

    def atomic_write(self, target: Path, data: bytes, mode: int = 0o644) -> None: ...

    def manifest_digests(self) -> frozenset[Digest] | None: ...


_MARK_NAME_RE = re.compile(r"sha256-([0-9a-f]{64})(?:\.([0-9a-f]{16})(?:\.([1-9]\d{0,9}))?)?")
_LEGACY_PID_RE = re.compile(rb"([1-9]\d{0,9})\n?")
# A mark an older modelfs wrote with no pid says nothing of its writer: kept this long after it
# was written, longer than any create (the mark is written just before the manifest) or push
# of a layout.
UNKNOWN_WRITER_MARK_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Mark:
    digest: Digest
    path: Path
    # Set for a mark being written (``.<n>.<pid>``): its writer.
    pid: int | None = None
    settled: bool = False  # ``.<n>``: its manifest was written

    @property
    def legacy(self) -> bool:
        return not self.settled and self.pid is None


def parse(name: str, directory: Path) -> Mark | None:
    m = _MARK_NAME_RE.fullmatch(name)
    if m is None:
        return None
    digest, token, pid = Digest(m.group(1)), m.group(2), m.group(3)
    if pid is not None and int(pid) >= 1 << 31:
        return None
    return Mark(digest, directory / name, int(pid) if pid else None, token is not None and not pid)


def listed(cache: MarkCache, only: Digest | None = None) -> list[Mark]:
    """The marks in ``unindexed/`` (of ``only``, if given)."""
    try:
        names = os.listdir(cache.unindexed_dir)
    except OSError:
        return []
    if only is not None:
        names = [n for n in names if n.startswith(only.filename)]
    marks = (parse(n, cache.unindexed_dir) for n in sorted(names))
    return [m for m in marks if m is not None and (only is None or m.digest == only)]


def write(cache: MarkCache, digest: Digest, owned: set[str]) -> None:
    """A mark of manifest ``digest`` written by this process, before the manifest."""
    name = f"{digest.filename}.{secrets.token_hex(8)}.{os.getpid()}"
    cache.atomic_write(cache.unindexed_dir / name, f"{os.getpid()}\n".encode())
    owned.add(name)


def settle(cache: MarkCache, digest: Digest, owned: set[str]) -> bool:
    """The manifest of ``digest`` was written: the marks this ``BlobCache`` wrote for it are
    the manifest's now. Whether there were any (the caller makes their renames durable)."""
    mine = [n for n in tuple(owned) if n.startswith(digest.filename + ".")]
    for name in mine:
        owned.discard(name)
        path = cache.unindexed_dir / name
        try:
            os.rename(path, path.with_suffix(""))
        except OSError as e:
            log.info("cannot settle the --no-chunk-index mark of manifest %s: %s", digest.short, e)
    return bool(mine)


def present(cache: MarkCache, digest: Digest) -> bool:
    return bool(listed(cache, digest))


def _removable(mark: Mark, owned: Collection[str], now: float | None) -> tuple[int, int] | bool:
    """Whether ``mark`` may go if no manifest has its digest; for an older modelfs's mark, the
    file judged (device, inode) instead of True. ``now``: the sweep's age rule applies to an
    older modelfs's mark with no pid (``drop`` goes with the last manifest, whatever its age)."""
    if mark.settled:
        return True
    if mark.pid is not None:
        return mark.path.name in owned or not pid_alive(mark.pid)
    try:
        fd = os.open(mark.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        body = os.read(fd, 32) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        body = None
    finally:
        os.close(fd)
    if body is None:
        return False
    pid = _LEGACY_PID_RE.fullmatch(body)
    if pid is not None and int(pid.group(1)) < 1 << 31:
        if pid_alive(int(pid.group(1))):
            return False  # its create or push runs: its manifest may be still to come
    elif now is not None and now - st.st_mtime < UNKNOWN_WRITER_MARK_SECONDS:
        return False
    return st.st_dev, st.st_ino


def remove_unheld(
    cache: MarkCache, only: Digest | None = None, owned: set[str] | None = None
) -> list[Digest]:
    """Remove the marks no manifest of the cache has the digest of (of ``only``, if given),
    except those whose writer may still be at work; the digests whose marks went.

    ``owned``: marks the caller wrote, whose manifest it gave up on (a push's layout kept
    under no name): removed though their writer (this process) runs. With ``only``, an older
    modelfs's mark with no pid goes whatever its age (the last manifest of it went)."""
    owned = set() if owned is None else owned
    now = None if only is not None else time.time()
    judged = [(m, _removable(m, owned, now)) for m in listed(cache, only)]
    stale = [(m, how) for m, how in judged if how is not False]
    if not stale:
        return []
    # Read after the marks were listed: a manifest written since had its mark written first.
    held = cache.manifest_digests()
    if held is None:
        return []  # a manifest that cannot be read may have any digest
    gone: set[Digest] = set()
    for mark, how in stale:
        if mark.digest in held:
            continue
        if how is True:
            try:
                mark.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.info("cannot remove the mark of manifest %s: %s", mark.digest.short, e)
                continue
            owned.discard(mark.path.name)
        elif not _remove_legacy(cache, mark, how):
            continue
        gone.add(mark.digest)
    return sorted(gone, key=str)


def _remove_legacy(cache: MarkCache, mark: Mark, seen: tuple[int, int]) -> bool:
    """Remove an older modelfs's mark if it is still the file judged stale. Taken aside first:
    an older modelfs that wrote the mark again since it was read replaced the file, and gets
    its own back."""
    claim = cache.temp_path()
    try:
        os.rename(mark.path, claim)
    except OSError:
        return False
    same = _file_id(claim) == seen
    if not same:
        try:
            os.link(claim, mark.path)
        except FileExistsError:
            pass  # written again once more: that one stays
        except OSError:
            with contextlib.suppress(OSError):
                os.rename(claim, mark.path)
            return False
    with contextlib.suppress(OSError):
        claim.unlink()
    return same


def clear(cache: MarkCache, digest: Digest, owned: set[str]) -> None:
    """Manifest ``digest`` was created again with a chunk index: no mark says otherwise. The
    mark of another writer still creating it stays (its manifest, the same, comes after)."""
    for mark in listed(cache, digest):
        if mark.pid is not None and mark.path.name not in owned and pid_alive(mark.pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            mark.path.unlink()
        owned.discard(mark.path.name)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
