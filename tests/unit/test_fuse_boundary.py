"""The FUSE boundary: known errors become their errno, anything else EIO and a logged traceback."""

from __future__ import annotations

import errno
import logging

import pyfuse3
import pytest

from modelfs.errors import CacheFull, ModelNotFound
from modelfs.fs.fuse_ops import Operations, boundary
from modelfs.fs.tree import TreeError


class Fake:
    @boundary
    async def raises(self, exc):
        raise exc


@pytest.mark.parametrize(
    ("exc", "err"),
    [
        (ModelNotFound("gone"), errno.ENOENT),
        (CacheFull("full"), errno.ENOSPC),
        (TreeError(errno.EROFS), errno.EROFS),
        (pyfuse3.FUSEError(errno.ENOTDIR), errno.ENOTDIR),
        (RuntimeError("bug"), errno.EIO),
        (KeyError("bug"), errno.EIO),
    ],
)
async def test_errors_become_errno(exc, err, caplog):
    caplog.set_level(logging.INFO, logger="modelfs.fs.fuse_ops")
    with pytest.raises(pyfuse3.FUSEError) as info:
        await Fake().raises(exc)
    assert info.value.errno == err
    if isinstance(exc, RuntimeError | KeyError):
        assert any(r.exc_info for r in caplog.records), (
            "an unexpected error must be logged with its traceback"
        )


def test_every_handler_of_the_mount_goes_through_the_boundary():
    # forget has no reply and catches everything itself; the EROFS ones raise FUSEError only.
    for name in (
        "lookup",
        "getattr",
        "readlink",
        "opendir",
        "readdir",
        "releasedir",
        "open",
        "read",
        "release",
        "flush",
        "access",
        "getxattr",
        "listxattr",
        "statfs",
    ):
        assert getattr(Operations, name).__wrapped__, f"{name} is not wrapped by the boundary"
