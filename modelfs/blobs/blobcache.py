"""The on-disk cache: Ollama's ``blobs/`` and ``manifests/``, and modelfs's own state in ``.modelfs/``.

Invariants (docs/on-disk-format.md):
- ``blobs/sha256-<hex>`` exists only complete and verified: the bytes are written
  elsewhere under ``.modelfs/``, fsynced, renamed into place, and the directory fsynced.
- ``manifests/<host>/<namespace>/<model>/<tag>`` holds the registry's exact bytes and is
  written only after every blob it names is in ``blobs/``.
- Nothing of modelfs's lives in ``blobs/``: Ollama deletes files it does not know there.
- Manifests of models seen through the mount but not yet complete wait in
  ``.modelfs/manifests/`` (same layout), so partial models survive restarts and work offline.

Every method blocks on disk I/O: async callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelfs.blobs import orphans, unindexed
from modelfs.blobs.sharing import lock_exclusive, unlink_locked
from modelfs.errors import CacheError, CacheFull, DigestMismatch, ManifestInvalid, NameInvalid
from modelfs.formats.chunks import DEFAULT_CHUNK_ALGORITHM, chunk_hash
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from modelfs.formats.names import Name, from_parts, safe_join
from modelfs.pids import pid_alive

log = logging.getLogger(__name__)

STATE_DIRNAME = ".modelfs"
# modelfs's own state (partials, lock files, chunk states, indexes, logs) is private to the
# cache's owner whatever the umask: another local user must not read which models are being
# fetched, nor open a lock file and hold its locks (docs/on-disk-format.md).
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600
# Manifests live at <host>/<namespace>/<model>/<tag> under manifests/ (and .modelfs/manifests/).
MANIFEST_DEPTH = 4
# What a digest looks like in bytes that are not a manifest we can parse (either spelling).
_DIGEST_BYTES_RE = re.compile(rb"sha256[:-]([0-9a-f]{64})", re.IGNORECASE)
SCAN_READ_BYTES = 1 << 20
# A digest split across two reads is found if this much of the previous read is kept.
_SCAN_OVERLAP_BYTES = len(b"sha256:") + 64 - 1
# What partial/ holds: sha256-<hex>, .state, .lock, .<pid>-<n>.scratch.
_PARTIAL_NAME_RE = re.compile(r"sha256-([0-9a-f]{64})(?:\.state|\.lock|\.\d+-\d+\.scratch)?$")


def default_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--cache``, else ``$OLLAMA_MODELS``, else ``~/.ollama/models`` (Ollama's own default)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".ollama" / "models"


def os_error(e: OSError, what: str) -> CacheError | CacheFull:
    """Translate a disk error: ENOSPC/EDQUOT are CacheFull (never retried), the rest CacheError."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheFull(f"no space left for the cache while {what}")
    return CacheError(f"cache I/O error while {what}: {e.strerror or e}")


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def pread_cached(fd: int, offset: int, size: int) -> bytearray | None:
    """``size`` bytes at ``offset`` if all are in the page cache, read without blocking; else None.

    Served on the trio thread, a read of bytes just fetched (or read before) needs
    no worker thread; anything that would wait for the disk is read in a worker
    thread by the caller (``os.preadv`` with ``RWF_NOWAIT``; Linux 4.14+). The buffer
    is handed on as it is (pyfuse3 replies from any buffer): no copy into ``bytes``.
    """
    if not _RWF_NOWAIT or size <= 0:
        return None
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
    except OSError:
        return None  # EAGAIN: not all cached; anything else: the worker thread reports it
    if n != size:
        return None
    return buf


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CachedModel:
    name: Name
    path: Path
    complete: bool


@dataclass(frozen=True)
class ImportedBlob:
    digest: Digest
    size: int
    chunk_hashes: tuple[bytes, ...]
    chunk_algorithm: str = "sha256"


@dataclass(frozen=True)
class UnreadableManifest:
    """A file (or directory) under manifests/ whose references could not be known for sure."""

    path: Path
    reason: str
    # Digests found in its raw bytes; None when it could not be read (it may name any blob).
    mentions: frozenset[Digest] | None
    # A directory that could not be listed: the manifests in it are unknown.
    is_directory: bool = False

    def may_name(self, digest: Digest) -> bool:
        return self.mentions is None or digest in self.mentions


@dataclass(frozen=True)
class References:
    """Which blobs the cache's manifests (complete and pending) still name.

    ``named`` comes from manifests that parsed; ``unreadable`` lists the ones that did not,
    each with what it may name, so that deleting a blob fails closed.
    """

    named: frozenset[Digest]
    unreadable: tuple[UnreadableManifest, ...] = ()

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, Digest):
            return False
        return digest in self.named or any(u.may_name(digest) for u in self.unreadable)


@dataclass(frozen=True)
class KeptBlobs:
    """Blobs an unlink would have removed but kept, because ``manifest`` may still name them."""

    manifest: UnreadableManifest
    blobs: tuple[Digest, ...]

    def __str__(self) -> str:
        n = len(self.blobs)
        count, them = (f"{n} blob", "it") if n == 1 else (f"{n} blobs", "them")
        u = self.manifest
        if u.is_directory:
            what = f"the manifests in {u.path} cannot be listed ({u.reason}) and may name {them}"
        elif u.mentions is None:
            what = f"the manifest {u.path} cannot be read ({u.reason}) and may name {them}"
        else:
            what = f"the manifest {u.path} cannot be parsed ({u.reason}) and names {them}"
        return f"kept {count}: {what}"


@dataclass(frozen=True)
class UnlinkResult:
    removed: tuple[Digest, ...]
    freed_bytes: int
    # One entry per unreadable manifest that kept blobs of the removed model.
    kept: tuple[KeptBlobs, ...] = ()


# Published blobs are read-only: the mount links to them, and a write through a
# link must not change a verified blob (Ollama replaces blobs by rename, never in place).
BLOB_MODE = 0o444
XATTR_DIGEST = "user.modelfs.digest"
XATTR_MEDIA_TYPE = "user.modelfs.media_type"
# How reads of a file are checked (computed on request; not set on blob files).
XATTR_VERIFY = "user.modelfs.verify"


class BlobCache:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.state_dir = self.root / STATE_DIRNAME
        self.partial_dir = self.state_dir / "partial"
        self.pending_dir = self.state_dir / "manifests"
        # Models the mount fetched (not created or pulled): the ones eviction may remove.
        # One empty file per tag; its mtime is when the mount last used the model.
        self.lazy_dir = self.state_dir / "lazy"
        self.tmp_dir = self.state_dir / "tmp"
        # Chunk indexes of blobs verified whole here: a blob read again is lazy and verified.
        self.index_dir = self.state_dir / "indexes"
        # Marks of the manifests of folder models created with --no-chunk-index
        # (commands/folderstore.py; ``unindexed``): they go with the last manifest of their
        # digest (``unlink``), or, left behind, by ``orphans.collect``.
        self.unindexed_dir = self.state_dir / "unindexed"
        # The marks this BlobCache wrote whose manifest it has not written yet.
        self._unindexed_owned: set[str] = set()

    def prepare(self) -> None:
        """Create the layout, make ``.modelfs/`` private (an existing cache too); clear temp
        files left by processes that are gone."""
        try:
            for d in (self.blobs_dir, self.manifests_dir):
                d.mkdir(parents=True, exist_ok=True)
            for d in (self.partial_dir, self.pending_dir, self.tmp_dir):
                self.private_mkdir(d)
        except OSError as e:
            raise os_error(e, f"creating the cache at {self.root}") from None
        self.tighten_state()
        if not os.access(self.root, os.W_OK):
            raise CacheError(f"the cache {self.root} is not writable")
        # What crashed or removed processes left in partial/ (scratch files, partials no model
        # names, partials of blobs since published): the one set of rules eviction uses too.
        orphans.collect(self)
        for entry in self.tmp_dir.iterdir():
            pid = entry.name.partition("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    entry.unlink()

    # -- modelfs's own state: private ---------------------------------------------------------

    def is_state(self, path: Path) -> bool:
        """Whether ``path`` is modelfs's own state (under ``.modelfs/``), private to the owner."""
        return path == self.state_dir or self.state_dir in path.parents

    def private_mkdir(self, path: Path) -> None:
        """Create ``path`` (and its parents up to ``.modelfs/``) mode 0700 whatever the umask."""
        missing = []
        p = path
        while not p.is_dir():
            missing.append(p)
            if p == self.state_dir or self.state_dir not in p.parents:
                break
            p = p.parent
        for d in reversed(missing):
            if not d.parent.is_dir():
                d.parent.mkdir(parents=True, exist_ok=True)
            try:
                d.mkdir(mode=STATE_DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(d, STATE_DIR_MODE)

    def tighten_state(self) -> None:
        """Take group and other permissions off everything under ``.modelfs/``: a cache made by
        an older modelfs, or under a umask of 022, left its lock files open to every user."""

        def tighten(path: str, mode: int) -> None:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & ~mode:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & mode)

        tighten(str(self.state_dir), STATE_DIR_MODE)
        for top, dirs, files in os.walk(self.state_dir):
            for d in dirs:
                tighten(os.path.join(top, d), STATE_DIR_MODE)
            for f in files:
                tighten(os.path.join(top, f), STATE_FILE_MODE)

    # -- temp files and atomic writes ---------------------------------------------------------

    def temp_path(self) -> Path:
        return self.tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}"

    def atomic_write(self, target: Path, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``target`` so that a crash leaves either the old file or the new one.

        ``mode`` is for ``blobs/`` and ``manifests/`` (Ollama's); state is always 0600."""
        tmp = self.temp_path()
        try:
            if self.is_state(target):
                mode = STATE_FILE_MODE
                self.private_mkdir(target.parent)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise os_error(e, f"writing {target.name}") from None

    # -- blobs ----------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.filename

    def blob_size(self, digest: Digest) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except OSError:
            return None

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        found = self.blob_size(digest)
        return found is not None and (size is None or found == size)

    def label_blob(self, digest: Digest, media_type: str) -> None:
        """Best effort: put the mount's xattrs on a blob file, for readers that reach it by a link.

        A filesystem without user xattrs (or a blob we may not change) is fine:
        the digest is in the file's name anyway.
        """
        path = self.blob_path(digest)
        labels = {XATTR_DIGEST: str(digest), XATTR_MEDIA_TYPE: media_type, XATTR_VERIFY: "complete"}
        try:
            for key, value in labels.items():
                try:
                    if os.getxattr(path, key) == value.encode():
                        continue
                except OSError as e:
                    if e.errno != errno.ENODATA:
                        raise
                os.setxattr(path, key, value.encode())
        except OSError as e:
            log.debug("cannot label blob %s: %s", digest.short, e)

    def open_blob(self, digest: Digest) -> int | None:
        try:
            return os.open(self.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise os_error(e, f"opening blob {digest.short}") from None

    def store_bytes(self, data: bytes, digest: Digest) -> None:
        """Publish a small blob held in memory after checking it hashes to ``digest``."""
        if Digest.of_bytes(data) != digest:
            raise DigestMismatch(f"blob {digest} does not match its digest")
        self.atomic_write(self.blob_path(digest), data, BLOB_MODE)

    def publish_file(self, path: Path, digest: Digest) -> None:
        """Rename a complete, verified, fsynced file into ``blobs/``."""
        try:
            os.chmod(path, BLOB_MODE)
            os.replace(path, self.blob_path(digest))
            fsync_dir(self.blobs_dir)
        except OSError as e:
            raise os_error(e, f"publishing blob {digest.short}") from None

    def import_file(
        self,
        src: Path,
        chunk_bytes: int,
        on_progress: Callable[[int], None] | None = None,
        chunk_algorithm: str = DEFAULT_CHUNK_ALGORITHM,
    ) -> ImportedBlob:
        """Copy a local file into ``blobs/``, hashing it whole (sha256) and per chunk on the way."""
        tmp = self.temp_path()
        whole = hashlib.sha256()
        chunk_hashes: list[bytes] = []
        size = 0
        try:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                while True:
                    data = fin.read(chunk_bytes)
                    if not data:
                        break
                    whole.update(data)
                    chunk_hashes.append(chunk_hash(chunk_algorithm, data))
                    fout.write(data)
                    size += len(data)
                    if on_progress:
                        on_progress(size)
                fout.flush()
                os.fsync(fout.fileno())
            digest = Digest(whole.hexdigest())
            if self.has_blob(digest, size):
                tmp.unlink()
            else:
                self.publish_file(tmp, digest)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if e.filename == str(src) or isinstance(e, FileNotFoundError | IsADirectoryError):
                raise CacheError(f"cannot read {src}: {e.strerror}") from None
            raise os_error(e, f"importing {src}") from None
        return ImportedBlob(digest, size, tuple(chunk_hashes), chunk_algorithm)

    # -- partial blobs (data and state files are owned by modelfs.blobs.partial) ----------------------

    def partial_path(self, digest: Digest) -> Path:
        return self.partial_dir / digest.filename

    def local_index_path(self, digest: Digest) -> Path:
        return self.index_dir / f"{digest.filename}.json"

    def save_local_index(self, digest: Digest, raw: bytes) -> None:
        self.atomic_write(self.local_index_path(digest), raw)

    def load_local_index(self, digest: Digest, limit: int) -> bytes | None:
        """The local chunk index of ``digest`` (None if there is none, or it is over ``limit``)."""
        try:
            with open(self.local_index_path(digest), "rb") as f:
                raw = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read the local chunk index of blob %s: %s", digest.short, e)
            return None
        return raw if len(raw) <= limit else None

    # -- marks kept per manifest digest (``unindexed``) ---------------------------------------

    def unindexed_path(self, digest: Digest) -> Path:
        """Where an older modelfs kept the mark of manifest ``digest`` (one file per digest)."""
        return self.unindexed_dir / digest.filename

    def write_unindexed_mark(self, digest: Digest) -> None:
        """Mark manifest ``digest`` as made without a chunk index, before the manifest is
        written: a mark of its own, naming this process, this ``BlobCache``'s until it writes
        the manifest (``write_manifest``); while this process runs nobody else removes it."""
        unindexed.write(self, digest, self._unindexed_owned)

    def has_unindexed_mark(self, digest: Digest) -> bool:
        return unindexed.present(self, digest)

    def clear_unindexed_marks(self, digest: Digest) -> None:
        """Manifest ``digest`` was made again with a chunk index: remove its marks (but the
        one of another writer still making it)."""
        try:
            unindexed.clear(self, digest, self._unindexed_owned)
        except OSError as e:
            raise os_error(e, f"creating {digest.short}") from None

    def drop_unindexed_mark(self, digest: Digest) -> None:
        """Remove the ``--no-chunk-index`` marks of manifest ``digest`` unless a manifest of the
        cache (complete or pending) still has that digest (one that cannot be read may) or
        another writer is still at work on it; this ``BlobCache``'s own marks (a layout pushed
        and kept under no name) go too. Marks left behind go by ``orphans.collect``."""
        unindexed.remove_unheld(self, digest, self._unindexed_owned)

    def manifest_digests(self) -> frozenset[Digest] | None:
        """The digests of every manifest file of the cache (complete and pending); None when
        one cannot be read, or a directory listed: it may have any digest."""
        held: set[Digest] = set()
        for base in (self.manifests_dir, self.pending_dir):
            for path, listing_error in _manifest_paths(base):
                if listing_error is not None:
                    return None
                try:
                    raw = _read_manifest_file(path)
                except OSError:
                    return None
                if raw is not None:
                    held.add(Digest.of_bytes(raw))
        return frozenset(held)

    def state_path(self, digest: Digest) -> Path:
        return self.partial_dir / f"{digest.filename}.state"

    def lock_path(self, digest: Digest) -> Path:
        return self.partial_dir / f"{digest.filename}.lock"

    def lock_blob(self, digest: Digest) -> int | None:
        """Hold the blob's partial alone (no modelfs process uses it: ``sharing``); fd or None.

        Closing the fd lets it go."""
        path = self.lock_path(digest)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
        except OSError as e:
            raise os_error(e, f"locking blob {digest.short}") from None
        try:
            if not lock_exclusive(fd):
                os.close(fd)
                return None
        except OSError as e:
            os.close(fd)
            raise os_error(e, f"locking blob {digest.short}") from None
        return fd

    def discard_partial(self, digest: Digest) -> None:
        for p in (self.state_path(digest), self.partial_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def remove_partial(self, digest: Digest) -> bool:
        """Remove the blob's partial (data, state and lock file) unless a modelfs process uses
        it; True if nothing of it is left. Kept too when that cannot be known (a filesystem
        without record locks): ``rm`` and eviction go on without it."""
        try:
            lock = self.lock_blob(digest)
        except CacheError as e:
            log.debug("keeping the partial of blob %s: %s", digest.short, e)
            return False
        if lock is None:
            return False
        try:
            self.discard_partial(digest)
            with contextlib.suppress(OSError):
                unlink_locked(lock, self.lock_path(digest))
        finally:
            os.close(lock)
        return True

    def partial_digests(self) -> dict[Digest, int]:
        """Every blob with something in ``partial/`` (data, state, lock or scratch files), and
        the bytes those files take on disk."""
        out: dict[Digest, int] = {}
        try:
            entries = list(os.scandir(self.partial_dir))
        except OSError:
            return out
        for entry in entries:
            m = _PARTIAL_NAME_RE.match(entry.name)
            if m is None:
                continue
            digest = Digest(m.group(1))
            with contextlib.suppress(OSError):
                out[digest] = out.get(digest, 0) + entry.stat(follow_symlinks=False).st_blocks * 512
        return out

    # -- manifests --------------------------------------------------------------------------

    def _base(self, pending: bool) -> Path:
        return self.pending_dir if pending else self.manifests_dir

    def find_manifest(self, name: Name, *, pending: bool = False) -> Path | None:
        """The manifest file of ``name``, matching each path part case-insensitively."""
        path = self._base(pending)
        for part in name.parts:
            exact = path / part
            if exact.exists():
                path = exact
                continue
            try:
                matches = sorted(e for e in os.listdir(path) if e.lower() == part.lower())
            except OSError:
                return None
            if not matches:
                return None
            path = path / matches[0]
        return path if path.is_file() else None

    def _target(self, name: Name, pending: bool) -> Path:
        # Reuse the casing already on disk so one model never has two manifests.
        existing = self.find_manifest(name, pending=pending)
        if existing is not None:
            return existing
        return safe_join(self._base(pending), *name.parts)

    def read_manifest(self, name: Name, *, pending: bool = False) -> bytes | None:
        path = self.find_manifest(name, pending=pending)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as e:
            raise os_error(e, f"reading the manifest of {name}") from None

    def load_manifest(self, name: Name) -> tuple[Manifest, bool] | None:
        """The cached manifest of ``name`` and whether it is complete; pending ones second."""
        for pending in (False, True):
            raw = self.read_manifest(name, pending=pending)
            if raw is None:
                continue
            try:
                return parse_manifest(raw), not pending
            except ManifestInvalid as e:
                log.warning("ignoring cached manifest of %s: %s", name, e)
        return None

    def write_manifest(self, name: Name, raw: bytes, *, pending: bool = False) -> None:
        self.atomic_write(self._target(name, pending), raw)
        # The manifest landed: the marks written for it are its own now.
        if self._unindexed_owned and unindexed.settle(
            self, Digest.of_bytes(raw), self._unindexed_owned
        ):
            with contextlib.suppress(OSError):
                fsync_dir(self.unindexed_dir)
        if not pending:
            self.remove_manifest(name, pending=True)

    def remove_manifest(self, name: Name, *, pending: bool = False) -> bool:
        path = self.find_manifest(name, pending=pending)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise os_error(e, f"removing the manifest of {name}") from None
        # Like Ollama, drop directories the removal left empty (but never the base).
        base = self._base(pending)
        parent = path.parent
        while parent != base and base in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    # -- models fetched through the mount (evictable) -------------------------------------

    def mark_lazy(self, name: Name) -> None:
        """Record that the mount fetched ``name`` (or refresh when it was last used)."""
        path = safe_join(self.lazy_dir, *(p.lower() for p in name.parts))
        try:
            self.private_mkdir(path.parent)
            path.touch(mode=STATE_FILE_MODE)
        except OSError as e:
            raise os_error(e, f"marking {name} as fetched by the mount") from None

    def unmark_lazy(self, name: Name) -> None:
        """``name`` was created, pulled or removed on purpose: never evict it."""
        with contextlib.suppress(OSError):
            safe_join(self.lazy_dir, *(p.lower() for p in name.parts)).unlink()

    def lazy_models(self) -> list[tuple[float, Name]]:
        """(last used, name) of every model the mount fetched, least recently used first.

        Models used in the same instant (marks touched within one tick of the filesystem's
        clock) come by name, so the order is the same at every check.
        """
        out = []
        for host in _subdirs(self.lazy_dir):
            for ns in _subdirs(host):
                for model in _subdirs(ns):
                    for tag in _files(model):
                        try:
                            name = from_parts(host.name, ns.name, model.name, tag.name)
                            out.append((tag.stat().st_mtime, name))
                        except (NameInvalid, OSError):
                            continue
        return sorted(out, key=lambda used: (used[0], used[1].key))

    def usage_bytes(self) -> int:
        """Disk used by blobs and partial blobs (allocated blocks, so sparse files count right)."""
        total = 0
        for d in (self.blobs_dir, self.partial_dir):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
        return total

    def iter_models(self) -> Iterator[CachedModel]:
        """Every model with a manifest in the cache: complete ones, then pending ones."""
        for pending in (False, True):
            base = self._base(pending)
            for host in _subdirs(base):
                for ns in _subdirs(host):
                    for model in _subdirs(ns):
                        try:
                            tags = sorted(model.iterdir())
                        except OSError:
                            continue
                        for tag in tags:
                            if not tag.is_file():
                                continue
                            try:
                                name = from_parts(host.name, ns.name, model.name, tag.name)
                            except NameInvalid:
                                continue
                            yield CachedModel(name, tag, not pending)

    def referenced_blobs(self) -> References:
        """The blobs every manifest in the cache names, failing closed.

        Every file at tag depth counts, whatever its name. One that does not parse may still be
        what Ollama (or a newer modelfs) reads: each digest in its bytes counts as named. One
        that cannot be read, or a directory that cannot be listed, may name any blob.
        """
        named: set[Digest] = set()
        unreadable: list[UnreadableManifest] = []
        for base in (self.manifests_dir, self.pending_dir):
            for path, listing_error in _manifest_paths(base):
                if listing_error is not None:
                    why = listing_error.strerror or str(listing_error)
                    unreadable.append(UnreadableManifest(path, why, None, is_directory=True))
                    continue
                try:
                    found = manifest_file_refs(path)
                except OSError as e:
                    unreadable.append(UnreadableManifest(path, e.strerror or str(e), None))
                    continue
                if found is None:
                    continue
                digests, parse_error = found
                if parse_error is None:
                    named.update(digests)
                else:
                    unreadable.append(UnreadableManifest(path, parse_error, digests))
        return References(frozenset(named), tuple(unreadable))

    def unlink(self, name: Name) -> UnlinkResult:
        """Remove ``name``'s manifest, then every blob no other manifest references (``ollama rm``)."""
        loaded = self.load_manifest(name)
        raws = [self.read_manifest(name, pending=pending) for pending in (False, True)]
        removed_any = self.remove_manifest(name) | self.remove_manifest(name, pending=True)
        if not removed_any:
            from modelfs.errors import ModelNotFound

            raise ModelNotFound(f"model {name} is not in the cache at {self.root}")
        self.unmark_lazy(name)
        for raw in raws:
            if raw is not None:
                # Never a mark still being written with its manifest, this process's either.
                unindexed.remove_unheld(self, Digest.of_bytes(raw))
        if loaded is None:
            return UnlinkResult((), 0)
        manifest, _complete = loaded
        still = self.referenced_blobs()
        removed: list[Digest] = []
        kept: dict[UnreadableManifest, list[Digest]] = {}
        freed = 0
        for layer in manifest.blobs:
            if layer.digest in still.named:
                continue
            holders = [u for u in still.unreadable if u.may_name(layer.digest)]
            if holders:
                if self.has_blob(layer.digest) or self.partial_path(layer.digest).exists():
                    for u in holders:
                        kept.setdefault(u, []).append(layer.digest)
                continue
            size = self.blob_size(layer.digest)
            try:
                self.blob_path(layer.digest).unlink()
                removed.append(layer.digest)
                freed += size or 0
            except FileNotFoundError:
                pass
            except OSError as e:
                raise os_error(e, f"removing blob {layer.digest.short}") from None
            # A partial another modelfs process uses stays: ``orphans.collect`` frees it later.
            self.remove_partial(layer.digest)
        return UnlinkResult(
            tuple(removed), freed, tuple(KeptBlobs(u, tuple(d)) for u, d in kept.items())
        )


def _manifest_paths(base: Path) -> Iterator[tuple[Path, OSError | None]]:
    """Every entry at tag depth under ``base`` (valid name or not), sorted; and, with the error,
    every directory on the way that exists but could not be listed."""
    level = [base]
    for _depth in range(MANIFEST_DEPTH):
        below: list[Path] = []
        for d in level:
            try:
                with os.scandir(d) as it:
                    names = sorted(entry.name for entry in it)
            except (FileNotFoundError, NotADirectoryError):
                # Gone since it was listed, or a stray file where a directory would be.
                continue
            except OSError as e:
                yield d, e
                continue
            below.extend(d / n for n in names)
        level = below
    for path in level:
        yield path, None


def manifest_file_refs(path: Path) -> tuple[frozenset[Digest], str | None] | None:
    """The digests a manifest file names, and None or why it does not parse as a manifest.

    None when ``path`` is gone or is not a regular file (nothing a manifest could be).
    Raises OSError when it cannot be read: the caller must then assume it names anything.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat must not hang the unlink.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with open(fd, "rb", closefd=True) as f:
        head = f.read(MAX_MANIFEST_BYTES + 1)
        if len(head) <= MAX_MANIFEST_BYTES:
            try:
                manifest = parse_manifest(head)
                return frozenset(layer.digest for layer in manifest.blobs), None
            except ManifestInvalid as e:
                reason = str(e).removeprefix("invalid manifest: ")
        else:
            reason = f"over the {MAX_MANIFEST_BYTES} byte limit of a manifest"
        found: set[Digest] = set()
        data = head
        while data:
            found.update(
                Digest(m.group(1).lower().decode()) for m in _DIGEST_BYTES_RE.finditer(data)
            )
            more = f.read(SCAN_READ_BYTES)
            data = data[-_SCAN_OVERLAP_BYTES:] + more if more else b""
    return frozenset(found), reason


def _read_manifest_file(path: Path) -> bytes | None:
    """A manifest file's bytes; None when it is gone, not a regular file, or over the
    size of any manifest. Raises OSError when it cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO swapped in
    except FileNotFoundError:
        return None
    with open(fd, "rb", closefd=True) as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    return raw if len(raw) <= MAX_MANIFEST_BYTES else None


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _files(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_file())
    except OSError:
        return []
