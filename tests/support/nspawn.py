"""Real systemd 252 in a container, for tests of what ships in ``systemd/``.

PID 1 on the test machine is not systemd, so units, ``mount -a`` and the fstab generator are
tried in a Debian bookworm booted with ``systemd-nspawn``:

- ``rootfs_tarball()`` builds the OS tree once with mmdebstrap (the only step that reaches the
  apt mirror) and caches it as a tarball under ``.cache/systemd/``, keyed by what it includes.
- ``dependency_wheels()`` and ``build_backend_wheels()`` pip-wheel, once, modelfs's dependencies
  (pinned to what ``.venv`` has, so the container runs what the other tiers test) and its build
  backend; ``modelfs_wheel()`` builds modelfs itself from the working tree, offline, every session.
- ``unpack()`` lays the tree out; ``install_modelfs()`` installs the wheels into it with no network:
  ``/opt/modelfs`` (a venv) and ``/usr/local/bin/modelfs``, the unit's default ``MODELFS_BIN``.
  That link is also where an fstab line of type ``fuse.modelfs`` finds the program: mount(8)
  drops ``PATH`` from the helper's environment (util-linux sanitizes it), so mount.fuse3's
  ``/bin/sh -c 'modelfs …'`` searches dash's built-in
  ``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`` — the same whether
  ``mount -a`` runs from a shell or systemd runs a ``.mount`` unit.
- ``Container`` boots the image with ``--volatile=overlay`` (a tmpfs over the read-only tree,
  so every container starts from the same image and leaves nothing on disk), on the host's
  network (the registries the tests start on 127.0.0.1 are reachable), in a cgroup of its own;
  ``run()`` executes a command inside it through ``nsenter``; ``stop()`` powers it off.

Anything the host lacks (root, ``/dev/fuse``, the tools, a mirror for the first build, a
kernel that lets nspawn boot) is an ``Unavailable`` whose message says what, for a skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "systemd"

SUITE = "bookworm"
VARIANT = "apt"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "fuse3", "python3", "python3-venv")
VENV = "/opt/modelfs"
BIN_LINK = "/usr/local/bin/modelfs"
# apt's timers would reach the apt mirror from a test container; nothing else in the image talks
# to the network on its own (no timesyncd, no networkd, no resolved).
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer")
# Restart tests kill a service more often than systemd's default start limit allows.
MANAGER_DROPIN = "[Manager]\nDefaultStartLimitIntervalSec=0\n"

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_SECONDS = 900
WHEEL_SECONDS = 600
INSTALL_SECONDS = 300
BOOT_SECONDS = 90
COMMAND_SECONDS = 120
POWEROFF_SECONDS = 60
KILL_SECONDS = 15
POLL_SECONDS = 0.05


_serial = itertools.count()


class Unavailable(Exception):
    """This machine cannot run the systemd tier; the message says why (a skip reason)."""


class BootFailed(Exception):
    """A container did not come up; the message carries nspawn's output."""


# -- the host ---------------------------------------------------------------------------------


def check_host() -> None:
    """Raise Unavailable unless this machine can build and boot a container with FUSE."""
    if os.geteuid() != 0:
        raise Unavailable("the systemd tier needs root (systemd-nspawn, FUSE)")
    if not os.path.exists("/dev/fuse"):
        raise Unavailable("no /dev/fuse on this machine")
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
    ):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (apt-get install {package})")
    if not _cgroup_dirs():
        raise Unavailable("no writable cgroup hierarchy for containers under /sys/fs/cgroup")


# systemd-nspawn creates these on the host and never removes them.
RUNTIME_DIRS = (
    Path("/run/systemd/nspawn/propagate"),
    Path("/run/systemd/nspawn/locks"),
    Path("/run/systemd/nspawn"),
    Path("/run/systemd"),
)


@contextlib.contextmanager
def runtime_dirs_removed() -> Iterator[None]:
    """Remove afterwards the (empty) runtime directories nspawn made that were not there."""
    new = [d for d in RUNTIME_DIRS if not d.exists()]
    try:
        yield
    finally:
        for d in new:
            with contextlib.suppress(OSError):
                d.rmdir()


# -- the OS tree ------------------------------------------------------------------------------


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def rootfs_tarball(cache: Path = CACHE_DIR) -> Path:
    """The Debian tree as a tarball, built by mmdebstrap the first time (~30 s; the one step
    that reaches the apt mirror), then reused."""
    tarball = cache / f"rootfs-{SUITE}-{_key(SUITE, VARIANT, PACKAGES)}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.partial")
    try:
        result = subprocess.run(
            [
                "mmdebstrap",
                f"--variant={VARIANT}",
                "--format=tar",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(partial),
            ],
            capture_output=True,
            text=True,
            timeout=BUILD_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        partial.unlink(missing_ok=True)
        raise Unavailable(
            f"mmdebstrap took over {BUILD_SECONDS} s (is the apt mirror reachable?)"
        ) from e
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise Unavailable(
            "mmdebstrap could not build the container's OS tree (is the apt mirror reachable?): "
            + _last_lines(result.stderr)
        )
    os.replace(partial, tarball)
    return tarball


# -- wheels -----------------------------------------------------------------------------------


def _pyproject() -> dict:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def pinned_dependencies() -> list[str]:
    """``name==version`` for modelfs's dependencies and theirs, as this interpreter (``.venv``)
    has them installed."""
    environment: dict[str, str] = dict(default_environment())
    todo = [(Requirement(r), "") for r in _pyproject()["project"]["dependencies"]]
    pins: dict[str, str] = {}
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError as e:
            raise RuntimeError(
                f"{req.name} is not installed in .venv (run scripts/setup.sh)"
            ) from e
        pins[name] = dist.version
        for text in dist.requires or []:
            for wanted in ("", *req.extras):
                todo.append((Requirement(text), wanted))
    return sorted(f"{name}=={version}" for name, version in pins.items())


def _pip_wheel(
    args: Sequence[str], dest: Path, what: str, error: type[Exception] = Unavailable
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "-w",
            str(dest),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=WHEEL_SECONDS,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
    )
    if result.returncode != 0:
        raise error(f"pip could not build {what}: {_last_lines(result.stderr)}")


def _cached_wheels(cache: Path, label: str, args: Sequence[str], what: str) -> Path:
    dest = cache / f"wheels-{label}-{_key(sys.version_info[:2], *args)}"
    if dest.is_dir():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=cache))
    try:
        _pip_wheel(args, partial, what)
        # Another session may have finished the same build meanwhile: keep either.
        with contextlib.suppress(OSError):
            os.rename(partial, dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def dependency_wheels(cache: Path = CACHE_DIR) -> Path:
    """Wheels of modelfs's dependencies (pyfuse3 built from source), built once."""
    return _cached_wheels(
        cache, "deps", ["--no-deps", *pinned_dependencies()], "modelfs's dependencies"
    )


def build_backend_wheels(cache: Path = CACHE_DIR) -> Path:
    """Wheels of the build backend, so the per-session build of modelfs needs no index."""
    requires = _pyproject()["build-system"]["requires"]
    return _cached_wheels(cache, "build", list(requires), "the build backend")


def modelfs_wheel(dest: Path, backend: Path) -> Path:
    """A wheel of modelfs from the working tree, built without reaching any index."""
    _pip_wheel(
        ["--no-deps", "--no-index", "--find-links", str(backend), str(REPO_ROOT)],
        dest,
        "modelfs from the working tree",
        RuntimeError,
    )
    (wheel,) = dest.glob("modelfs-*.whl")
    return wheel


# -- the image --------------------------------------------------------------------------------

_INSTALL = f"""set -eu
python3 -m venv {VENV}
{VENV}/bin/pip install -q --disable-pip-version-check --no-index --find-links /wheels/deps \\
    --find-links /wheels/modelfs modelfs
ln -sf {VENV}/bin/modelfs {BIN_LINK}
{BIN_LINK} --help >/dev/null
"""


def unpack(tarball: Path, root: Path) -> None:
    """The tree at ``root``, with what would reach the network masked and the manager's
    drop-in in place."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)],
        check=True,
        capture_output=True,
        timeout=INSTALL_SECONDS,
    )
    for unit in MASKED_UNITS:
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    dropin = root / "etc/systemd/system.conf.d/50-modelfs-tests.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(MANAGER_DROPIN)


def install_modelfs(root: Path, deps: Path, modelfs_wheels: Path) -> None:
    """Install modelfs from the wheels into the tree at ``root``, in a container with no
    network at all."""
    with _own_cgroup("modelfs-install") as cgroup_procs:
        result = subprocess.run(
            [
                *_in_cgroup(cgroup_procs),
                "systemd-nspawn",
                "--quiet",
                "-D",
                str(root),
                "--register=no",
                "--keep-unit",
                "--private-network",
                f"--bind-ro={deps}:/wheels/deps",
                f"--bind-ro={modelfs_wheels}:/wheels/modelfs",
                "/bin/sh",
                "-c",
                _INSTALL,
            ],
            capture_output=True,
            text=True,
            timeout=INSTALL_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    if result.returncode != 0:
        raise RuntimeError(
            "installing modelfs in the container failed: "
            + _last_lines(result.stderr + result.stdout, 20)
        )


# -- cgroups ----------------------------------------------------------------------------------


def _cgroup_dirs() -> list[Path]:
    """Where this process sits in the hierarchies systemd uses (cgroup2 and, on a hybrid host,
    name=systemd), as directories containers can be created under."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            point = Path(fields[4])
            if fstype == "cgroup2":
                mounts.setdefault("", point)
            elif fstype == "cgroup" and "name=systemd" in options.split(","):
                mounts.setdefault("name=systemd", point)
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            point = mounts.get(controllers)
            if point is not None and os.access(point / path.lstrip("/"), os.W_OK):
                dirs.append(point / path.lstrip("/"))
    return dirs


@contextlib.contextmanager
def _own_cgroup(name: str) -> Iterator[list[Path]]:
    """Fresh cgroups (one per hierarchy) for one nspawn: it puts ``payload`` and ``supervisor``
    beside itself, and two containers must not share them. Removed afterwards, deepest first."""
    # The same path in every hierarchy: on a hybrid host nspawn mirrors its cgroup2 path into
    # name=systemd, and would otherwise create a second one there.
    unique = f"{name}-{os.getpid()}-{next(_serial)}"
    made = []
    try:
        for parent in _cgroup_dirs():
            (parent / unique).mkdir()
            made.append(parent / unique)
        yield [d / "cgroup.procs" for d in made]
    finally:
        for d in made:
            _remove_cgroup(d)


def _remove_cgroup(top: Path) -> None:
    deadline = time.monotonic() + KILL_SECONDS
    while True:
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        try:
            for d in [*dirs, top]:
                if d.exists():
                    d.rmdir()
            return
        except OSError:
            # The kernel empties a cgroup a moment after its last process is reaped.
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL_SECONDS)


def _in_cgroup(procs: Sequence[Path]) -> list[str]:
    """A prefix that moves the command into ``procs`` cgroups, then execs it."""
    script = (
        'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n-1)); done; exec "$@"'
    )
    return ["/bin/sh", "-c", script, "sh", str(len(procs)), *map(str, procs)]


# -- a booted container -----------------------------------------------------------------------


class Container:
    """One boot of ``image``: a fresh tmpfs overlay over it, the host's network, /dev/fuse.

    ``files`` are placed before boot (read-only binds, for what the generators read, such as
    /etc/fstab); everything else is written after boot with ``write()``.
    """

    def __init__(
        self,
        image: Path,
        name: str,
        workdir: Path,
        *,
        files: Mapping[str, str] | None = None,
    ) -> None:
        self.image = image
        self.name = name
        self.workdir = workdir
        self.files = dict(files or {})
        self.pid = 0  # the container's PID 1, as the host sees it
        self.state = ""  # what ``systemctl is-system-running --wait`` said
        self._proc: subprocess.Popen[bytes] | None = None
        self._cgroup: contextlib.ExitStack | None = None
        self._log = workdir / f"{name}.nspawn.log"

    # life

    def start(self) -> Container:
        binds = []
        for i, (path, text) in enumerate(self.files.items()):
            host = self.workdir / f"{self.name}.file{i}"
            host.write_text(text)
            binds.append(f"--bind-ro={host}:{path}")
        self._cgroup = contextlib.ExitStack()
        procs = self._cgroup.enter_context(_own_cgroup(f"modelfs-{self.name}"))
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    *_in_cgroup(procs),
                    "systemd-nspawn",
                    "-D",
                    str(self.image),
                    "--boot",
                    "--volatile=overlay",
                    "--register=no",
                    "--keep-unit",
                    "-M",
                    self.name,
                    "--bind=/dev/fuse",
                    "--console=passive",
                    *binds,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.pid = self._find_init()
            deadline = time.monotonic() + BOOT_SECONDS
            while True:
                # No bus, then "offline", until the manager's private bus socket is up.
                wait = self.run("systemctl", "is-system-running", "--wait", check=False)
                self.state = wait.stdout.strip()
                if self.state not in ("", "offline") or time.monotonic() > deadline:
                    break
                time.sleep(POLL_SECONDS)
            if self.state not in ("running", "degraded"):
                raise BootFailed(
                    f"{self.name} booted to {self.state!r} ({wait.stderr.strip()}): "
                    + self.log_tail()
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _find_init(self) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + BOOT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BootFailed(
                    f"systemd-nspawn exited ({self._proc.returncode}) before booting: "
                    + self.log_tail()
                )
            for pid in _children(self._proc.pid):
                # nspawn's inner child is PID 1 a moment before it becomes systemd.
                if _innermost_pid(pid) == 1 and _comm(pid) == "systemd":
                    return pid
            time.sleep(POLL_SECONDS)
        raise BootFailed(f"no PID 1 under systemd-nspawn after {BOOT_SECONDS} s: {self.log_tail()}")

    def stop(self) -> None:
        """Power off (the units stop as they would on a real shutdown), then make sure."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                if self.pid:
                    with contextlib.suppress(subprocess.SubprocessError):
                        self.run("systemctl", "poweroff", check=False, timeout=KILL_SECONDS)
                try:
                    proc.wait(POWEROFF_SECONDS)
                except subprocess.TimeoutExpired:
                    # Killing PID 1 ends every process in the container's PID namespace.
                    with contextlib.suppress(ProcessLookupError):
                        if self.pid:
                            os.kill(self.pid, signal.SIGKILL)
                    proc.kill()
                    proc.wait(KILL_SECONDS)
        finally:
            self.pid = 0
            if self._cgroup is not None:
                self._cgroup.close()
                self._cgroup = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return _last_lines(self._log.read_text(errors="replace"), lines)
        except FileNotFoundError:
            return "(no output)"

    # inside

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = COMMAND_SECONDS,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces, a clean environment)."""
        assert self.pid, "the container is not running"
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "env", "-i", f"PATH={PATH}", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the container, {' '.join(argv)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-c", script, check=check)

    def path(self, path: str) -> Path:
        """``path`` inside the container, as the host reaches it (through PID 1's root)."""
        assert self.pid, "the container is not running"
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def mounts(self) -> list[MountEntry]:
        """The container's mount table, as its PID 1 sees it."""
        return [
            MountEntry.parse(line)
            for line in self.path("/proc/1/mountinfo").read_text().splitlines()
        ]

    def mount_at(self, point: str) -> MountEntry | None:
        """The mount on top at ``point``; None if nothing is mounted there."""
        found = [m for m in self.mounts() if m.point == point]
        return found[-1] if found else None

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def wait_for(self, what: str, condition: Callable[[], bool], seconds: float = 60) -> None:
        """Poll ``condition()`` until true; fail naming ``what`` after ``seconds``."""
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"after {seconds} s still not: {what}")
            time.sleep(POLL_SECONDS * 4)


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/<pid>/mountinfo."""

    mount_id: int
    point: str
    fstype: str
    source: str
    options: str

    @classmethod
    def parse(cls, line: str) -> MountEntry:
        left, _, right = line.partition(" - ")
        fields, (fstype, source, *_) = left.split(), right.split()
        return cls(int(fields[0]), fields[4], fstype, source, fields[5])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def _innermost_pid(pid: int) -> int | None:
    """The process's PID in its own (innermost) PID namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except FileNotFoundError:
        pass
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _last_lines(text: str, lines: int = 5) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


# -- modelfs in a container -------------------------------------------------------------------

UNITS_DIR = REPO_ROOT / "systemd"
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".mount",
    ".automount",
    ".target",
    ".timer",
    ".path",
    ".slice",
)
# Log lines from the daemon that fail a test unless it expects them.
PROBLEM_PRIORITY = "warning"


def install_units(container: Container) -> list[str]:
    """Copy the unit files that ship in ``systemd/`` into /etc/systemd/system (the tests run
    what ships, unchanged) and reload the manager; returns their names."""
    names = []
    for unit in sorted(UNITS_DIR.iterdir()):
        if unit.is_file() and unit.suffix in UNIT_SUFFIXES:
            container.write(f"/etc/systemd/system/{unit.name}", unit.read_text())
            names.append(unit.name)
    container.run("systemctl", "daemon-reload")
    return names


def daemon_problems(container: Container) -> list[str]:
    """What the daemon logged to the journal at WARNING or worse (tracebacks included: they
    come with an ERROR), as ``journalctl -o cat`` prints it."""
    out = container.run(
        "journalctl", "-q", "-o", "cat", "-p", PROBLEM_PRIORITY, "SYSLOG_IDENTIFIER=modelfs"
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def journal(container: Container, unit: str) -> str:
    """Everything the journal has for ``unit`` (the manager's lines and the daemon's)."""
    return container.run("journalctl", "-q", "--no-pager", "-u", unit).stdout
