"""One partial blob shared by the modelfs processes of one cache (docs/concurrency.md).

Two mounts of one cache, or a mount and a ``pull``, fill one partial data file
together and fetch each chunk once between them. The blob's lock file
(``partial/sha256-<hex>.lock``) carries what they share, guarded by
open-file-description record locks (``F_OFD_SETLK``), which the kernel drops when
the file is closed, so when a process dies:

- byte ``JOIN``: held while a process joins, so that the first one sets up the rest
  before anyone else reads it;
- byte ``MEMBER``: every process using the partial holds a read lock on it. Getting a
  write lock on it means nobody else uses the partial (to start it afresh, to
  overwrite a chunk, to discard it: ``BlobCache.lock_blob``, which takes ``SMALL`` too);
- byte ``SMALL``: a blob of at most one chunk has no partial file: a process fetching one
  whole holds a write lock on it until the blob is published or the fetch failed
  (``claim_small``); another waits for that, then reads the published blob;
- bytes ``KEY``: how the chunks are laid out and checked (``PartialFile.share_key``),
  written by the first member. Only processes with the same key share the file;
  another fills a private one;
- byte ``CHUNKS + i``: chunk ``i``. Its content is 1 once a member wrote the chunk
  and checked it by its own rules; a write lock on it means a member is fetching it.
  No member writes a chunk another has marked, or one another has locked.

What another member marked is not trusted as such: a member with a chunk index
re-hashes each such chunk against its own before its first use, exactly as a
chunk a previous run left (``PartialFile.needs_recheck``); members without one
share a key only with members fetching from the same repository (the ``origin``
rule of the chunk state, docs/on-disk-format.md).

Every lock is tried, never waited for (``F_OFD_SETLK``, not ``F_OFD_SETLKW``): a thread
blocked in ``fcntl`` cannot be cancelled, and the other end may be a process that never
lets go (stopped, or hostile). A lock another process holds is ``Busy``; the caller polls
under a deadline (``flight.poll``) and then does without it: it fetches privately.

The lock file lives as long as its blob is being fetched: it is unlinked when the blob is
published or removed, by a process holding ``MEMBER`` alone (``unlink_locked``), and a
process that took its locks checks that the path still names the file it locked
(``_same_file``), else opens it again.

All methods block (they are quick); async callers use a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from collections.abc import Iterator

JOIN = 0
MEMBER = 1
SMALL = 2  # a write lock: a process is fetching this blob whole (at most one chunk)
KEY = 64
KEY_BYTES = 64
CHUNKS = 4096
# Private to the cache's owner (as all of ``.modelfs/``): another user who could open a lock
# file could hold its locks.
LOCK_FILE_MODE = 0o600


class _Flock(ctypes.Structure):
    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


def _lock(fd: int, kind: int, start: int, length: int = 1) -> bool:
    """An OFD record lock on ``[start, start+length)``, tried: True if held, False if another
    holds it. Never waits (see the module docstring)."""
    arg = bytes(_Flock(kind, os.SEEK_SET, start, length, 0))
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class Busy(Exception):
    """Another process holds the lock file's ``JOIN`` or ``MEMBER`` byte (or keeps replacing
    the file): try again later, or do without sharing."""


def _same_file(fd: int, path: os.PathLike[str] | str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not unlinked, not replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _open(path: os.PathLike[str] | str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_FILE_MODE)


# Opening again a lock file another process unlinked right after it was opened here.
REOPEN_TRIES = 3


def claim_small(path: os.PathLike[str] | str) -> int | None:
    """Take a small blob's lock file to fetch it: its fd (``release_small`` lets go), or None
    while another process is fetching it."""
    for _ in range(REOPEN_TRIES):
        fd = _open(path)
        try:
            if not _lock(fd, fcntl.F_WRLCK, SMALL):
                os.close(fd)
                return None
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # unlinked by the process that published it: look at the new one
    return None


def release_small(fd: int, path: os.PathLike[str] | str, remove: bool) -> None:
    """Let go of a small blob's claim; ``remove``: the blob is published (or failed), so its
    lock file goes too, unless another process uses it."""
    try:
        if remove:
            with contextlib.suppress(OSError):
                unlink_locked(fd, path)
    finally:
        os.close(fd)


def unlink_locked(fd: int, path: os.PathLike[str] | str) -> bool:
    """Unlink the lock file open as ``fd`` if no other process uses it: holding ``MEMBER``
    alone, so that nobody joins it meanwhile (one who opened it before finds, once it holds
    ``MEMBER``, that the path no longer names it). True if it was unlinked."""
    if not _lock(fd, fcntl.F_WRLCK, MEMBER):
        return False
    if not _same_file(fd, path):
        return False
    os.unlink(path)
    return True


def lock_exclusive(fd: int) -> bool:
    """Write locks on ``MEMBER`` and ``SMALL`` of a lock file: nobody else uses the partial,
    nor fetches the blob whole (a claim the caller would otherwise unlink from under it).
    False: the caller closes ``fd``, which drops whichever it got."""
    return _lock(fd, fcntl.F_WRLCK, MEMBER) and _lock(fd, fcntl.F_WRLCK, SMALL)


class SharedPartial:
    """This process's membership of one blob's shared partial (see the module docstring)."""

    def __init__(self, fd: int, count: int, alone: bool) -> None:
        self.fd = fd
        self.count = count
        # Whether this process was the first member: it sets the chunk marks up.
        self.first = alone
        self.left = False

    @classmethod
    def join(cls, path: os.PathLike[str] | str, key: str, count: int) -> SharedPartial | None:
        """Join the blob's partial (holding ``JOIN`` until ``joined``); None: another key uses
        it. Raises ``Busy`` while another process joins it or holds it alone (to remove it, to
        overwrite a chunk: a moment, unless that process is stopped or hostile)."""
        for _ in range(REOPEN_TRIES):
            fd = _open(path)
            try:
                if not _lock(fd, fcntl.F_WRLCK, JOIN) or not _lock(fd, fcntl.F_RDLCK, MEMBER):
                    raise Busy(f"{path} is held by another process")
                if not _same_file(fd, path):
                    os.close(fd)  # unlinked since it was opened (its blob was published)
                    continue
                raw_key = key.encode().ljust(KEY_BYTES)[:KEY_BYTES]
                if _lock(fd, fcntl.F_WRLCK, MEMBER):
                    # Converted in place: no other member. What the file says is from processes
                    # gone (or about a partial since removed): start it over.
                    os.ftruncate(fd, CHUNKS)
                    os.pwrite(fd, raw_key, KEY)
                    os.ftruncate(fd, CHUNKS + count)
                    _lock(fd, fcntl.F_RDLCK, MEMBER)
                    return cls(fd, count, alone=True)
                if os.pread(fd, KEY_BYTES, KEY) != raw_key:
                    os.close(fd)
                    return None
                return cls(fd, count, alone=False)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
        raise Busy(f"{path} keeps being replaced")

    def joined(self) -> None:
        """Let the next process join (the first member has set the chunk marks up)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                _lock(self.fd, fcntl.F_UNLCK, JOIN)

    def leave(self) -> None:
        """Stop being a member: drop every lock this process holds on it (the fd stays open
        until ``close``, so that a late call never reaches a reused descriptor)."""
        if not self.left:
            self.left = True
            with contextlib.suppress(OSError):
                _lock(self.fd, fcntl.F_UNLCK, 0, 0)  # length 0: to the end of the file

    def close(self, path: os.PathLike[str] | str | None = None) -> None:
        """Close the lock file; ``path``: the blob is published or removed, so the lock file
        goes too if no other process uses it (``unlink_locked``)."""
        self.left = True
        if self.fd >= 0 and path is not None:
            with contextlib.suppress(OSError):
                unlink_locked(self.fd, path)
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # drops every lock this process held on it
            self.fd = -1

    # -- chunk marks --------------------------------------------------------------------------

    def marks(self, lo: int = 0, hi: int | None = None) -> bytes:
        """One byte per chunk of ``[lo, hi)``, 1 where a member marked it written and checked."""
        n = (self.count if hi is None else hi) - lo
        return os.pread(self.fd, n, CHUNKS + lo).ljust(n, b"\0")

    def marked(self, i: int) -> bool:
        return os.pread(self.fd, 1, CHUNKS + i) == b"\x01"

    def mark(self, i: int) -> None:
        if not self.left:
            os.pwrite(self.fd, b"\x01", CHUNKS + i)

    def unmark(self, i: int) -> None:
        if not self.left:
            os.pwrite(self.fd, b"\0", CHUNKS + i)

    def set_marks(self, present: bytes | bytearray) -> None:
        """The first member: mark what its chunk state says is present (a bitmap)."""
        out = bytes(1 if present[i >> 3] & (1 << (i & 7)) else 0 for i in range(self.count))
        os.pwrite(self.fd, out, CHUNKS)

    def marks_bitmap(self) -> bytearray:
        """The marks as a chunk-state bitmap (chunk i is bit ``i & 7`` of byte ``i >> 3``)."""
        out = bytearray((self.count + 7) // 8)
        for i, b in enumerate(self.marks()):
            if b == 1:
                out[i >> 3] |= 1 << (i & 7)
        return out

    # -- fetching claims ----------------------------------------------------------------------

    def claim(self, i: int) -> bool:
        """Take chunk ``i`` to fetch it: False if another member is fetching it."""
        return not self.left and _lock(self.fd, fcntl.F_WRLCK, CHUNKS + i)

    def release(self, i: int) -> None:
        if not self.left:
            _lock(self.fd, fcntl.F_UNLCK, CHUNKS + i)

    # -- alone --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def alone(self) -> Iterator[bool]:
        """Yield whether this is the only member; while True, nobody can join."""
        if self.left or not _lock(self.fd, fcntl.F_WRLCK, MEMBER):
            yield False
            return
        try:
            yield True
        finally:
            _lock(self.fd, fcntl.F_RDLCK, MEMBER)
