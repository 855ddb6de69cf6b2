"""systemd/modelfs.service does what it says: its ExecStart mounts, tells systemd READY=1 once
the mount is live, and its ExecStop unmounts and ends the daemon cleanly."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from mount.test_mount import TAG_DIR

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "modelfs.service"
READY_SECONDS = 60


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_unit_execstart_notifies_ready_and_execstop_unmounts(
    tmp_path: Path, registry, smollm2_pushed
) -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    wrapper = tmp_path / "modelfs"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m modelfs "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = {
        **os.environ,
        "MODELFS_MOUNTPOINT": str(mnt),
        "OLLAMA_MODELS": str(tmp_path / "cache"),
        "MODELFS_ARGS": "-o allow_other",
        "MODELFS_BIN": str(wrapper),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    (tmp_path / "run").mkdir()
    notify = tmp_path / "notify.sock"
    env["NOTIFY_SOCKET"] = str(notify)

    def command(key: str) -> list[str]:
        # ExecStart=/bin/sh -c '…' — systemd splits the quoted script as one word.
        (value,) = settings[key]
        program, flag, script = value.split(" ", 2)
        assert (program, flag) == ("/bin/sh", "-c")
        return [program, flag, script.strip("'")]

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(READY_SECONDS)
        daemon = subprocess.Popen(
            command("ExecStart"), env=env, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            message = sock.recv(1024).decode()
            assert "READY=1" in message
            assert os.path.ismount(mnt), "READY=1 came before the mount was live"
            params = mnt / registry.host / TAG_DIR / "params.json"
            assert params.read_text() == '{"temperature":0.2}'
            stop = subprocess.run(command("ExecStop"), env=env, capture_output=True, timeout=60)
            assert stop.returncode == 0, stop.stderr
            assert daemon.wait(60) == 0
            assert not os.path.ismount(mnt)
        finally:
            if daemon.poll() is None:
                subprocess.run(["umount", "-l", str(mnt)], check=False)
                daemon.kill()
                daemon.wait()
            daemon.stderr.close()  # type: ignore[union-attr]
