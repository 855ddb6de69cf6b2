"""A real modelfs mount, started the way a user starts it (``modelfs mount``), torn down always."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

MOUNT_SECONDS = 60.0
# Log lines a test did not ask for fail it (see Mount.unexpected_log_lines).
PROBLEM_RE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback \(most recent call last\)")


def modelfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelfs", *args]


def run_modelfs(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        modelfs_cmd(*args),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"modelfs {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error line; fails unless the command failed with exactly one ``modelfs:``
    line, last (progress lines may come first), and no traceback."""
    assert result.returncode == 1, result.stderr
    errors = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("modelfs: ")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


class Mount:
    def __init__(
        self,
        root: Path,
        *,
        options: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        cache: Path | None = None,
        debug: bool = False,
    ):
        self.root = root
        self.mountpoint = root / "mnt"
        self.cache = cache or root / "cache"
        self.log_path = root / "modelfs.log"
        self.options = options
        self.debug = debug  # the daemon logs at debug level (``modelfs --debug mount``)
        self.env = dict(env or os.environ)
        # Keep pid files of test mounts out of /run.
        self.env.setdefault("XDG_RUNTIME_DIR", str(root / "run"))
        self.expected_log: list[re.Pattern[str]] = []
        self._log_offset = 0
        self._killed: set[int] = set()  # daemons this test killed on purpose (``kill``)
        # Set by ``stop`` when the daemon went without its own clean-up: it crashed (a
        # segfault says nothing in its log), or did not exit in time and was killed.
        self.unclean: str | None = None

    def start(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        (self.root / "run").mkdir(exist_ok=True)
        args = [
            *(["--debug"] if self.debug else []),
            "mount",
            str(self.mountpoint),
            "--cache",
            str(self.cache),
            "--log",
            str(self.log_path),
        ]
        for o in self.options:
            args += ["-o", o]
        run_modelfs(*args, env=self.env, timeout=MOUNT_SECONDS)
        assert os.path.ismount(self.mountpoint), "modelfs mount returned but nothing is mounted"
        return self

    def pid(self) -> int | None:
        run = Path(self.env["XDG_RUNTIME_DIR"]) / "modelfs"
        for p in run.glob("*.pid") if run.exists() else ():
            with contextlib.suppress(ValueError, OSError):
                return int(p.read_text())
        return None

    def stop(self) -> None:
        pid = self.pid()
        if os.path.ismount(self.mountpoint) or _stale(self.mountpoint):
            result = run_modelfs(
                "umount", str(self.mountpoint), env=self.env, check=False, timeout=60
            )
            if result.returncode != 0:
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(self.mountpoint)],
                    check=False,
                    capture_output=True,
                )
        if pid is not None:
            _wait_gone(pid, 15.0)
            # A daemon that exits removes its pid file and control socket last.
            if pid not in self._killed and self.pid() == pid:
                self.unclean = (
                    f"daemon {pid} of {self.mountpoint} went without removing its pid file and"
                    " control socket: it crashed (see dmesg) or did not exit within 15 s"
                )

    def kill(self) -> None:
        """kill -9 the daemon: the mount is left dead, as after a crash."""
        pid = self.pid()
        assert pid is not None, "no daemon pid"
        self._killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 15.0)

    def expect_log(self, pattern: str) -> None:
        self.expected_log.append(re.compile(pattern))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def unexpected_log_lines(self) -> list[str]:
        lines = self.log_text().splitlines()
        bad = []
        for i, line in enumerate(lines):
            if PROBLEM_RE.search(line) and not any(p.search(line) for p in self.expected_log):
                bad.append(
                    "\n".join(lines[i : i + 12])
                    if "Traceback" in line or " ERROR " in line
                    else line
                )
        return bad


def _stale(path: Path) -> bool:
    try:
        os.statvfs(path)
    except OSError:
        return True
    return False


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def sha256_path(path: Path) -> str:
    """The sha256 (hex) of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def drop_caches() -> None:
    """Write back and drop the page cache (root), so the next read is cold."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
