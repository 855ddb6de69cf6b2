"""Watch ``blobs/`` for removed blobs (inotify), so links to them are dropped at once.

A complete blob is served as a symlink into ``blobs/``. When the blob goes away
(``modelfs unlink``, ``ollama rm``, eviction), the kernel may still hold the link for
its entry timeout, and an open in that window would be ENOENT. The daemon reacts to
the removal as it happens instead: the entry is invalidated and the next lookup is
served by the daemon again.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from modelfs.errors import DigestInvalid
from modelfs.formats.digest import Digest

log = logging.getLogger(__name__)

IN_MOVED_FROM = 0x00000040
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
EVENT_HEADER = struct.Struct("iIII")
READ_BYTES = 64 << 10

_libc = ctypes.CDLL(None, use_errno=True)


class WatchUnavailable(Exception):
    """inotify could not watch the directory (limits, unsupported filesystem)."""


def open_watch(directory: Path) -> int:
    """An inotify fd watching ``directory`` for removals; the caller closes it."""
    fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise WatchUnavailable(os.strerror(ctypes.get_errno()))
    mask = IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF
    if _libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise WatchUnavailable(os.strerror(err))
    return fd


def parse_events(data: bytes) -> list[tuple[int, str]]:
    """(mask, name) of each event in a buffer read from an inotify fd."""
    events = []
    pos = 0
    while pos + EVENT_HEADER.size <= len(data):
        _wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, pos)
        pos += EVENT_HEADER.size
        raw = data[pos : pos + length].split(b"\0", 1)[0]
        pos += length
        events.append((mask, os.fsdecode(raw)))
    return events


async def watch_removals(
    fd: int,
    directory: Path,
    on_removed: Callable[[Digest], None],
    on_lost: Callable[[], None],
) -> None:
    """Call ``on_removed(digest)`` for each blob file removed from ``directory``, watched
    by ``fd`` (from ``open_watch``, closed here).

    ``on_lost()`` means events were missed (queue overflow) or the directory itself
    went away (then this returns): whatever is known about it must be re-checked.
    Runs until cancelled.
    """
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            for mask, name in parse_events(data):
                if mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    on_lost()
                    if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                        log.warning("%s went away: no longer watching it", directory)
                        return
                    continue
                if not name.startswith("sha256-"):
                    continue
                try:
                    digest = Digest.parse(name)
                except DigestInvalid:
                    continue
                on_removed(digest)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)
