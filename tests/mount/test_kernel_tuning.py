"""The FUSE connection's kernel tuning (``-o read_ahead_kb``, ``-o max_background``) is in
place when ``modelfs mount`` returns, and stays: the kernel's answer to FUSE INIT does not
put the defaults back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mount.test_mount import TAG_DIR

from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.gguf import read_gguf_file
from modelfs.fs.daemon import READ_AHEAD_KB


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


# How long the kernel's readahead after a read may go on fetching: it sends its READs within
# milliseconds, and a 4 MiB chunk from the local registry lands well within this.
READAHEAD_SETTLE_SECONDS = 3.0


def test_the_default_readahead_keeps_a_gguf_header_read_to_its_chunk(
    proxy, mount_factory, smollm2_pushed, model_hex
) -> None:
    """Reading a model's GGUF header (what llama.cpp and modelfs show do first) fetches the
    chunk it lies in, and the kernel's readahead past it fetches no more: at 4096 KiB it went
    on to fetch two more 4 MiB chunks, 12 MiB for a header of under 4."""
    m = mount_factory()
    read_ahead, _ = connection_files(m.mountpoint)
    assert read_ahead.read_text().strip() == str(READ_AHEAD_KB)
    info = read_gguf_file(m.mountpoint / proxy.host / TAG_DIR / "model.gguf")
    assert info.architecture == "llama"

    def fetched() -> int:
        return sum(r.body_bytes for r in proxy.blob_records() if model_hex in r.path)

    # Bounded: what the readahead fetches arrives within the window, or never.
    deadline = time.monotonic() + READAHEAD_SETTLE_SECONDS
    while time.monotonic() < deadline and fetched() <= CHUNK_BYTES:
        time.sleep(0.05)
    assert fetched() <= CHUNK_BYTES, (
        f"reading the GGUF header fetched {fetched()} bytes of the model, "
        f"{fetched() // CHUNK_BYTES} chunks, with the default read_ahead_kb={READ_AHEAD_KB}"
    )
