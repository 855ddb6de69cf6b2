"""The runtime directory (pid files, control sockets) is used only when it is private, and
nothing in it is written through a symlink (tests/mount/test_runtime_dir_attack.py plays the
attack with a real second user)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from modelfs.commands.status import every_mount
from modelfs.errors import MountError
from modelfs.fs import mountctl, status

OTHER_UID = 65534


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "modelfs"


def test_it_is_made_0700_whatever_the_umask(run_dir: Path):
    old = os.umask(0o000)
    try:
        assert mountctl.runtime_dir() == run_dir
    finally:
        os.umask(old)
    st = os.lstat(run_dir)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.geteuid()


@pytest.mark.parametrize("what", ["symlink", "other-owner", "mode-0755", "mode-0777", "file"])
def test_a_runtime_dir_that_is_not_private_is_refused_in_one_line(run_dir: Path, what: str):
    run_dir.parent.mkdir(parents=True)
    elsewhere = run_dir.parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if what == "symlink":
        run_dir.symlink_to(elsewhere)
    elif what == "file":
        run_dir.write_text("")
    else:
        run_dir.mkdir()
        run_dir.chmod({"mode-0755": 0o755, "mode-0777": 0o777}.get(what, 0o700))
        if what == "other-owner":
            os.chown(run_dir, OTHER_UID, OTHER_UID)
    for attempt in (
        mountctl.runtime_dir,
        lambda: mountctl.write_pidfile("/mnt/x"),
        lambda: status.control_socket("/mnt/x"),
        every_mount,  # modelfs status: asks no socket the other user may have put there
    ):
        with pytest.raises(MountError) as raised:
            attempt()
        message = str(raised.value)
        assert message.startswith(f"the runtime directory {run_dir} ") and "\n" not in message
        assert "XDG_RUNTIME_DIR" in message
    assert list(elsewhere.iterdir()) == [], "something was written through the symlink"
    # modelfs umount finds no pid there (and so does not wait on one it cannot trust).
    assert mountctl._daemon_pid("/mnt/x") is None


def test_the_pid_file_replaces_a_symlink_instead_of_writing_through_it(run_dir: Path):
    mountctl.runtime_dir()
    victim = run_dir.parent / "victim"
    victim.write_text("precious\n")
    pid = mountctl.pidfile("/mnt/x")
    pid.symlink_to(victim)
    assert mountctl.write_pidfile("/mnt/x") == pid
    assert victim.read_text() == "precious\n", "the pid was written through a symlink"
    st = os.lstat(pid)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert pid.read_text() == f"{os.getpid()}\n"
    assert mountctl._daemon_pid("/mnt/x") == os.getpid()
    assert sorted(p.name for p in run_dir.iterdir()) == [pid.name], "a temp file was left"
    mountctl.remove_pidfile("/mnt/x")
    assert not pid.exists()


def test_a_symlinked_pid_file_is_neither_read_nor_removed(run_dir: Path):
    mountctl.runtime_dir()
    target = run_dir.parent / "target"
    target.write_text(f"{os.getpid()}\n")  # names this process, as the daemon's own would
    pid = mountctl.pidfile("/mnt/x")
    pid.symlink_to(target)
    assert mountctl._daemon_pid("/mnt/x") is None
    mountctl.remove_pidfile("/mnt/x")
    assert pid.is_symlink() and target.exists()


async def test_the_control_socket_is_never_group_or_world_accessible(run_dir: Path):
    """Bound with mode 0600 from its first moment, even under umask 0."""
    mountctl.runtime_dir()
    path = status.control_socket("/mnt/x")
    old = os.umask(0o000)
    try:
        sock = status.open_control(path)
    finally:
        os.umask(old)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        sock.close()
        await trio.lowlevel.checkpoint()


def test_a_symlink_at_the_socket_path_is_not_followed(run_dir: Path):
    mountctl.runtime_dir()
    path = status.control_socket("/mnt/x")
    aim = run_dir.parent / "aim.sock"
    path.symlink_to(aim)
    with pytest.raises(OSError):
        status.open_control(path)
    assert not aim.exists() and path.is_symlink()


def test_status_does_not_make_the_runtime_dir(run_dir: Path):
    assert every_mount() == []
    assert not run_dir.exists()
