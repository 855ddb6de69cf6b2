"""The standard tools unmount a modelfs mount made as root: ``umount MNT`` and
``fusermount3 -u MNT`` (as for rclone or mountpoint-s3), and the daemon then exits by itself,
saving its progress and leaving nothing mounted or running."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount.test_mount import TAG_DIR, wait_for
from support.mount import sha256_path

from modelfs.blobs.partial import present_bytes_in_state
from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.digest import Digest
from modelfs.fs.mountctl import blobs_view_path, find_mount

EXIT_SECONDS = 30.0
OTHER_UID = 65534  # nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a mount made as root")


@pytest.fixture(autouse=True)
def shared_root() -> Iterator[Path]:
    """A directory another user can reach (pytest's are 0700). Autouse, so that it is removed
    only after mount_factory has unmounted what is in it."""
    root = Path(tempfile.mkdtemp(prefix="modelfs-umount-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("command", [["umount"], ["fusermount3", "-u"]], ids=lambda c: c[0])
def test_standard_tools_unmount_and_the_daemon_exits_cleanly(
    command: list[str], proxy, mount_factory, smollm2_pushed, source, model_hex
):
    m = mount_factory()
    tag = m.mountpoint / proxy.host / TAG_DIR
    # A link in use (its blob complete), and part of the model fetched: both at unmount.
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    wait_for((tag / "params.json").is_symlink, "params.json to become a link")
    view = blobs_view_path(m.mountpoint)
    assert os.readlink(tag / "params.json").startswith(f"{view}/")
    region = (3 * CHUNK_BYTES, 4 * CHUNK_BYTES)
    with open(tag / "model.gguf", "rb") as f:
        assert os.pread(f.fileno(), CHUNK_BYTES, region[0]) == source[region[0] : region[1]]
    pid = m.pid()
    assert pid is not None and running(pid)

    result = subprocess.run(
        [*command, str(m.mountpoint)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"`{' '.join(command)} MNT` failed: {result.stderr.strip()}"
    assert find_mount(m.mountpoint) is None, f"{m.mountpoint} still mounted after {command}"

    wait_for(lambda: not running(pid), "the daemon to exit once unmounted", EXIT_SECONDS)
    assert f"unmounted {m.mountpoint}" in m.log_text(), "the daemon did not finish its exit"
    state = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}.state"
    assert state.exists(), "the daemon did not save which chunks it had fetched"
    saved = present_bytes_in_state(state.read_bytes(), Digest(model_hex), len(source))
    assert saved >= CHUNK_BYTES, f"saved {saved} bytes of progress, fetched {CHUNK_BYTES}"
    # Nothing left behind: no view of blobs/, no pid file, the mountpoint an empty directory.
    assert find_mount(view) is None, f"the view {view} outlived the mount"
    assert not view.exists()
    assert m.pid() is None, "the daemon's pid file outlived it"
    assert list(Path(m.mountpoint).iterdir()) == []


def test_other_users_read_through_links_and_umount_ends_the_mount(
    proxy, mount_factory, smollm2_pushed, shared_root, model_hex
):
    """allow_other, the cache in a directory only root may enter (as /root/.ollama): another
    user follows a link (it leads into the view, not through the cache's parents) and cannot
    write through it; umount MNT then ends the mount."""
    private = shared_root / "private"
    private.mkdir(mode=0o700)
    m = mount_factory("allow_other", root=shared_root / "m", cache=private / "cache")
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert sha256_path(tag / "model.gguf") == model_hex
    wait_for((tag / "model.gguf").is_symlink, "model.gguf to become a link")
    other = {"user": OTHER_UID, "group": OTHER_UID, "capture_output": True, "timeout": 60}
    read = subprocess.run(["sha256sum", str(tag / "model.gguf")], **other)
    assert read.returncode == 0, f"another user cannot read a linked model: {read.stderr!r}"
    assert read.stdout.split()[0].decode() == model_hex
    write = subprocess.run(["sh", "-c", f"echo x >> '{tag / 'model.gguf'}'"], **other)
    assert write.returncode != 0, "another user wrote through a link"
    pid = m.pid()
    assert pid is not None

    result = subprocess.run(
        ["umount", str(m.mountpoint)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"`umount MNT` failed: {result.stderr.strip()}"
    wait_for(lambda: not running(pid), "the daemon to exit once unmounted", EXIT_SECONDS)
    assert find_mount(blobs_view_path(m.mountpoint)) is None
    assert sha256_path(private / "cache" / "blobs" / f"sha256-{model_hex}") == model_hex
