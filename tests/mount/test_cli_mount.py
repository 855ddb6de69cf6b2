"""``modelfs mount`` refusing what would surprise: a directory with files (hidden by the mount
unless --allow-non-empty), a directory that does not exist, a --config file that does not
exist; a mount the kernel refuses, in libfuse's words; and ``modelfs ps`` listing running
mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mount import PROBLEM_RE, one_line_error, run_modelfs

REPO = Path(__file__).resolve().parents[2]
NOBODY_UID = 65534


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "run").mkdir()
    return {
        **os.environ,
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "MODELFS_CONFIG": str(tmp_path / "config.toml"),
    }


def mount(mnt: Path, tmp_path: Path, env: dict[str, str], *extra: str):
    return run_modelfs(
        "mount",
        str(mnt),
        "--cache",
        str(tmp_path / "cache"),
        "--log",
        str(tmp_path / "modelfs.log"),
        *extra,
        env=env,
        check=False,
        timeout=60,
    )


def unmount(mnt: Path, env: dict[str, str]) -> bool:
    """Unmount if mounted; whether it was."""
    if not os.path.ismount(mnt):
        return False
    result = run_modelfs("umount", str(mnt), env=env, check=False, timeout=60)
    if result.returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
    return True


def error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_mount_over_a_directory_with_files_is_refused_unless_asked(
    tmp_path: Path, env: dict[str, str]
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "notes.txt").write_text("mine")
    try:
        refused = mount(mnt, tmp_path, env)
    finally:
        mounted = unmount(mnt, env)
    assert not mounted, "modelfs mounted over a directory with files, hiding them"
    line = error_line(refused)
    assert line == (
        f"modelfs: mountpoint {mnt} is not empty (the mount would hide its files); "
        "use --allow-non-empty to mount over them"
    )
    assert (mnt / "notes.txt").read_text() == "mine"

    try:
        allowed = mount(mnt, tmp_path, env, "--allow-non-empty")
        assert allowed.returncode == 0, allowed.stderr
        assert os.path.ismount(mnt)
        assert "notes.txt" not in os.listdir(mnt) and not (mnt / "notes.txt").is_file()
    finally:
        unmount(mnt, env)
    assert (mnt / "notes.txt").read_text() == "mine", "the hidden file is back after umount"
    log = (tmp_path / "modelfs.log").read_text()
    assert not [line for line in log.splitlines() if PROBLEM_RE.search(line)], log


def test_mount_of_a_directory_that_does_not_exist_says_so(
    tmp_path: Path, env: dict[str, str]
) -> None:
    mnt = tmp_path / "nothere"
    line = error_line(mount(mnt, tmp_path, env))
    assert line == f"modelfs: mountpoint {mnt} does not exist"
    assert not mnt.exists()
    (tmp_path / "file").write_text("")
    line = error_line(mount(tmp_path / "file", tmp_path, env))
    assert line == f"modelfs: mountpoint {tmp_path / 'file'} is not a directory"


def test_mount_with_a_config_file_that_does_not_exist_is_refused(
    tmp_path: Path, env: dict[str, str]
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    missing = tmp_path / "nonexistent.toml"
    try:
        result = mount(mnt, tmp_path, env, "--config", str(missing))
    finally:
        mounted = unmount(mnt, env)
    assert not mounted, "modelfs mounted with a --config file that does not exist"
    assert error_line(result, 2) == f"modelfs: --config {missing}: no such file"


def test_ps_lists_running_mounts(mount_factory, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir()
    none = run_modelfs("ps", env=env)
    assert none.stdout == "" and none.stderr.strip() == "no modelfs mounts are running"
    m = mount_factory(env=env)
    lines = run_modelfs("ps", env=env).stdout.splitlines()
    assert lines[0].split() == ["MOUNTPOINT", "PID", "UP", "CACHE", "FETCHED", "IN", "FLIGHT"]
    assert len(lines) == 2, lines
    row = lines[1].split()
    assert row[0] == str(m.mountpoint) and row[1] == str(m.pid()) and row[3] == str(m.cache)


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A directory of uid 65534 (nobody) in /tmp: pytest's tmp_path is root's, 0700."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (util-linux)")
    home = Path(tempfile.mkdtemp(prefix="modelfs-nobody-", dir="/tmp"))
    try:
        home.chmod(0o755)
        (home / "run").mkdir(mode=0o700)
        os.chown(home, NOBODY_UID, NOBODY_UID)
        os.chown(home / "run", NOBODY_UID, NOBODY_UID)
        yield home
    finally:
        shutil.rmtree(home)


def test_a_mount_the_kernel_refuses_says_why_in_one_line(nobody_home: Path) -> None:
    """A user without FUSE access (here /dev/fuse is root's alone, and the mountpoint is not
    theirs, so fusermount3 refuses too where /dev/fuse is open to all)."""
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and "venv" in p)
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python} for the second user to run modelfs with")
    mnt = nobody_home / "mnt"
    mnt.mkdir()  # root's
    env = {
        "HOME": str(nobody_home),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO}:{site_packages}",
        "XDG_RUNTIME_DIR": str(nobody_home / "run"),
    }
    as_nobody = [
        "setpriv",
        f"--reuid={NOBODY_UID}",
        f"--regid={NOBODY_UID}",
        "--clear-groups",
        "--",
        python,
        "-m",
        "modelfs",
    ]
    try:
        result = subprocess.run(
            [*as_nobody, "mount", str(mnt), "--cache", str(nobody_home / "cache")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        mounted = unmount(mnt, {**os.environ, "XDG_RUNTIME_DIR": str(nobody_home / "run")})
    assert not mounted, "a user without FUSE access mounted"
    line = one_line_error(result)
    assert "ExceptionGroup" not in line and "nursery" not in line, line
    assert line.startswith(f"modelfs: cannot mount {mnt}: "), line
    reason = line.removeprefix(f"modelfs: cannot mount {mnt}: ")
    # libfuse's words, not the name of the call that failed ("fuse_session_mount failed").
    assert "Permission denied" in reason or "no write access" in reason, line
    log = (nobody_home / "cache" / ".modelfs" / "modelfs.log").read_text()
    assert reason.removeprefix("fusermount3: ") in log, log
