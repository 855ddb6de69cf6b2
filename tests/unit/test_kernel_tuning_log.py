"""How loudly the daemon says that kernel tuning did not take: a value given with -o that
cannot be set is a WARNING; modelfs's own default that cannot be (a user who is not root) is
INFO, so that an ordinary mount's log stays clean. (That the values are set and read back is
tests/mount/test_kernel_tuning.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelfs.fs import daemon

NO_SUCH_DEV = "0:1048575"  # no bdi of that name: the write fails as sysfs refuses a non-root one


@pytest.mark.parametrize(
    ("asked", "level"),
    [(frozenset({"read_ahead_kb"}), logging.WARNING), (frozenset(), logging.INFO)],
)
def test_a_read_ahead_that_cannot_be_set(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    asked: frozenset[str],
    level: int,
) -> None:
    monkeypatch.setattr(daemon, "_mount_dev", lambda mountpoint: NO_SUCH_DEV)
    with caplog.at_level(logging.DEBUG, logger=daemon.__name__):
        daemon.tune_kernel(tmp_path, 4096, None, asked)
    (record,) = caplog.records
    assert record.levelno == level, record.getMessage()
    assert record.getMessage().startswith(
        f"cannot set /sys/class/bdi/{NO_SUCH_DEV}/read_ahead_kb to 4096 ("
    ), record.getMessage()
