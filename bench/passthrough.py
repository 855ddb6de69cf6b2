"""A minimal pyfuse3 passthrough of one file (as ``<mnt>/file``): the FUSE ceiling for the bench.

Run: passthrough.py SOURCE MOUNTPOINT [--thread]; prints "ready" once mounted; unmount to stop.
Same kernel tuning as modelfs (read_ahead_kb, max_background). READs are answered with a
``pread`` in the trio thread (the fastest a pyfuse3 handler can be when the source is in the
page cache, as the bench arranges), or in a worker thread with ``--thread``.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelfs.fs.daemon import MAX_BACKGROUND, READ_AHEAD_KB, tune_kernel, wait_for_fuse_init

FILE_INODE = 2


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: str, in_thread: bool = False) -> None:
        super().__init__()
        self.in_thread = in_thread
        self.source = source
        self.fd = os.open(source, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_mode = (
            (stat.S_IFDIR | 0o555) if inode == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o444)
        )
        e.st_size = 0 if inode == pyfuse3.ROOT_INODE else self.size
        e.st_blksize = 128 << 10
        e.entry_timeout = e.attr_timeout = 300
        return e

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != b"file":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=FILE_INODE, keep_cache=True)

    async def read(self, fh, off, size):
        if self.in_thread:
            return await trio.to_thread.run_sync(os.pread, self.fd, size, off)
        return os.pread(self.fd, size, off)


async def serve(mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        # Tuned before the kernel has taken FUSE INIT, the readahead would be reset to 128 KiB.
        await wait_for_fuse_init(Path(mountpoint))
        tune_kernel(Path(mountpoint), READ_AHEAD_KB, MAX_BACKGROUND)
        print("ready", flush=True)


def main() -> None:
    source, mountpoint = sys.argv[1], sys.argv[2]
    ops = Passthrough(source, in_thread="--thread" in sys.argv[3:])
    pyfuse3.init(ops, mountpoint, {"ro", "fsname=passthrough"})
    try:
        trio.run(serve, mountpoint)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
