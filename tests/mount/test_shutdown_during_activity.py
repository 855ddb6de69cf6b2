"""Ending a mount while it is busy is normal operation: the daemon logs no WARNING or ERROR.

Reads are in flight on every path at once when the mount ends: a cold read of a big blob from
a slow origin (a trickle above the minimum rate), a read through the shipped nginx mirror, a
small blob the registry holds on to, and manifest lookups of several tags the registry does not
answer yet. The mount ends by SIGTERM (``systemctl stop``, a signal to ``modelfs mount
--foreground``) while readers wait, or by ``modelfs umount`` while only the daemon's own
fetches (readahead runs left by readers that went) are in flight. Either way the daemon exits
within a bound, every reader gets data or an errno, and the log judge (``mount_factory``) finds
nothing: ending transfers at shutdown is not a mirror or a registry failing.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mount.test_mount import TAG_DIR, wait_for
from support.mount import run_modelfs
from support.nginx import NginxMirror

# Above the minimum rate (64 KiB/s): slow, never stalled; a 32 MiB run takes 16 s.
TRICKLE_BPS = 2 << 20
# A registry that holds on to a request this long answers nothing before the test ends.
HANG_SECONDS = 60
# From the signal or the unmount to the daemon gone, and every reader with it.
EXIT_SECONDS = 20.0
# Tags of a repository the registry lists, whose manifests it holds on to.
HUNG_TAGS = ("hung-a", "hung-b", "hung-c")
SYNTHETIC_TAG_DIR = "library/synthetic/200m"
# What a reader is told of a read the mount's end cut short: the daemon's EIO, or the
# kernel's once the connection is gone.
ENDED_ERRNOS = tuple(
    os.strerror(e) for e in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV)
)


@pytest.fixture
def nginx_mirror(proxy, tmp_path: Path) -> Iterator[NginxMirror]:
    """Asked for before ``mount_factory``: stopped after the mounts."""
    mirror = NginxMirror(tmp_path / "nginx", proxy.host).start()
    yield mirror
    mirror.stop()


def _mount(proxy, nginx_mirror, mount_factory, tmp_path: Path):
    """A mount where ``localhost:<proxy port>`` reads through nginx (to the proxy) and
    ``127.0.0.1:<proxy port>`` reads from the proxy itself: one registry, two ways in."""
    mirrored = f"localhost:{proxy.port}"
    config = tmp_path / "config.toml"
    config.write_text(f'[[mirror]]\nhost = "{mirrored}"\nendpoints = ["{nginx_mirror.url}"]\n')
    m = mount_factory(env={**os.environ, "MODELFS_CONFIG": str(config)})
    direct = m.mountpoint / proxy.host
    return m, direct, m.mountpoint / mirrored


@dataclass(frozen=True)
class Slowed:
    """A mount's two ways into one registry (``_mount``) and its blobs ``_slowed`` slowed."""

    direct: Path
    mirrored: Path
    big_hex: str  # trickles: the synthetic model, read directly
    model_hex: str  # trickles: SmolLM2's model, read through the mirror
    template_hex: str  # held on to by the registry: a small blob

    def in_flight(self, proxy) -> bool:
        """Whether the registry is sending both big blobs and holding on to the template."""
        return (
            _in_flight(proxy, self.big_hex, True)
            and _in_flight(proxy, self.model_hex, True)
            and _in_flight(proxy, self.template_hex, False)
        )

    def readers(self) -> dict[str, subprocess.Popen[bytes]]:
        """Readers of the three slowed blobs, started."""
        big, through_mirror = (
            self.direct / SYNTHETIC_TAG_DIR / "model.gguf",
            self.mirrored / TAG_DIR / "model.gguf",
        )
        return {
            "big": _reader("dd", f"if={big}", "of=/dev/null", "bs=1M"),
            "mirrored": _reader("dd", f"if={through_mirror}", "of=/dev/null", "bs=1M"),
            "small": _reader("cat", self.direct / TAG_DIR / "template"),
        }


def _slowed(proxy, nginx_mirror, mount_factory, tmp_path: Path, *more_faults: dict):
    """A mount whose big blob (read directly) and model blob (read through the mirror)
    trickle from the registry, whose template the registry holds on to, and ``more_faults``.
    Manifests are read first: lookups of these names are not what the readers wait on."""
    m, direct, mirrored = _mount(proxy, nginx_mirror, mount_factory, tmp_path)
    slow = Slowed(
        direct,
        mirrored,
        _digest_hex(direct / SYNTHETIC_TAG_DIR, "model"),
        _digest_hex(mirrored / TAG_DIR, "model"),
        _digest_hex(direct / TAG_DIR, "template"),
    )
    proxy.set_faults(
        [
            {"path": slow.big_hex, "trickle_bps": TRICKLE_BPS},
            {"path": slow.model_hex, "trickle_bps": TRICKLE_BPS},
            {"path": slow.template_hex, "hang_seconds": HANG_SECONDS},
            *more_faults,
        ]
    )
    return m, slow


def _digest_hex(tag: Path, media_type_word: str) -> str:
    manifest = json.loads((tag / "manifest.json").read_text())
    (layer,) = [x for x in manifest["layers"] if x["mediaType"].endswith("." + media_type_word)]
    return layer["digest"].removeprefix("sha256:")


def _in_flight(proxy, word: str, moving: bool) -> bool:
    return any(
        word in r.path and not r.done and (r.body_bytes > 0 or not moving) for r in proxy.records()
    )


def _reader(*argv: str | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_every_kind_of_read_is_in_flight_logs_nothing(
    signum, proxy, nginx_mirror, mount_factory, smollm2_pushed, synthetic_pushed, tmp_path
) -> None:
    m, slow = _slowed(
        proxy,
        nginx_mirror,
        mount_factory,
        tmp_path,
        {"path": "/manifests/hung-", "hang_seconds": HANG_SECONDS},
    )
    readers = {
        **slow.readers(),
        **{f"tag {t}": _reader("ls", slow.direct / "library/smollm2" / t) for t in HUNG_TAGS},
    }
    try:
        wait_for(
            lambda: slow.in_flight(proxy) and _in_flight(proxy, "/manifests/hung-", False),
            "reads of every kind to be in flight at the registry",
        )
        pid = m.pid()
        assert pid is not None
        os.kill(pid, signum)  # systemctl stop; Ctrl-C of modelfs mount --foreground
        deadline = time.monotonic() + EXIT_SECONDS
        wait_for(lambda: _gone(pid), "the daemon to exit after the signal", EXIT_SECONDS)
        for what, proc in readers.items():
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the {what} reader hung after the daemon exited")
            # Data (dd read to the end: impossible at this rate) or an errno, said plainly.
            said = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            assert proc.returncode == 0 or any(e in said for e in ENDED_ERRNOS), (
                f"the {what} reader ended with {proc.returncode} and said: {said!r}"
            )
    finally:
        for proc in readers.values():
            proc.kill()
            proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()
    assert not os.path.ismount(m.mountpoint)


def test_umount_while_fetches_readers_left_are_in_flight_logs_nothing(
    proxy, nginx_mirror, mount_factory, smollm2_pushed, synthetic_pushed, tmp_path
) -> None:
    m, slow = _slowed(proxy, nginx_mirror, mount_factory, tmp_path)
    readers = list(slow.readers().values())
    try:
        wait_for(
            lambda: slow.in_flight(proxy),
            "reads of every kind to be in flight at the registry",
        )
        # The readers go (^C): what their reads started goes on with nobody waiting for it,
        # and nothing holds the mount busy.
        for proc in readers:
            proc.kill()
        for proc in readers:
            proc.wait(EXIT_SECONDS)
    finally:
        for proc in readers:
            proc.kill()
            proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()
    assert _in_flight(proxy, slow.big_hex, True) or _in_flight(proxy, slow.model_hex, True), (
        "no fetch was left in flight to unmount under"
    )
    pid = m.pid()
    assert pid is not None
    began = time.monotonic()
    # modelfs umount: it waits for the daemon to save its state and exit.
    run_modelfs("umount", str(m.mountpoint), env=m.env, timeout=EXIT_SECONDS)
    assert time.monotonic() - began < EXIT_SECONDS, "modelfs umount waited for the fetches"
    wait_for(lambda: _gone(pid), "the daemon to exit after modelfs umount", EXIT_SECONDS)
    assert not os.path.ismount(m.mountpoint)


def test_a_lazy_umount_serves_open_files_until_they_close_then_the_daemon_exits(
    proxy, mount_factory, smollm2_pushed, source, tmp_path
) -> None:
    """The daemon ends what is in flight when the kernel ends the session, not when the mount
    is detached: after ``modelfs umount --lazy`` an open file still reads, from the network
    too, and the daemon exits once it is closed."""
    m = mount_factory()
    pid = m.pid()
    assert pid is not None
    fd = os.open(m.mountpoint / proxy.host / TAG_DIR / "model.gguf", os.O_RDONLY)
    try:
        run_modelfs("umount", "--lazy", str(m.mountpoint), env=m.env, timeout=EXIT_SECONDS)
        assert not os.path.ismount(m.mountpoint)
        # Cold bytes, past what a first read would have fetched ahead.
        at = len(source) // 2
        assert os.pread(fd, 1 << 20, at) == source[at : at + (1 << 20)]
        assert not _gone(pid), "the daemon exited while a file was open"
    finally:
        os.close(fd)
    wait_for(lambda: _gone(pid), "the daemon to exit once the last file closed", EXIT_SECONDS)
