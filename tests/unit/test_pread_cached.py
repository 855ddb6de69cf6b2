"""Reads served from the page cache on the trio thread, without a worker thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelfs.blobs.blobcache import pread_cached

pytestmark = pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="needs preadv2")


def test_bytes_just_written_are_read_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(1 << 20)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_cached(fd, 4096, 65536) == data[4096 : 4096 + 65536]
    finally:
        os.close(fd)


def test_a_short_read_is_left_to_the_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Past the end of the file: not the bytes asked for, so None (the caller's
        # worker-thread read decides what a short file means).
        assert pread_cached(fd, 900, 200) is None
        assert pread_cached(fd, 0, 0) is None
    finally:
        os.close(fd)


def test_an_error_is_left_to_the_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_cached(fd, 0, 10) is None  # EISDIR
    finally:
        os.close(fd)
