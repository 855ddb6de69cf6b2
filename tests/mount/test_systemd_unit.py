"""systemd/modelfs@.service run by hand, as systemd would run it (tests/systemd boots a real
systemd for the rest): its ExecStart mounts the instance's path and says READY=1 only once the
mount is live, with a STATUS= line; ExecReload (SIGHUP) reloads without unmounting (RELOADING=1,
then READY=1); SIGTERM, what `systemctl stop` sends, unmounts and exits 0; its messages go to
the journal with levels."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from mount.test_mount import TAG_DIR

from modelfs.fs.mountctl import blobs_view_path, find_mount, is_stale, unbind_blobs_view

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "modelfs@.service"
READY_SECONDS = 60


def unit_settings(instance_path: Path) -> dict[str, list[str]]:
    """The unit's [Service] settings with %f (the instance's path) and %i filled in."""
    escaped = str(instance_path).strip("/").replace("-", "\\x2d").replace("/", "-")
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        value = value.replace("%f", str(instance_path)).replace("%i", escaped)
        settings.setdefault(key, []).append(value)
    return settings


def shell_command(value: str) -> list[str]:
    # /bin/sh -c '…' modelfs <path>: systemd passes the quoted script as one word.
    program, flag, rest = value.removeprefix("-").split(" ", 2)
    assert (program, flag) == ("/bin/sh", "-c")
    script, _, args = rest[1:].partition("' ")
    return [program, flag, script, *args.split()]


def exec_start(settings: dict[str, list[str]]) -> list[str]:
    (value,) = settings["ExecStart"]
    return shell_command(value)


def unit_env(tmp_path: Path, settings: dict[str, list[str]]) -> dict[str, str]:
    """The unit's environment, its paths under ``tmp_path``: the cache, an empty
    config.toml, MODELFS_BIN running this modelfs, NOTIFY_SOCKET (not bound yet)."""
    wrapper = tmp_path / "modelfs"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m modelfs "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "config.toml"
    config.write_text("")
    (tmp_path / "run").mkdir()
    return {
        **os.environ,
        "OLLAMA_MODELS": str(tmp_path / "cache"),
        "MODELFS_CONFIG": str(config),
        "MODELFS_ARGS": next(
            e.strip('"').partition("=")[2]
            for e in settings["Environment"]
            if e.strip('"').startswith("MODELFS_ARGS=")
        ),
        "MODELFS_BIN": str(wrapper),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
    }


def mount_id(mnt: Path) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mnt):
            return fields[0]
    return None


def test_the_template_unit_mounts_reloads_and_stops_as_systemd_runs_it(
    tmp_path: Path, registry, smollm2_pushed
) -> None:
    mnt = tmp_path / "srv" / "models"
    settings = unit_settings(mnt)
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["/bin/sh -c 'kill -HUP \"$MAINPID\"'"]
    assert settings["Restart"] == ["on-failure"]
    (stop_post,) = settings["ExecStopPost"]
    assert stop_post.startswith("-/bin/sh -c ") and "fusermount3 -uz" in stop_post
    assert settings["SyslogIdentifier"] == ["modelfs"]
    mnt.mkdir(parents=True)
    env = unit_env(tmp_path, settings)
    journal = tmp_path / "journal"
    notify = Path(env["NOTIFY_SOCKET"])

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, open(journal, "wb") as out:
        sock.bind(str(notify))
        sock.settimeout(READY_SECONDS)
        st = os.fstat(out.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"  # as systemd says stderr is the journal
        daemon = subprocess.Popen(
            exec_start(settings), env=env, stderr=out, stdin=subprocess.DEVNULL
        )
        try:
            message = sock.recv(1024).decode()
            assert "READY=1" in message
            assert os.path.ismount(mnt), "READY=1 came before the mount was live"
            status = sock.recv(1024).decode()
            assert status.startswith(f"STATUS=serving {mnt}"), status
            params = mnt / registry.host / TAG_DIR / "params.json"
            assert params.read_text() == '{"temperature":0.2}'
            options = next(
                line.split()[5] + " " + line.split(" - ")[1]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4] == str(mnt)
            )
            assert "allow_other" in options and "default_permissions" in options, options

            before = mount_id(mnt)
            daemon.send_signal(signal.SIGHUP)  # ExecReload
            assert sock.recv(1024).decode().startswith("RELOADING=1")
            assert sock.recv(1024).decode().startswith("READY=1")
            assert mount_id(mnt) == before, "a reload remounted"
            assert params.read_text() == '{"temperature":0.2}'

            daemon.send_signal(signal.SIGTERM)  # systemctl stop
            assert daemon.wait(60) == 0
            assert not os.path.ismount(mnt)
            # ExecStopPost after a clean stop: nothing to clear, nothing said.
            post = subprocess.run(
                shell_command(stop_post), capture_output=True, text=True, check=False
            )
            assert (post.returncode, post.stderr) == (0, "")
        finally:
            if daemon.poll() is None:
                subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
                daemon.kill()
                daemon.wait()
    lines = journal.read_text().splitlines()
    assert any(line.startswith("<6>modelfs.fs.daemon: mounted ") for line in lines), lines
    assert any("<6>modelfs.fs.daemon: SIGHUP: reloaded the configuration" in ln for ln in lines)
    assert all(line.startswith("<") for line in lines), lines  # every line has its level
    assert not any(line[3:7].isdigit() for line in lines), "timestamps of our own in the journal"


def test_the_unit_mounts_over_a_mount_point_with_files_and_they_are_back_after_stop(
    tmp_path: Path, registry, smollm2_pushed
) -> None:
    """A server's mount point may hold a lost+found (a filesystem's root) or files left from
    before: systemd mounts over them, as mount(8) does, and so does the unit."""
    mnt = tmp_path / "mnt" / "models"
    settings = unit_settings(mnt)
    (mnt / "lost+found").mkdir(parents=True)
    (mnt / "README.old").write_text("left from before\n")
    env = unit_env(tmp_path, settings)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        open(tmp_path / "journal", "wb") as out,
    ):
        sock.bind(env["NOTIFY_SOCKET"])
        daemon = subprocess.Popen(
            exec_start(settings), env=env, stderr=out, stdin=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + READY_SECONDS
            message = ""
            while "READY=1" not in message and daemon.poll() is None:
                assert time.monotonic() < deadline, "the unit did not say READY=1"
                if select.select([sock], [], [], 0.5)[0]:
                    message = sock.recv(1024).decode()
            journal = (tmp_path / "journal").read_text()
            assert daemon.poll() is None, (
                f"the unit's daemon exited ({daemon.returncode}) on a mount point with files: "
                f"{journal}"
            )
            assert os.path.ismount(mnt)
            params = mnt / registry.host / TAG_DIR / "params.json"
            assert params.read_text() == '{"temperature":0.2}'
            # (Not a lookup: at the root, a name may be a registry's host.)
            assert "README.old" not in os.listdir(mnt), "the mount did not cover the old files"
            daemon.send_signal(signal.SIGTERM)  # systemctl stop
            assert daemon.wait(60) == 0
        finally:
            if daemon.poll() is None:
                subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
                daemon.kill()
                daemon.wait()
    assert not os.path.ismount(mnt)
    assert (mnt / "README.old").read_text() == "left from before\n"
    assert (mnt / "lost+found").is_dir()
    lines = (tmp_path / "journal").read_text().splitlines()
    assert not [ln for ln in lines if ln.startswith(("<0>", "<1>", "<2>", "<3>", "<4>"))], lines


def test_after_a_crash_exec_stop_post_clears_the_dead_mount_and_its_view_of_blobs(
    tmp_path: Path, registry, smollm2_pushed
) -> None:
    """kill -9 (an OOM kill, a crash): the daemon leaves its mount dead and the read-only view
    of blobs/ bound under /run/modelfs-blobs. What systemd runs next, ExecStopPost, must clear
    both: a view left bound pins the cache's filesystem (it cannot be unmounted) for good."""
    mnt = tmp_path / "srv" / "models"
    settings = unit_settings(mnt)
    (stop_post,) = settings["ExecStopPost"]
    mnt.mkdir(parents=True)
    env = unit_env(tmp_path, settings)
    view = blobs_view_path(mnt)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        open(tmp_path / "journal", "wb") as out,
    ):
        sock.bind(env["NOTIFY_SOCKET"])
        sock.settimeout(READY_SECONDS)
        daemon = subprocess.Popen(
            exec_start(settings), env=env, stderr=out, stdin=subprocess.DEVNULL
        )
        try:
            assert "READY=1" in sock.recv(1024).decode()
            params = mnt / registry.host / TAG_DIR / "params.json"
            assert params.read_text() == '{"temperature":0.2}'
            assert find_mount(view) is not None, f"the daemon bound no view of blobs/ at {view}"
            daemon.kill()  # SIGKILL: nothing of the daemon's own clean-up runs
            daemon.wait(60)
            assert is_stale(mnt), "the killed daemon's mount is not dead"
            assert find_mount(view) is not None
            post = subprocess.run(  # as systemd runs it: the unit's environment
                shell_command(stop_post), env=env, capture_output=True, text=True, timeout=60
            )
            assert post.returncode == 0, post.stderr
            assert find_mount(mnt) is None, f"the dead mount at {mnt} is still mounted"
            assert find_mount(view) is None, f"the view of blobs/ outlived the crash at {view}"
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            if find_mount(mnt) is not None:
                subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
            if find_mount(view) is not None:
                unbind_blobs_view(mnt)
