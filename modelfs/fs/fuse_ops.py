"""The FUSE boundary: kernel requests become ``Tree`` calls, errors become errno.

The only module that imports pyfuse3. Every handler goes through ``boundary``:
a known modelfs error becomes its errno (``errors.ERRNO``), anything unexpected
is logged with its traceback and becomes EIO — an exception escaping a pyfuse3
handler would end the filesystem, and the mount must never die from one request.
The mount is read-only: every request that would change it is EROFS.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import select
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pyfuse3
import trio

from modelfs.errors import ModelfsError, errno_for
from modelfs.formats.digest import Digest
from modelfs.fs.errorlog import RecentErrors
from modelfs.fs.tree import Attr, Caller, Tree, TreeError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
BLKSIZE_BYTES = 128 << 10
# Chunks waiting to be pushed into the page cache (4 MiB each): past this, pushes are dropped.
PUSH_QUEUE_CHUNKS = 8
# Why the kernel may refuse an invalidation in normal operation: it forgot the entry or
# inode (ENOENT), the session is not (or no longer) there (EINVAL from libfuse, ENOTCONN,
# ENODEV, EBADF), the kernel has no such notification (ENOSYS).
REFUSALS_EXPECTED = frozenset(
    {errno.ENOENT, errno.EINVAL, errno.ENOTCONN, errno.ENODEV, errno.EBADF, errno.ENOSYS}
)
# How long closing waits for an invalidation blocked in the kernel.
CLOSE_WAIT_SECONDS = 2.0
# Answers that are not failures: "no such attribute" is how getxattr says an xattr is not
# set (``ls -l`` asks every file for ACLs and SELinux labels).
NOT_ERRORS = frozenset({errno.ENODATA})
# Answers too common to be worth a cause in ``modelfs status``: a shell probing names.
NO_CAUSE = frozenset({errno.ENOENT, errno.ENODATA})


def boundary(fn: F) -> F:
    @functools.wraps(fn)
    async def handler(self: Operations, *args: Any) -> Any:
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as e:
            _count_error(self, fn.__name__, e.errno, "")
            raise
        except TreeError as e:
            err = e.errno
            cause = "" if err in NO_CAUSE else e.message
        except ModelfsError as e:
            err = errno_for(e)
            cause = e.message
            log.info("%s: %s", fn.__name__, e)
        except Exception as e:
            log.exception("unexpected error in FUSE handler %s", fn.__name__)
            err = errno.EIO
            cause = f"unexpected {type(e).__name__} (traceback in the log)"
        _count_error(self, fn.__name__, err, cause)
        raise pyfuse3.FUSEError(err) from None

    return handler  # type: ignore[return-value]


def _count_error(owner: object, operation: str, err: int, cause: str) -> None:
    # Errors answered, by errno, in the counter the daemon gave (``Operations.errors``), and
    # their causes in ``Operations.recent_errors``; an owner without them counts nothing.
    if err in NOT_ERRORS:
        return
    errors: Counter[int] | None = getattr(owner, "errors", None)
    if errors is not None:
        errors[err] += 1
    recent: RecentErrors | None = getattr(owner, "recent_errors", None)
    if recent is not None and cause:
        recent.add(operation, err, cause)


def _decode(name: bytes) -> str:
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        # Model names are ASCII only: nothing else can exist here.
        raise pyfuse3.FUSEError(errno.ENOENT) from None


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        tree: Tree,
        nursery: trio.Nursery,
        cache_root: str,
        errors: Counter[int] | None = None,
    ) -> None:
        super().__init__()
        # Errors answered to the kernel, by errno (read by ``modelfs status``); handlers run on
        # the trio thread, so a plain Counter needs no lock.
        self.errors: Counter[int] = errors if errors is not None else Counter()
        # The last distinct errors with the reason each was answered (``modelfs status``).
        self.recent_errors = RecentErrors()
        self.pusher = Pusher()
        self.invalidator = Invalidator()
        self.tree = tree
        self.nursery = nursery
        self.cache_root = cache_root
        self.uid = os.getuid()
        self.gid = os.getgid()

    def _caller(self, ctx: Any) -> Caller:
        # FUSE says which user each request is for: under allow_other, not always the owner.
        return self.tree.access.caller(getattr(ctx, "uid", None))

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.inode
        e.generation = 0
        e.entry_timeout = attr.entry_seconds
        e.attr_timeout = attr.attr_seconds
        e.st_mode = attr.mode
        e.st_nlink = 2 if attr.is_dir else 1
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_rdev = 0
        e.st_size = attr.size
        e.st_blksize = BLKSIZE_BYTES
        e.st_blocks = (attr.size + 511) // 512
        e.st_atime_ns = attr.mtime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.mtime_ns
        return e

    # -- namespace ------------------------------------------------------------------------------

    @boundary
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry(await self.tree.lookup(parent_inode, _decode(name), self._caller(ctx)))

    async def forget(self, inode_list):
        # No reply goes to the kernel: errors can only be logged.
        for inode, count in inode_list:
            try:
                self.tree.forget(inode, count)
            except Exception:
                log.exception("forget of inode %d failed", inode)

    @boundary
    async def getattr(self, inode, ctx=None):
        return self._entry(await self.tree.getattr(inode))

    @boundary
    async def readlink(self, inode, ctx):
        return os.fsencode(self.tree.readlink(inode))

    @boundary
    async def opendir(self, inode, ctx):
        return await self.tree.opendir(inode, self._caller(ctx))

    @boundary
    async def readdir(self, fh, start_id, token):
        dir_inode, entries = self.tree.readdir(fh, start_id)
        for name, next_id in entries:
            attr = self.tree.entry(dir_inode, name)
            if attr is None:
                continue
            if pyfuse3.readdir_reply(token, name.encode("ascii"), self._entry(attr), next_id):
                self.tree.remember(attr.inode)
            else:
                self.tree.drop_unreferenced(attr.inode)
                break

    @boundary
    async def releasedir(self, fh):
        self.tree.releasedir(fh)

    # -- files ----------------------------------------------------------------------------------

    @boundary
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = await self.tree.open(inode, self._caller(ctx))
        # Blob content never changes under a digest: let the page cache outlive the open.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    @boundary
    async def read(self, fh, off, size):
        return await self.tree.read(fh, off, size)

    @boundary
    async def release(self, fh):
        await self.tree.release(fh)

    @boundary
    async def flush(self, fh):
        return None

    @boundary
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        await self.tree.getattr(inode)
        return True

    @boundary
    async def getxattr(self, inode, name, ctx):
        return await self.tree.getxattr(inode, name.decode("utf-8", "replace"), self._caller(ctx))

    @boundary
    async def listxattr(self, inode, ctx):
        return [n.encode() for n in self.tree.listxattr(inode)]

    @boundary
    async def statfs(self, ctx):
        st = await trio.to_thread.run_sync(os.statvfs, self.cache_root)
        s = pyfuse3.StatvfsData()
        s.f_bsize = st.f_bsize
        s.f_frsize = st.f_frsize
        s.f_blocks = st.f_blocks
        s.f_bfree = st.f_bfree
        s.f_bavail = st.f_bavail
        s.f_files = len(self.tree.nodes)
        s.f_ffree = 0
        s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- the mount is read-only -------------------------------------------------------------------

    async def _erofs(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = _erofs
    mknod = _erofs
    mkdir = _erofs
    unlink = _erofs
    rmdir = _erofs
    symlink = _erofs
    rename = _erofs
    link = _erofs
    write = _erofs
    create = _erofs
    setxattr = _erofs
    removexattr = _erofs

    async def fsync(self, fh, datasync):
        return None

    # -- notifications --------------------------------------------------------------------------

    def invalidate(self, digest: Digest) -> None:
        """Drop a discarded blob's pages from the kernel cache (queued: safe from a handler)."""
        for inode in self.tree.inodes_of(digest):
            self.invalidator.inode(inode)

    def store(self, inode: int, offset: int, data: memoryview) -> None:
        """Queue checked bytes for the kernel's page cache (from a fetch thread).

        Never blocks the caller: a store waits on the page locks of READs in flight,
        and a READ may be waiting for a chunk the calling fetch thread has yet to
        receive. When the pusher falls behind, the bytes are dropped: READs serve them.
        """
        self.pusher.put(inode, offset, bytes(data))

    def blob_published(self, digest: Digest) -> None:
        """Make the kernel look up again the entries that now become symlinks to the blob."""
        # Queued to the invalidation thread: safe even from inside a handler.
        self._invalidate_entries(self.tree.blob_published(digest))

    def blob_removed(self, digest: Digest) -> None:
        """A blob left the cache: its links become files served by the daemon again."""
        self._invalidate_entries(self.tree.blob_removed(digest))

    def links_lost(self) -> None:
        """Removals may have been missed: look every link up again."""
        self._invalidate_entries(self.tree.forget_published())

    def _invalidate_entries(self, entries: list[tuple[int, str]]) -> None:
        for parent, name in entries:
            self.invalidator.entry(parent, name.encode("ascii"))

    def close_notifications(self) -> None:
        """Before the session closes: nothing more goes to the kernel."""
        self.pusher.close()
        self.invalidator.close()


class Invalidator:
    """One thread that tells the kernel to forget entries and inodes, in the order asked.

    Not pyfuse3's ``invalidate_entry_async``: its thread logs every refusal but ENOENT as
    an ERROR with a traceback, and goes on submitting after the session is gone (libfuse
    answers EINVAL then). A refusal is normal here: the kernel forgot the entry or inode
    meanwhile (ENOENT), or the session is ending; it is logged at debug level. Nothing is
    submitted once ``close`` has begun, and ``close`` waits (boundedly) for the call in
    flight, so that none runs while the session is destroyed. A call runs in this thread
    because it can block: an entry's invalidation waits for lookups in its directory,
    which the trio thread may be the one to answer.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, bytes | None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def entry(self, parent: int, name: bytes) -> None:
        """Queue: the kernel forgets ``name`` in directory ``parent`` (looks it up again)."""
        self._put((parent, name))

    def inode(self, inode: int) -> None:
        """Queue: the kernel forgets ``inode``'s cached attributes and pages."""
        self._put((inode, None))

    def _put(self, item: tuple[int, bytes | None]) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="modelfs-invalidate", daemon=True
                )
                self._thread.start()
            self._queue.put(item)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if not self._closed:
                self._submit(*item)

    def _submit(self, target: int, name: bytes | None) -> None:
        what = f"inode {target}" if name is None else f"entry {name!r} of inode {target}"
        try:
            if name is None:
                pyfuse3.invalidate_inode(target)
            else:
                pyfuse3.invalidate_entry(target, name)
        except OSError as e:
            if e.errno in REFUSALS_EXPECTED:
                log.debug("kernel did not invalidate %s: %s", what, os.strerror(e.errno))
            else:
                log.warning("could not invalidate %s: %s", what, e)
        except Exception:
            log.exception("could not invalidate %s", what)

    def close(self) -> None:
        """Submit nothing more; wait at most ``CLOSE_WAIT_SECONDS`` for the call in flight."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join(CLOSE_WAIT_SECONDS)
        if thread.is_alive():
            log.debug("an invalidation is still blocked in the kernel at close")


class Pusher:
    """One thread that puts queued bytes into the kernel's page cache (``notify_store``)."""

    def __init__(self, max_queued: int = PUSH_QUEUE_CHUNKS) -> None:
        self._queue: queue.Queue[tuple[int, int, bytes] | None] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.pushed_bytes = 0

    def put(self, inode: int, offset: int, data: bytes) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="modelfs-push", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((inode, offset, data))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            inode, offset, data = item
            try:
                pyfuse3.notify_store(inode, offset, data)
                self.pushed_bytes += len(data)
            except OSError as e:
                # The kernel forgot the inode (ENOENT) or takes no stores (ENOSYS): READs
                # serve these bytes instead.
                log.debug("notify_store of inode %d at %d: %s", inode, offset, e)
            except Exception:
                log.exception("notify_store of inode %d failed", inode)

    def close(self) -> None:
        """Stop after what is queued (the thread is a daemon: a stuck store cannot hold exit)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)


# -- session lifetime (used by the daemon, so that only this module imports pyfuse3) ----------


# Of what libfuse says on stderr while mounting, the most a mount error quotes.
LIBFUSE_SAID_BYTES = 4096


def mount(ops: Operations, mountpoint: str, options: set[str]) -> None:
    """Mount: when this returns the kernel has the mount; requests wait for ``serve``.

    A failure is a ``MountError`` in libfuse's own words ("failed to open /dev/fuse:
    Permission denied"): pyfuse3 only says which libfuse call failed.
    """
    fuse_options = set(pyfuse3.default_options) | options
    with _stderr_said() as said:
        try:
            pyfuse3.init(ops, mountpoint, fuse_options)
        except RuntimeError as e:
            failure = str(e)
        else:
            return
    from modelfs.errors import MountError

    reason = "; ".join(line.removeprefix("fuse: ") for line in said) or failure
    raise MountError(f"cannot mount {mountpoint}: {reason}")


@contextlib.contextmanager
def _stderr_said() -> Iterator[list[str]]:
    """The lines written to file descriptor 2 meanwhile, passed on to it afterwards.

    libfuse (and fusermount3, the helper it runs) tell why a mount failed only there;
    pyfuse3 sets no log function to catch it with. Without a descriptor 2 or a
    temporary file, nothing is caught.
    """
    said: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            caught = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
        except OSError:
            caught = None
        if caught is None:
            yield said
            return
        stack.callback(os.close, saved)
        sys.stderr.flush()
        os.dup2(caught.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            caught.seek(0)
            text = caught.read(LIBFUSE_SAID_BYTES)
            with contextlib.suppress(OSError):
                os.write(2, text)
            said += [ln.strip() for ln in text.decode(errors="replace").splitlines() if ln.strip()]


class _Session:
    serving = False  # pyfuse3.main runs: terminate has a loop to end (trio thread only)


async def serve(max_tasks: int) -> None:
    _Session.serving = True
    try:
        await pyfuse3.main(min_tasks=1, max_tasks=max_tasks)
    finally:
        _Session.serving = False


def serving() -> bool:
    """Whether the FUSE loop (``serve``) still runs."""
    return _Session.serving


def terminate() -> None:
    """End the FUSE loop (``serve`` returns); nothing once it has returned. pyfuse3's own
    ``terminate`` reaches into the session, which ``close`` frees: a signal or the end of
    the session seen after that must not touch it (it crashed the daemon)."""
    if _Session.serving:
        pyfuse3.terminate()


async def session_ended() -> None:
    """Return once the kernel has ended this process's FUSE connection: the filesystem was
    unmounted (after a lazy unmount, once its last open file closed) or the connection aborted.

    pyfuse3's ``main`` returns only once every request it is handling has been answered, and
    the kernel says nothing to those after an unmount: without this, a read waiting on a slow
    fetch keeps the daemon up for as long as it waits. The session's descriptor (a duplicate)
    is polled for POLLERR alone, which ``/dev/fuse`` reports once the connection is gone (it is
    readable with every request), in a thread that a pipe wakes when this is cancelled.
    """
    device = _session_device()
    if device is None:
        await trio.sleep_forever()
        return
    try:
        stop_read, stop_write = os.pipe()
    except OSError:
        os.close(device)
        raise

    def wait() -> None:
        try:
            poller = select.poll()
            poller.register(device, 0)  # POLLERR and POLLHUP are reported whatever is asked
            poller.register(stop_read, select.POLLIN)
            while not poller.poll():
                pass
        finally:
            os.close(device)
            os.close(stop_read)

    try:
        await trio.to_thread.run_sync(wait, abandon_on_cancel=True)
    finally:
        # Cancelled: the thread returns at once (a thread that returned already closed the
        # pipe's other end).
        with contextlib.suppress(OSError):
            os.write(stop_write, b"x")
        os.close(stop_write)


def _session_device() -> int | None:
    """A duplicate of this process's ``/dev/fuse`` descriptor (its one FUSE session's)."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                    return os.dup(int(name))
    return None


def close(unmount: bool) -> None:
    pyfuse3.close(unmount=unmount)
