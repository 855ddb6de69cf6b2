"""blobwatch: removals from blobs/ reported as digests, the directory's own removal as lost."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import trio

from modelfs.blobs import blobwatch
from modelfs.formats.digest import Digest

HEX = "ab" * 32


def test_parse_events_reads_names_padded_with_nuls() -> None:
    name = b"sha256-" + HEX.encode() + b"\0\0\0"
    data = struct.pack("iIII", 1, blobwatch.IN_DELETE, 0, len(name)) + name
    data += struct.pack("iIII", 1, blobwatch.IN_Q_OVERFLOW, 0, 0)
    assert blobwatch.parse_events(data) == [
        (blobwatch.IN_DELETE, f"sha256-{HEX}"),
        (blobwatch.IN_Q_OVERFLOW, ""),
    ]


async def test_removed_and_renamed_blobs_are_reported_and_others_ignored(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for name in (f"sha256-{HEX}", f"sha256-{'cd' * 32}", "sha256-nothex", "other"):
        (blobs / name).write_bytes(b"x")
    removed: list[Digest] = []
    lost: list[bool] = []
    fd = blobwatch.open_watch(blobs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            blobwatch.watch_removals, fd, blobs, removed.append, lambda: lost.append(True)
        )
        os.unlink(blobs / "other")
        os.unlink(blobs / "sha256-nothex")
        os.unlink(blobs / f"sha256-{HEX}")
        os.rename(blobs / f"sha256-{'cd' * 32}", tmp_path / "moved-away")
        with trio.fail_after(10):
            while len(removed) < 2:
                await trio.sleep(0.01)
        assert removed == [Digest(HEX), Digest("cd" * 32)]
        assert not lost
        # The directory itself going away: everything known about it is lost, the watch ends.
        os.rmdir(blobs)
        with trio.fail_after(10):
            while not lost:
                await trio.sleep(0.01)
    assert removed == [Digest(HEX), Digest("cd" * 32)]


def test_open_watch_on_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    try:
        blobwatch.open_watch(tmp_path / "missing")
    except blobwatch.WatchUnavailable as e:
        assert "No such file" in str(e)
    else:
        raise AssertionError("watching a missing directory did not fail")
