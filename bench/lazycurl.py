"""The ceiling of a lazily fetched FUSE file with no Python touching a byte on the way in.

    lazycurl.py URL SIZE MNT PARTIAL

On the first open, `curl -o PARTIAL URL` receives the blob into the page cache (C, one stream);
a minimal pyfuse3 daemon serves each READ with `os.preadv` from PARTIAL (into one reused
buffer) once curl has written past it, polling its size every 2 ms until then. It checks nothing: the cheapest lazy file this
machine can serve from this registry, against which modelfs's receive, write and serve stages
are measured (bench/cold.py --ceilings adds the sha256 and BLAKE3 measured alone in the same
round). curl is this process's child and is waited for as soon as it ends, so its CPU seconds
are in this process's /proc stat (cutime, cstime). Not project code: a benchmark's yardstick.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess

import pyfuse3
import trio

FILE_INODE = 2


class LazyCurl(pyfuse3.Operations):
    def __init__(self, url: str, size: int, partial: str) -> None:
        super().__init__()
        self.url, self.size, self.partial = url, size, partial
        self.fd: int | None = None
        self.curl: subprocess.Popen | None = None
        self.failed = False
        # One reply buffer: filled and returned with no await in between, and pyfuse3 writes
        # the reply before any other handler runs, so no two READs ever share it.
        self.buf = memoryview(bytearray(1 << 20))

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_size = stat.S_IFDIR | 0o555, 0
        else:
            e.st_mode, e.st_size = stat.S_IFREG | 0o444, self.size
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
        if self.curl is None:
            open(self.partial, "wb").close()
            self.fd = os.open(self.partial, os.O_RDONLY)
            self.curl = subprocess.Popen(["curl", "-sf", "-o", self.partial, self.url])
            trio.lowlevel.spawn_system_task(self._reap)
        return pyfuse3.FileInfo(fh=FILE_INODE, keep_cache=True)

    async def _reap(self) -> None:
        assert self.curl is not None
        code = await trio.to_thread.run_sync(self.curl.wait)
        self.failed = code != 0

    async def read(self, fh, off, size):
        assert self.fd is not None
        end = min(off + size, self.size)
        while os.fstat(self.fd).st_size < end:
            if self.failed:
                raise pyfuse3.FUSEError(errno.EIO)
            await trio.sleep(0.002)
        if end - off > len(self.buf):
            self.buf = memoryview(bytearray(end - off))
        n = os.preadv(self.fd, [self.buf[: end - off]], off)
        return self.buf[:n]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("size", type=int)
    p.add_argument("mnt")
    p.add_argument("partial")
    args = p.parse_args()
    fs = LazyCurl(args.url, args.size, args.partial)
    pyfuse3.init(fs, args.mnt, {"fsname=lazycurl", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        if fs.curl is not None and fs.curl.poll() is None:
            fs.curl.kill()
            fs.curl.wait()


if __name__ == "__main__":
    main()
