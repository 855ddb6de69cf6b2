"""Another local user cannot steer where a user's daemon writes its pid file or binds its
control socket (issue: security).

A user without ``XDG_RUNTIME_DIR`` keeps them in ``/tmp/modelfs-<uid>``, a name any user can
take first in the world-writable /tmp. Here the victim is uid 65534 (nobody) mounting with
``modelfs mount`` as it would; the attacker is another uid that made that directory before
it, with a symlink named like the victim's pid file pointing at a file of the victim's.
Both are real processes of their own uids (setpriv); the victim's keep the two capabilities
that stand in for a stock system's FUSE access (``FUSE_CAPS``), and nothing else of root's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.mount import PROBLEM_RE

from modelfs.fs import mountctl

REPO = Path(__file__).resolve().parents[2]
# The test's interpreter may live where the victim cannot reach it (a pyenv under /root):
# the victim runs the system's python of the same version, with the same packages.
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and "venv" in p)
VICTIM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
VICTIM_UID = 65534  # nobody
ATTACKER_UID = 65533  # a uid of its own, no account needed to make files in /tmp
# What lets a user mount FUSE on a stock system (/dev/fuse 0666, fusermount3 setuid): here
# /dev/fuse may be root's alone, so the victim's processes get these two, and keep their uid.
FUSE_CAPS = "+dac_override,+sys_admin"
RUN_DIR = Path(f"/tmp/modelfs-{VICTIM_UID}")
COMMAND_SECONDS = 120
GONE_SECONDS = 30
PRECIOUS = "the victim's own notes\n"


def as_user(
    uid: int, *argv: str, env: dict[str, str] | None = None, caps: str = ""
) -> subprocess.CompletedProcess:
    keep = [f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else []
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *keep, "--", *argv],
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        env=env,
        check=False,
    )


@dataclass
class Victim:
    home: Path
    mnt: Path
    cache: Path
    notes: Path

    @property
    def env(self) -> dict[str, str]:
        # A login without XDG_RUNTIME_DIR (cron, su, a container): the /tmp fallback.
        return {
            "HOME": str(self.home),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{REPO}:{SITE_PACKAGES}",
        }

    def modelfs(self, *args: str) -> subprocess.CompletedProcess:
        return as_user(
            VICTIM_UID, VICTIM_PYTHON, "-m", "modelfs", *args, env=self.env, caps=FUSE_CAPS
        )

    def mount(self) -> subprocess.CompletedProcess:
        return self.modelfs("mount", str(self.mnt), "--cache", str(self.cache))

    @property
    def key(self) -> str:
        return hashlib.sha256(str(self.mnt).encode()).hexdigest()[:16]

    def log_problems(self) -> list[str]:
        log = self.cache / ".modelfs" / "modelfs.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if PROBLEM_RE.search(line)]


def mounted(path: Path) -> bool:
    # Not os.path.ismount: without allow_other, root too is refused a stat inside the mount.
    return mountctl.find_mount(path) is not None


def remove_run_dir() -> None:
    if RUN_DIR.is_symlink() or RUN_DIR.is_file():
        RUN_DIR.unlink()
    elif RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)


@pytest.fixture
def victim() -> Iterator[Victim]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (util-linux)")
    if not os.access(VICTIM_PYTHON, os.X_OK):
        pytest.skip(f"no {VICTIM_PYTHON} for the second user to run modelfs with")
    remove_run_dir()
    # Not under pytest's tmp_path: its directories are root's, 0700, closed to both users.
    base = Path(tempfile.mkdtemp(prefix="modelfs-uids-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "victim"
    v = Victim(home, home / "mnt", home / "cache", home / "notes.txt")
    for d in (home, v.mnt):
        d.mkdir()
        os.chown(d, VICTIM_UID, VICTIM_UID)
    home.chmod(0o755)  # the attacker may know the victim's paths; that is not the flaw
    v.notes.write_text(PRECIOUS)
    os.chown(v.notes, VICTIM_UID, VICTIM_UID)
    try:
        yield v
    finally:
        if mounted(v.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(v.mnt)], check=False)
        remove_run_dir()
        shutil.rmtree(base)


def attacker_prepares(victim: Victim, how: str) -> Path:
    """The attacker's directory where the victim's runtime directory should be, with a
    symlink named like the victim's pid file; the directory the attacker controls."""
    if how == "a directory of theirs":
        steered = RUN_DIR
        script = f"mkdir -m 0777 {RUN_DIR}"
    else:  # a symlink to one
        steered = Path(tempfile.mkdtemp(prefix="modelfs-attacker-", dir="/tmp"))
        os.chown(steered, ATTACKER_UID, ATTACKER_UID)
        steered.chmod(0o777)
        script = f"ln -s {steered} {RUN_DIR}"
    script += f" && ln -s {victim.notes} {steered}/{victim.key}.pid"
    made = as_user(ATTACKER_UID, "/bin/sh", "-c", script)
    assert made.returncode == 0, made.stderr
    assert os.lstat(RUN_DIR).st_uid == ATTACKER_UID
    return steered


@pytest.mark.parametrize("how", ["a directory of theirs", "a symlink to one"])
def test_another_users_runtime_dir_is_refused_and_nothing_is_written_through_it(
    victim: Victim, how: str
) -> None:
    steered = attacker_prepares(victim, how)
    try:
        result = victim.mount()
        was_mounted = mounted(victim.mnt)
        assert victim.notes.read_text() == PRECIOUS, (
            "the daemon wrote its pid through the attacker's symlink into the victim's file"
        )
        sockets = [p.name for p in steered.iterdir() if stat.S_ISSOCK(os.lstat(p).st_mode)]
        assert sockets == [], f"the control socket was bound in the attacker's directory: {sockets}"
        assert not was_mounted, "mounted with a runtime directory another user owns"
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"modelfs: the runtime directory {RUN_DIR} "), lines[0]
        assert "XDG_RUNTIME_DIR" in lines[0], lines[0]
    finally:
        if steered != RUN_DIR:
            shutil.rmtree(steered)


def test_without_an_attacker_the_tmp_fallback_is_made_private_and_works(victim: Victim) -> None:
    result = victim.mount()
    assert result.returncode == 0, result.stderr
    try:
        assert mounted(victim.mnt)
        st = os.lstat(RUN_DIR)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == VICTIM_UID, st
        assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
        pid_file = RUN_DIR / f"{victim.key}.pid"
        sock = RUN_DIR / f"{victim.key}.sock"
        # The pid file is written just after the mount is reported live.
        deadline = time.monotonic() + GONE_SECONDS
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stat.S_IMODE(os.lstat(pid_file).st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        daemon_pid = int(pid_file.read_text())
        status = victim.modelfs("status", str(victim.mnt), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == daemon_pid
    finally:
        unmounted = victim.modelfs("umount", str(victim.mnt))
    assert unmounted.returncode == 0, unmounted.stderr
    deadline = time.monotonic() + GONE_SECONDS
    while (pid_file.exists() or sock.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists() and not sock.exists(), list(RUN_DIR.iterdir())
    assert victim.notes.read_text() == PRECIOUS
    assert victim.log_problems() == []
