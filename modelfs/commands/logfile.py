"""The daemon's log file: rotated, and every file of it, the first and each one after a
rollover, mode 0600 (``mountctl.open_log``). Apart from ``logsetup``, which every command
imports: logging.handlers costs those that write no log file several milliseconds."""

from __future__ import annotations

import io
import logging.handlers

from modelfs.fs.mountctl import open_log


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose every file is mode 0600."""

    def _open(self) -> io.TextIOWrapper:
        fd = open_log(self.baseFilename)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)
