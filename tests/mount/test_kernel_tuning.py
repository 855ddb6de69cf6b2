"""The FUSE connection's kernel tuning (``-o read_ahead_kb``, ``-o max_background``) is in
place when ``modelfs mount`` returns, and stays: the kernel's answer to FUSE INIT does not
put the defaults back."""

from __future__ import annotations

import os
from pathlib import Path


def connection_files(mountpoint: Path) -> tuple[Path, Path]:
    """The mount's bdi ``read_ahead_kb`` and its FUSE connection's ``max_background``."""
    dev = os.stat(mountpoint).st_dev
    major, minor = os.major(dev), os.minor(dev)
    return (
        Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        Path(f"/sys/fs/fuse/connections/{minor}/max_background"),
    )


def test_read_ahead_and_max_background_are_set_when_mount_returns(mount_factory) -> None:
    m = mount_factory("read_ahead_kb=4096", "max_background=100")
    read_ahead, max_background = connection_files(m.mountpoint)
    assert read_ahead.read_text().strip() == "4096", (
        f"{read_ahead} reads {read_ahead.read_text().strip()} after mount -o read_ahead_kb=4096"
    )
    assert max_background.read_text().strip() == "100", (
        f"{max_background} reads {max_background.read_text().strip()} "
        "after mount -o max_background=100"
    )


def test_other_values_are_set_too(mount_factory) -> None:
    """Not a coincidence with the defaults (4096, 64): the values asked for."""
    m = mount_factory("read_ahead_kb=2048", "max_background=33")
    read_ahead, max_background = connection_files(m.mountpoint)
    assert read_ahead.read_text().strip() == "2048"
    assert max_background.read_text().strip() == "33"


def test_read_ahead_kb_0_turns_readahead_off(mount_factory) -> None:
    m = mount_factory("read_ahead_kb=0")
    read_ahead, _ = connection_files(m.mountpoint)
    assert read_ahead.read_text().strip() == "0", "-o read_ahead_kb=0 left the readahead on"
