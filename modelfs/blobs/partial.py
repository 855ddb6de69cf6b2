"""A partial blob on disk: its data file in ``.modelfs/partial/`` and which chunks of it are present.

The data file is written chunk by chunk in place (each run of chunks is
fallocated first: on ext4 this is ~10x faster than filling holes). Which chunks
are present is kept in a bitmap, persisted as ``sha256-<hex>.state`` with the
cache's atomic discipline (temp file, fsync, rename). For a blob without an index
the data file is fdatasync'ed *before* a state that claims its chunks is renamed
into place, so a crash can lose recent chunks but never claim one that is not on
disk. For an indexed blob the state may run ahead of the data: every chunk loaded
from a state is re-verified against the index before its first use
(``needs_recheck``), so a chunk lost in a crash is fetched again. The state carries
its own checksum and the parameters it was made with; a state that does not match
is discarded, not trusted. A blob without an index has nothing to
re-verify its chunks against before the whole is complete, so its state names
the repository the chunks came from (``origin``) and is kept only for a fetch
from that same repository: chunks one registry sent never stand in for another's.

A *scratch* partial (``scratch=True``) is a private data file for a fetch of a
digest whose ordinary partial another fetch in this process holds (the same
digest vouched for by another manifest): never persisted, removed when closed,
published like any other once whole and verified.

All methods block: async callers use a worker thread.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable

from modelfs.blobs.blobcache import STATE_FILE_MODE, BlobCache, fsync_dir, os_error
from modelfs.blobs.sharing import Busy, SharedPartial
from modelfs.errors import CacheError
from modelfs.formats.chunks import BlobChunks, ChunkLayout
from modelfs.formats.digest import Digest, hash_file_into

log = logging.getLogger(__name__)

STATE_VERSION = 1
_scratch_ids = itertools.count(1)


def _checksum(doc: dict[str, object]) -> str:
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body).hexdigest()


def _present_bytes(bitmap: bytes | bytearray, layout: ChunkLayout) -> int:
    total = 0
    for i in range(layout.count):
        if bitmap[i >> 3] & (1 << (i & 7)):
            start, end = layout.span(i)
            total += end - start
    return total


def encode_state(
    digest: Digest,
    layout: ChunkLayout,
    indexed: bool,
    present: bytes,
    origin: str | None = None,
    source: str | None = None,
) -> bytes:
    doc: dict[str, object] = {
        "version": STATE_VERSION,
        "digest": str(digest),
        "size": layout.size,
        "chunkBytes": layout.chunk_bytes,
        "indexed": indexed,
        "present": base64.b64encode(present).decode(),
        "presentBytes": _present_bytes(present, layout),
    }
    if not layout.fixed:
        doc["layout"] = layout.key
    if source is not None:
        doc["source"] = source
    if not indexed and origin is not None:
        doc["origin"] = origin
    doc["checksum"] = _checksum(doc)
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_state(
    raw: bytes,
    digest: Digest,
    layout: ChunkLayout,
    indexed: bool,
    origin: str | None = None,
) -> bytearray | None:
    """The present-chunk bitmap from a state file, or None if it is corrupt or for other parameters.

    ``origin`` (for a blob without an index): the state must name this repository;
    None accepts any (for counting what is present, never for serving).
    """
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            return None
        checksum = doc.pop("checksum", None)
        if checksum != _checksum(doc):
            return None
        if (
            doc.get("version") != STATE_VERSION
            or doc.get("digest") != str(digest)
            or doc.get("size") != layout.size
            or doc.get("chunkBytes") != layout.chunk_bytes
            or doc.get("layout") != (None if layout.fixed else layout.key)
            or doc.get("indexed") != indexed
            or (not indexed and origin is not None and doc.get("origin") != origin)
        ):
            return None
        present = bytearray(base64.b64decode(doc["present"], validate=True))
    except (ValueError, KeyError, TypeError):
        return None
    if len(present) != (layout.count + 7) // 8:
        return None
    return present


class PartialGone(CacheError):
    """The partial file another process was filling was published or removed meanwhile."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(f"the partial file of blob {digest.short} went away while opening it")


class PartialBusy(CacheError):
    """Another process holds the blob's lock file (joining it, or holding it alone)."""

    def __init__(self, digest: Digest) -> None:
        super().__init__(f"another modelfs process holds the lock file of blob {digest.short}")


class PartialFile:
    """The partial data file of one blob, open for reading and writing, with its bitmap."""

    def __init__(
        self,
        cache: BlobCache,
        digest: Digest,
        layout: ChunkLayout,
        indexed: bool,
        *,
        early_writeback: bool = False,
        origin: str | None = None,
        scratch: bool = False,
        source: str | None = None,
        shared: bool = False,
        anonymous: bool = False,
    ) -> None:
        self.cache = cache
        # Join the partial other modelfs processes of this cache fill (``sharing``).
        self.sharing = shared and not scratch
        self.shared: SharedPartial | None = None
        # Fetched without the mount owner's credentials (for another user): shared only with
        # processes fetching the same way, as within a process (``blobfetch.FetchKey``).
        self.anonymous = anonymous
        # How the chunks are checked (kept in the state for ``modelfs ls``; never trusted).
        self.source = source
        self.scratch = scratch
        # The repository the chunks come from (kept in the state of a blob without an index).
        self.origin = origin
        # Start writing each piece to disk as it lands (a pull's fsync then has little left).
        self.early_writeback = early_writeback
        self.digest = digest
        self.layout = layout
        self.size = layout.size
        self.indexed = indexed
        self.chunks = layout.count
        self.present = bytearray((self.chunks + 7) // 8)
        self.present_count = 0
        # Chunks trusted from a previous run: re-hash before their first use.
        self.needs_recheck = bytearray(len(self.present))
        self.path = cache.partial_path(digest)
        if scratch:
            self._to_scratch()
        self._published = False
        self.fd = -1
        self._retired_fds: list[int] = []

    def _to_scratch(self) -> None:
        self.scratch = True
        self.path = self.cache.partial_path(self.digest).with_name(
            f"{self.digest.filename}.{os.getpid()}-{next(_scratch_ids)}.scratch"
        )

    def share_key(self) -> str:
        """What processes sharing this partial must agree on: how its chunks are laid out and
        checked, and (without an index) the repository they come from."""
        doc = {
            "digest": str(self.digest),
            "size": self.size,
            "chunkBytes": self.layout.chunk_bytes,
            "layout": None if self.layout.fixed else self.layout.key,
            "indexed": self.indexed,
            "origin": None if self.indexed else self.origin,
            "anonymous": self.anonymous,
        }
        return _checksum(doc)

    # -- bitmap -------------------------------------------------------------------------------

    def has(self, i: int) -> bool:
        return bool(self.present[i >> 3] & (1 << (i & 7)))

    def mark(self, i: int) -> None:
        if not self.has(i):
            self.present[i >> 3] |= 1 << (i & 7)
            self.present_count += 1

    def unmark(self, i: int) -> None:
        if self.has(i):
            self.present[i >> 3] &= ~(1 << (i & 7)) & 0xFF
            self.present_count -= 1
        self.needs_recheck[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def recheck_pending(self, i: int) -> bool:
        return bool(self.needs_recheck[i >> 3] & (1 << (i & 7)))

    def rechecked(self, i: int) -> None:
        self.needs_recheck[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    @property
    def complete(self) -> bool:
        return self.present_count == self.chunks

    @property
    def present_bytes(self) -> int:
        return _present_bytes(self.present, self.layout)

    # -- file ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the data file and load the persisted bitmap if it can be trusted.

        Sharing, the first member does so and marks the chunks for the others; a later one
        takes the marks as chunks left by a previous run (re-checked before their first
        use when indexed). If other processes fill it with other chunk checks, this one
        fills a private scratch file instead.
        """
        if self.sharing:
            try:
                shared = SharedPartial.join(
                    self.cache.lock_path(self.digest), self.share_key(), self.chunks
                )
            except Busy:
                raise PartialBusy(self.digest) from None
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                    raise os_error(
                        e, f"joining the partial file of blob {self.digest.short}"
                    ) from None
                why = f"the cache's filesystem has no record locks ({e.strerror})"
                shared = None
            else:
                why = "another modelfs process fills it with other chunk checks"
            if shared is None:
                log.info("blob %s: %s; fetching it privately", self.digest.short, why)
                self._to_scratch()
            else:
                self.shared = shared
                try:
                    if shared.first:
                        self._open_data()
                        shared.set_marks(self.present)
                    else:
                        self._open_member(shared)
                except OSError as e:
                    self.close()
                    raise os_error(
                        e, f"opening the partial file of blob {self.digest.short}"
                    ) from None
                except BaseException:
                    self.close()
                    raise
                finally:
                    shared.joined()
                return
        if self.scratch:
            try:
                self.fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
                os.ftruncate(self.fd, self.size)
            except OSError as e:
                self.close()
                raise os_error(e, f"creating a scratch file for blob {self.digest.short}") from None
            return
        self._open_data()

    def _open_member(self, shared: SharedPartial) -> None:
        """Open the data file other processes are filling; take their marks as chunks left
        by an earlier run. Raises PartialGone if it was published or removed meanwhile."""
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PartialGone(self.digest) from None
        if os.fstat(self.fd).st_size != self.size:
            raise PartialGone(self.digest)
        self.present = shared.marks_bitmap()
        self.present_count = sum(bin(b).count("1") for b in self.present)
        if self.indexed:
            self.needs_recheck = bytearray(self.present)
        if self.present_count:
            log.info(
                "blob %s: another modelfs process is filling it; sharing its %d of %d chunks",
                self.digest.short,
                self.present_count,
                self.chunks,
            )

    def _open_data(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
            st = os.fstat(self.fd)
            bitmap = None
            if st.st_size == self.size:
                try:
                    raw = self.cache.state_path(self.digest).read_bytes()
                except FileNotFoundError:
                    raw = None
                if raw is not None:
                    bitmap = decode_state(raw, self.digest, self.layout, self.indexed, self.origin)
                    if (
                        bitmap is None
                        and decode_state(raw, self.digest, self.layout, self.indexed) is not None
                    ):
                        log.info(
                            "blob %s: the chunks on disk came from another repository; "
                            "fetching afresh from %s",
                            self.digest.short,
                            self.origin,
                        )
                    elif bitmap is None:
                        log.warning(
                            "discarding unreadable chunk state of blob %s", self.digest.short
                        )
            if bitmap is None:
                with contextlib.suppress(FileNotFoundError):
                    self.cache.state_path(self.digest).unlink()
                os.ftruncate(self.fd, 0)
                os.ftruncate(self.fd, self.size)
                return
            self.present = bitmap
            self.present_count = sum(bin(b).count("1") for b in bitmap)
            if self.indexed:
                self.needs_recheck = bytearray(bitmap)
            if self.present_count:
                log.info(
                    "blob %s: resuming with %d of %d chunks present",
                    self.digest.short,
                    self.present_count,
                    self.chunks,
                )
        except OSError as e:
            self.close()
            raise os_error(e, f"opening the partial file of blob {self.digest.short}") from None

    def reserve(self, start: int, end: int) -> None:
        """Allocate disk for ``[start, end)`` before writing it: fast writes, early ENOSPC."""
        try:
            os.posix_fallocate(self.fd, start, end - start)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return
            raise os_error(e, f"reserving space for blob {self.digest.short}") from None

    def write(self, offset: int, data: memoryview | bytes) -> None:
        view = memoryview(data)
        start = offset
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise os_error(e, f"writing blob {self.digest.short}") from None
        if self.early_writeback:
            start_writeback(self.fd, start, offset - start)

    def read(self, offset: int, size: int) -> bytes:
        try:
            return os.pread(self.fd, size, offset)
        except OSError as e:
            raise os_error(e, f"reading blob {self.digest.short}") from None

    def verify_chunk(self, i: int, chunks: BlobChunks) -> bool:
        """Whether chunk ``i`` on disk matches ``chunks`` (read back in pieces: a
        registry's chunk may be large)."""
        start, end = self.layout.span(i)
        h = chunks.hasher()
        try:
            hash_file_into(h, self.fd, start, end)
        except OSError as e:
            raise os_error(e, f"reading blob {self.digest.short}") from None
        return h.digest() == chunks.hashes[i]

    def save_state(self, present: bytes) -> None:
        """Persist ``present`` (a snapshot taken before this call).

        Chunks of an indexed blob are re-checked against the index before their
        first use after a restart, so the state may run ahead of the data on disk
        (a chunk lost in a crash fails its check and is fetched again). Without an
        index nothing would notice, so the data is made durable first.
        A scratch partial keeps no state.
        """
        if self.scratch:
            return
        shared = self.shared
        if shared is not None and self.cache.has_blob(self.digest, self.size):
            return  # another process published it: no state may outlive the partial
        if shared is not None and not shared.left:
            # What other processes marked counts too. Read before the fdatasync below, which
            # then makes their chunks durable as well (they wrote each before marking it).
            try:
                marks = shared.marks_bitmap()
            except OSError as e:
                raise os_error(e, f"reading the chunk marks of blob {self.digest.short}") from None
            present = bytes(a | b for a, b in zip(present, marks, strict=True))
        if not self.indexed:
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                raise os_error(e, f"syncing blob {self.digest.short}") from None
        self.cache.atomic_write(
            self.cache.state_path(self.digest),
            encode_state(self.digest, self.layout, self.indexed, present, self.origin, self.source),
        )

    def publish(self) -> None:
        """Move the complete, verified data file into ``blobs/`` and drop the state."""
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise os_error(e, f"syncing blob {self.digest.short}") from None
        shared = self.shared
        if shared is not None and not shared.left:
            # Another member may have published it first (its sha256 matched too).
            if self.cache.has_blob(self.digest, self.size):
                self._published = True
                return
            try:
                same = os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
            except OSError:
                same = False
            if not same and not self.cache.has_blob(self.digest, self.size):
                raise CacheError(f"the partial file of blob {self.digest.short} was replaced")
            if not same:
                self._published = True
                return
        try:
            self.cache.publish_file(self.path, self.digest)
        except CacheError:
            if shared is None or not self.cache.has_blob(self.digest, self.size):
                raise
        self._published = True
        if self.scratch:
            return
        with contextlib.suppress(FileNotFoundError):
            self.cache.state_path(self.digest).unlink()

    def discard(self) -> None:
        """Forget every chunk and start a fresh data file.

        The old descriptor is kept open until ``close``: a reader in a worker
        thread may still be using it, and a closed-and-reused fd number would
        hand it another file's bytes.
        """
        shared = self.shared
        if shared is not None:
            with shared.alone() as alone:
                if alone:
                    shared.set_marks(bytes(len(self.present)))
                    self.cache.discard_partial(self.digest)
            if not alone:
                # Other processes fill it: start afresh in a private file, leaving theirs.
                shared.leave()
                self._to_scratch()
                log.info("blob %s: fetching it again privately", self.digest.short)
        if self.scratch:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        elif shared is None:
            self.cache.discard_partial(self.digest)
        with contextlib.suppress(OSError):
            fsync_dir(self.cache.partial_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
        except OSError as e:
            raise os_error(e, f"recreating the partial file of blob {self.digest.short}") from None
        try:
            os.ftruncate(fd, self.size)
        except OSError as e:
            os.close(fd)
            raise os_error(e, f"recreating the partial file of blob {self.digest.short}") from None
        self.present = bytearray(len(self.present))
        self.needs_recheck = bytearray(len(self.present))
        self.present_count = 0
        # Swap, never pass through -1: a write racing in another thread then lands
        # in the old (unlinked) file or the new one, and never fails with EBADF.
        old, self.fd = self.fd, fd
        if old >= 0:
            self._retired_fds.append(old)

    # -- sharing with other processes ---------------------------------------------------------

    def adopt(self, lo: int, hi: int, skip: Callable[[int], bool]) -> list[int]:
        """Chunks of ``[lo, hi)`` another process marked that this one does not have (nor
        ``skip``s): taken as present (an indexed blob re-checks each before its first use, as
        after a restart)."""
        shared = self.shared
        if shared is None or shared.left:
            return []
        missing = [i for i in range(lo, hi) if not self.has(i) and not skip(i)]
        if not missing:
            return []
        first = missing[0]
        try:
            marks = shared.marks(first, missing[-1] + 1)
        except OSError:
            return []
        got = [i for i in missing if marks[i - first] == 1]
        for i in got:
            self.mark(i)
            if self.indexed:
                self.needs_recheck[i >> 3] |= 1 << (i & 7)
        return got

    def published_elsewhere(self) -> bool:
        """Whether another process sharing this partial has published the blob (blocks)."""
        return self.shared is not None and self.cache.has_blob(self.digest, self.size)

    def claim(self, i: int) -> bool:
        """Take chunk ``i`` to fetch it (always, unshared); False while another process is."""
        shared = self.shared
        if shared is None or shared.left:
            return True
        try:
            return shared.claim(i)
        except OSError:
            return False  # as if another process held it: waited for, never written twice

    def claim_unmarked(self, i: int) -> bool:
        """Take chunk ``i`` to fetch it: False while another process is fetching it, or once
        one has marked it (then it is taken from the file, not fetched)."""
        if not self.claim(i):
            return False
        if self.marked_elsewhere(i):
            self.release(i)
            return False
        return True

    def marked_elsewhere(self, i: int) -> bool:
        shared = self.shared
        if shared is None or shared.left:
            return False
        try:
            return shared.marked(i)
        except OSError:
            return False

    def landed(self, i: int) -> None:
        """Chunk ``i`` (claimed) is written and checked: mark it for the other processes."""
        shared = self.shared
        if shared is not None:
            with contextlib.suppress(OSError):
                shared.mark(i)
                shared.release(i)

    def release(self, i: int) -> None:
        """Let go of chunk ``i`` without marking it (its fetch failed)."""
        shared = self.shared
        if shared is not None:
            with contextlib.suppress(OSError):
                shared.release(i)

    def may_rewrite(self, i: int) -> bool:
        """Whether chunk ``i``, found bad, may be fetched again into this file: only when no
        other process uses the file (another may have checked those bytes by its own index
        and be serving them). Then its mark is cleared."""
        shared = self.shared
        if shared is None or shared.left:
            return True
        try:
            with shared.alone() as alone:
                if alone:
                    shared.unmark(i)
                return alone
        except OSError:
            return False

    def go_private(self) -> None:
        """Go on in a private scratch file holding a copy of the chunks this process has, and
        leave the shared partial: another process holds chunks it does not finish (stopped?),
        which this one may not write (docs/concurrency.md). Only while no fetch of this
        process writes the file."""
        shared = self.shared
        if shared is None:
            return
        old = self.fd
        self._to_scratch()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise os_error(e, f"creating a scratch file for blob {self.digest.short}") from None
        try:
            os.ftruncate(fd, self.size)
            for i in range(self.chunks):
                if self.has(i):
                    start, end = self.layout.span(i)
                    while start < end:
                        n = os.copy_file_range(old, fd, end - start, start, start)
                        if n <= 0:
                            raise OSError(errno.EIO, "short copy")
                        start += n
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise os_error(e, f"copying blob {self.digest.short} to a scratch file") from None
        shared.close()
        self.shared = None
        self.sharing = False
        self.fd = fd
        self._retired_fds.append(old)

    def close(self) -> None:
        if self.shared is not None:
            # Published (by this process or another) or gone: its lock file goes with it.
            done = self._published or self.cache.has_blob(self.digest, self.size)
            self.shared.close(self.cache.lock_path(self.digest) if done else None)
        if self.scratch and not self._published:
            with contextlib.suppress(OSError):
                self.path.unlink()
        for fd in [*self._retired_fds, self.fd]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._retired_fds.clear()
        self.fd = -1


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``[offset, offset+length)`` to disk now, without waiting for it.

    The fsync before publishing then waits only for the last pieces instead of
    the whole blob: the disk works while the network does. (Linux only; a no-op
    elsewhere or if the call fails — the fsync still guarantees durability.)
    """
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def state_source(raw: bytes) -> str | None:
    """How the blob's chunks were being checked when the state was written (``modelfs ls``)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    source = doc.get("source") if isinstance(doc, dict) else None
    return source if isinstance(source, str) and source.isascii() and len(source) < 32 else None


def present_bytes_in_state(raw: bytes, digest: Digest, size: int) -> int:
    """How many bytes a state file says are present (0 if it is unreadable)."""
    try:
        doc = json.loads(raw)
        chunk_bytes = int(doc["chunkBytes"])
        indexed = bool(doc["indexed"])
        layout_key = doc.get("layout")
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0
    if layout_key is not None:
        # Chunks of a registry's ranges: the layout is not known here, only its name.
        # The count is trusted only as far as the state's own checksum vouches for it.
        body = dict(doc)
        claimed = body.get("presentBytes")
        if body.pop("checksum", None) != _checksum(body) or body.get("digest") != str(digest):
            return 0
        ok = isinstance(claimed, int) and not isinstance(claimed, bool) and 0 <= claimed <= size
        return claimed if ok else 0
    if chunk_bytes <= 0:
        return 0
    layout = ChunkLayout(size, chunk_bytes)
    bitmap = decode_state(raw, digest, layout, indexed)
    return 0 if bitmap is None else _present_bytes(bitmap, layout)
