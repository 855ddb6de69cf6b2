"""Where the logs of modelfs go: the daemon's (a private rotating file, or stderr, with the
journal's priority prefixes when stderr is the journal) and a command's (``modelfs: <message>``
on stderr, escaped as its error lines are).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from modelfs.commands.terminal import printable

LOG_FILE_BYTES = 10 << 20
LOG_FILE_BACKUPS = 3


def setup_command_logging(*, debug: bool) -> None:
    """A command's log lines on stderr as ``modelfs: <message>``: warnings, or all with --debug."""
    stderr = logging.StreamHandler()
    stderr.setFormatter(PrintableFormatter("modelfs: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[stderr])


def setup_daemon_logging(args: argparse.Namespace, *, foreground: bool) -> None:
    level = logging.DEBUG if args.debug else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler
    if getattr(args, "log", None) and args.ready_fd is not None:
        from modelfs.commands.logfile import PrivateRotatingFileHandler

        handler = PrivateRotatingFileHandler(
            args.log, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if _stderr_is_journal() else logging.Formatter(fmt))
    root.addHandler(handler)
    # One line per request would drown the log; httpx's own INFO lines are noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    pyfuse3_log = logging.getLogger("pyfuse3")
    pyfuse3_log.setLevel(logging.INFO if args.debug else logging.WARNING)
    pyfuse3_log.addFilter(_interrupted_reply_filter)


class JournalFormatter(logging.Formatter):
    """For stderr connected to the journal: a syslog priority prefix (``<3>``) the journal
    turns into the entry's level, and no timestamp of our own (the journal has one)."""

    PRIORITIES = (
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
    )

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
        # One entry per record: a traceback's lines stay in it, each with the prefix.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd gave us (``JOURNAL_STREAM=dev:inode``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = stream.partition(":")
    try:
        st = os.fstat(2)
        return bool(stream) and (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (OSError, ValueError):
        return False


def _interrupted_reply_filter(record: logging.LogRecord) -> bool:
    """pyfuse3 logs an ERROR when a reply finds its request gone (ENOENT): the kernel
    dropped it because the reader was interrupted or the mount went away. Not an error."""
    if "fuse_reply_" in record.getMessage() and "No such file or directory" in record.getMessage():
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


class PrintableFormatter(logging.Formatter):
    """The CLI's log lines on the terminal, escaped as its error lines are (a traceback with
    --debug is added after, as it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))
