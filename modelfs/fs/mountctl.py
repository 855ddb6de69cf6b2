"""The CLI side of mounting: start the daemon detached and wait until the mount is live; unmount.

``modelfs mount`` re-runs itself as ``mount --foreground --ready-fd N`` in a new
session and waits on a pipe: the daemon writes ``ok`` once the kernel has the
mount, or ``error: <reason>``. A mountpoint left dead by a crashed daemon
("Transport endpoint is not connected") is detached first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelfs.errors import MountError
from modelfs.pids import pid_alive

READY_TIMEOUT_SECONDS = 60.0
UMOUNT_WAIT_SECONDS = 30.0
FSTYPE = "fuse.modelfs"
# The daemon's log names every model its owner reads: it is the owner's alone.
LOG_FILE_MODE = 0o600
RUNTIME_DIR_MODE = 0o700
PID_FILE_MODE = 0o600


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    dev: str = ""  # major:minor
    options: tuple[str, ...] = ()  # per-mount options (ro, nosuid …)


def _unescape(path: str) -> str:
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, ch)
    return path


def find_mount(path: str | os.PathLike[str]) -> MountEntry | None:
    """The mount whose mountpoint is ``path`` (the last one, if stacked), from mountinfo."""
    target = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fields, tail = pre.split(), post.split()
                if len(fields) > 5 and len(tail) >= 2 and _unescape(fields[4]) == target:
                    found = MountEntry(
                        target, tail[0], tail[1], fields[2], tuple(fields[5].split(","))
                    )
    except OSError:
        return None
    return found


def is_stale(path: str | os.PathLike[str]) -> bool:
    """A FUSE mount whose daemon is gone. statvfs, not stat: the kernel answers stat from
    cached attributes even after the daemon died, but always asks the daemon for statfs."""
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def _fusermount() -> str:
    for name in ("fusermount3", "fusermount"):
        found = shutil.which(name)
        if found:
            return found
    raise MountError("fusermount3 is not installed (Debian: apt-get install fuse3)")


def _run_fusermount(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_fusermount(), *args], capture_output=True, text=True, check=False, timeout=60
    )


def runtime_dir(*, create: bool = True) -> Path:
    """The directory of this user's pid files and control sockets, checked to be private.

    ``$XDG_RUNTIME_DIR/modelfs``, else ``/run/modelfs`` for root, else ``/tmp/modelfs-<uid>``.
    The last sits in a directory every user can write: another user may have made it first,
    or put a symlink there, to have the daemon write its pid file or bind its socket where
    they choose. So whichever it is, it is used only if it is a directory (not a symlink)
    owned by this user with mode 0700; otherwise a ``MountError`` says what is wrong.
    Missing, it is created (with ``create``) or returned as it is (nothing runs there).
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        path = Path(base) / "modelfs"
    elif os.geteuid() == 0:
        path = Path("/run/modelfs")
    else:
        path = Path(f"/tmp/modelfs-{os.getuid()}")
    if create:
        try:
            if base:
                # The user's own runtime directory: its parents are theirs to make.
                os.makedirs(path.parent, mode=RUNTIME_DIR_MODE, exist_ok=True)
            os.mkdir(path, RUNTIME_DIR_MODE)
            os.chmod(path, RUNTIME_DIR_MODE)  # whatever the umask
        except FileExistsError:
            pass
        except OSError as e:
            raise MountError(
                f"cannot make the runtime directory {path}: {e.strerror or e}"
            ) from None
    try:
        st = os.lstat(path)
    except OSError as e:
        if create or not isinstance(e, FileNotFoundError):
            raise MountError(
                f"cannot use the runtime directory {path}: {e.strerror or e}"
            ) from None
        return path
    _check_runtime_dir(path, st)
    return path


def _check_runtime_dir(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        why = "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})"
    elif stat.S_IMODE(st.st_mode) != RUNTIME_DIR_MODE:
        why = f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    else:
        return
    raise MountError(
        f"the runtime directory {path} {why}: remove it, or set XDG_RUNTIME_DIR to a directory "
        "of your own"
    )


@contextlib.contextmanager
def _runtime_dir_fd() -> Iterator[int]:
    """The runtime directory, open and checked again through the descriptor itself: the pid
    file is written, read and removed relative to it, never through a path someone swapped."""
    path = runtime_dir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_runtime_dir(path, os.fstat(fd))
        yield fd
    finally:
        os.close(fd)


def pidfile(mountpoint: str | os.PathLike[str]) -> Path:
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return runtime_dir(create=False) / f"{key}.pid"


# sockaddr_un's sun_path, with its terminating NUL.
UNIX_PATH_MAX_BYTES = 107


def control_socket(mountpoint: str | os.PathLike[str]) -> Path:
    """Where the daemon of ``mountpoint`` answers ``modelfs status``: next to its pid file."""
    return pidfile(mountpoint).with_suffix(".sock")


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for binding or connecting to ``path``: itself, or, when it is longer than
    a Unix socket address can be, the same file reached through ``/proc/self/fd``."""
    if len(os.fsencode(path)) <= UNIX_PATH_MAX_BYTES:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def write_pidfile(mountpoint: str | os.PathLike[str]) -> Path:
    """Write this process's pid as the daemon of ``mountpoint``: a new file renamed into place,
    so that whatever was at the name (a symlink included) is replaced, never written through."""
    path = pidfile(mountpoint)
    temp = f".{path.name}.{os.getpid()}.tmp"
    with _runtime_dir_fd() as dir_fd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, PID_FILE_MODE, dir_fd=dir_fd)
        try:
            with open(fd, "w", closefd=False) as f:
                f.write(f"{os.getpid()}\n")
        finally:
            os.close(fd)
        try:
            os.replace(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.unlink(temp, dir_fd=dir_fd)
            raise
    return path


def _read_pid(dir_fd: int, name: str) -> int | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return int(os.read(fd, 64).decode().strip())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def remove_pidfile(mountpoint: str | os.PathLike[str]) -> None:
    """Remove the pid file of ``mountpoint`` if it names this process."""
    name = pidfile(mountpoint).name
    with contextlib.suppress(OSError, MountError), _runtime_dir_fd() as dir_fd:
        if _read_pid(dir_fd, name) == os.getpid():
            os.unlink(name, dir_fd=dir_fd)


def _daemon_pid(mountpoint: str | os.PathLike[str]) -> int | None:
    try:
        name = pidfile(mountpoint).name
        with _runtime_dir_fd() as dir_fd:
            return _read_pid(dir_fd, name)
    except (OSError, MountError):
        return None


def prepare_mountpoint(mountpoint: Path, *, allow_non_empty: bool = False) -> str | None:
    """Check the mountpoint; detach a dead modelfs mount. Returns a note for the user, if any.

    A directory with files is refused unless ``allow_non_empty``: the mount would hide them.
    """
    note = None
    if is_stale(mountpoint):
        result = _run_fusermount(["-u", "-z", str(mountpoint)])
        if result.returncode != 0 and is_stale(mountpoint):
            raise MountError(
                f"{mountpoint} is a dead mount and could not be detached: "
                f"{result.stderr.strip() or 'fusermount3 failed'}"
            )
        note = f"detached a dead mount at {mountpoint} (its daemon had died)"
    if not mountpoint.exists():
        raise MountError(f"mountpoint {mountpoint} does not exist")
    if not mountpoint.is_dir():
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    entry = find_mount(mountpoint)
    if entry is not None and entry.fstype == FSTYPE:
        raise MountError(f"{mountpoint} is already a modelfs mount")
    if not allow_non_empty and _has_entries(mountpoint):
        raise MountError(
            f"mountpoint {mountpoint} is not empty (the mount would hide its files); "
            "use --allow-non-empty to mount over them"
        )
    return note


def _has_entries(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is not None
    except OSError:
        return False  # unreadable to us: the mount itself will say what is wrong


def open_log(path: str | os.PathLike[str]) -> int:
    """Open the daemon's log for appending (a file descriptor), creating it mode 0600.

    A log we own that others may read (left by an older modelfs, or created under a umask of
    022) is tightened to 0600 first. Anything else at ``path`` (``/dev/null``, a file of
    another user) is left as it is.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o177:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & LOG_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def start_daemon(argv: list[str], log_path: Path) -> None:
    """Start ``modelfs <argv> --foreground`` detached; return once it reports the mount live."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = open_log(log_path)
    except OSError as e:
        raise MountError(f"cannot open the log file {log_path}: {e.strerror or e}") from None
    r, w = os.pipe()
    with open(log_fd, "ab") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelfs",
                *argv,
                "--foreground",
                "--ready-fd",
                str(w),
                "--log",
                str(log_path),
            ],
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
            # A daemon must not keep the caller's directory busy (and libfuse would
            # otherwise resolve the fsname against it).
            cwd="/",
        )
    os.close(w)
    try:
        message = _read_ready(r, proc)
    finally:
        os.close(r)
    if message == "ok":
        return
    if message.startswith("error: "):
        raise MountError(message[len("error: ") :])
    code = proc.poll()
    raise MountError(
        f"the mount daemon exited (status {code}) before the mount was live; see {log_path}"
    )


def _read_ready(fd: int, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.terminate()
            raise MountError(
                f"the mount daemon did not become ready in {READY_TIMEOUT_SECONDS:.0f}s"
            )
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def signal_ready(fd: int | None, message: str | None) -> None:
    """Tell the waiting parent (and systemd, for Type=notify units) how mounting went."""
    if fd is not None:
        text = "ok\n" if message is None else f"error: {message}\n"
        with contextlib.suppress(OSError):
            os.write(fd, text.encode())
        with contextlib.suppress(OSError):
            os.close(fd)
    if message is None:
        notify_systemd("READY=1")


def notify_systemd(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(state.encode())


# -- the read-only view of blobs/ that links point into (see daemon.enable_links) --------------

# Where a mount made as root binds its read-only view of the cache's blobs/: outside the mount,
# so that umount(8) and fusermount3 -u find nothing mounted inside it, and traversable by every
# user, so that links work for the other users of an allow_other mount whatever the modes of the
# cache's parent directories (/root/.ollama).
BLOBS_VIEWS_DIR = Path("/run/modelfs-blobs")
BLOBS_VIEWS_DIR_MODE = 0o755


def blobs_view_path(mountpoint: str | os.PathLike[str]) -> Path:
    """Where the read-only view of blobs/ for the mount at ``mountpoint`` is bound."""
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return BLOBS_VIEWS_DIR / key


def bind_blobs_view(blobs_dir: Path, mountpoint: Path) -> str | None:
    """Bind ``blobs_dir`` read-only at ``blobs_view_path(mountpoint)``; None if done, else why not.

    A view left by a daemon that was killed is replaced (it may be of another cache).
    """
    if os.geteuid() != 0:
        return "binding needs root"
    target = blobs_view_path(mountpoint)
    try:
        unbind_blobs_view(mountpoint)
        BLOBS_VIEWS_DIR.mkdir(mode=BLOBS_VIEWS_DIR_MODE, exist_ok=True)
        st = os.lstat(BLOBS_VIEWS_DIR)
        # Only root may place what links resolve through.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            return f"{BLOBS_VIEWS_DIR} is not a directory only root can write"
        if stat.S_IMODE(st.st_mode) != BLOBS_VIEWS_DIR_MODE:
            os.chmod(BLOBS_VIEWS_DIR, BLOBS_VIEWS_DIR_MODE)  # a umask of 077 made it
        target.mkdir(mode=BLOBS_VIEWS_DIR_MODE, exist_ok=True)
    except (OSError, MountError) as e:
        return str(e)
    for args in (
        ["mount", "--bind", "-o", "ro", str(blobs_dir), str(target)],
        # util-linux before 2.27 ignores ro on a bind: remount it.
        ["mount", "-o", "remount,bind,ro", str(target)],
    ):
        entry = find_mount(target)
        if entry is not None and "ro" in entry.options:
            return None
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        if result.returncode != 0:
            with contextlib.suppress(MountError):
                unbind_blobs_view(mountpoint)
            return result.stderr.strip() or f"mount exited with {result.returncode}"
    entry = find_mount(target)
    if entry is not None and "ro" in entry.options:
        return None
    with contextlib.suppress(MountError):
        unbind_blobs_view(mountpoint)
    return "the bind mount did not become read-only"


def unbind_blobs_view(mountpoint: str | os.PathLike[str]) -> None:
    """Detach the mount's view of blobs/ if it is bound, and remove its directory.

    Lazily: a model opened or mapped through a link keeps reading after the view is gone.
    """
    target = blobs_view_path(mountpoint)
    while find_mount(target) is not None:
        result = subprocess.run(
            ["umount", "-l", str(target)], capture_output=True, text=True, timeout=30, check=False
        )
        # Someone else may have unmounted it meanwhile (systemd stopping its .mount unit).
        if result.returncode != 0 and find_mount(target) is not None:
            log_line = result.stderr.strip().splitlines()
            raise MountError(
                f"cannot unmount {target}: {log_line[-1] if log_line else 'umount failed'}"
            )
    with contextlib.suppress(OSError):
        target.rmdir()


def umount(mountpoint: Path, *, lazy: bool = False) -> None:
    """Unmount and wait for the daemon to finish saving its state."""
    path = os.path.abspath(mountpoint)
    entry = find_mount(path)
    if entry is None:
        raise MountError(f"{path} is not mounted")
    if entry.fstype != FSTYPE:
        raise MountError(f"{path} is not a modelfs mount (it is {entry.fstype})")
    pid = _daemon_pid(path)
    args = ["-u", "-z", path] if lazy else ["-u", path]
    result = _run_fusermount(args)
    if result.returncode != 0:
        if is_stale(path):
            result = _run_fusermount(["-u", "-z", path])
        if result.returncode != 0:
            why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
            if "busy" in why.lower():
                raise MountError(
                    f"{path} is busy: a process still has a file or directory open there "
                    "(close it, or use --lazy to detach now and unmount when it is closed)"
                )
            raise MountError(f"cannot unmount {path}: {why or 'fusermount3 failed'}")
    if pid is not None and not lazy:
        deadline = time.monotonic() + UMOUNT_WAIT_SECONDS
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    if pid is None or not pid_alive(pid):
        # A daemon that died (a dead mount) left its view of blobs/ bound; a live one (--lazy)
        # unbinds it as it exits.
        unbind_blobs_view(path)
