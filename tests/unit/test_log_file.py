"""The daemon's log names every model its owner reads: it is created 0600, and a wider one we own
is tightened when it is opened again."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.commands.logfile import PrivateRotatingFileHandler
from modelfs.fs.mountctl import open_log


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_log_is_created_0600(tmp_path):
    path = tmp_path / "modelfs.log"
    fd = open_log(path)
    os.close(fd)
    assert _mode(path) == 0o600, "a new daemon log is readable by other users"


def test_an_existing_wider_log_is_tightened_and_appended_to(tmp_path):
    path = tmp_path / "modelfs.log"
    path.write_bytes(b"earlier line\n")
    path.chmod(0o644)
    fd = open_log(path)
    try:
        os.write(fd, b"next line\n")
    finally:
        os.close(fd)
    assert _mode(path) == 0o600, "an existing 0644 daemon log stayed readable by other users"
    assert path.read_bytes() == b"earlier line\nnext line\n"


def test_a_log_narrower_than_0600_is_not_widened(tmp_path):
    path = tmp_path / "modelfs.log"
    path.touch(mode=0o200)
    path.chmod(0o200)
    os.close(open_log(path))
    assert _mode(path) == 0o200


def test_rotated_logs_are_0600_too(tmp_path):
    path = tmp_path / "modelfs.log"
    handler = PrivateRotatingFileHandler(path, maxBytes=200, backupCount=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        for i in range(20):
            handler.emit(logging.makeLogRecord({"msg": f"line {i} " + "x" * 40}))
    finally:
        handler.close()
    logs = sorted(tmp_path.glob("modelfs.log*"))
    assert [p.name for p in logs] == ["modelfs.log", "modelfs.log.1", "modelfs.log.2"]
    assert [_mode(p) for p in logs] == [0o600] * 3
