"""Another process holding open-file-description locks on a blob's lock file, and not letting go.

What a stopped or hostile process sharing the cache can do (issue: security): it opens the
lock file and holds locks on its bytes (``modelfs.blobs.sharing``) for ``--seconds``.

    python tests/support/lock_holder.py PATH [--read] [--seconds N] BYTE[-LAST] ...

Each BYTE is held with a write lock (a read lock with ``--read``). It prints ``held`` once
every lock is taken, ``busy`` if one could not be (it does not wait), and ``cannot open:
<error>`` if the file cannot be opened. ``start`` runs it (as another uid if asked) and waits
for that line.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path


class _Flock(ctypes.Structure):
    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


OTHER_USERS_PYTHON = "/usr/bin/python3"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("spans", nargs="+")
    p.add_argument("--read", action="store_true")
    p.add_argument("--seconds", type=float, default=600.0)
    args = p.parse_args()
    try:
        fd = os.open(args.path, os.O_RDONLY if args.read else os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        print(f"cannot open: {e.strerror}", flush=True)
        return 1
    kind = fcntl.F_RDLCK if args.read else fcntl.F_WRLCK
    for span in args.spans:
        first, _, last = span.partition("-")
        start = int(first)
        length = int(last) - start + 1 if last else 1
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, bytes(_Flock(kind, os.SEEK_SET, start, length, 0)))
        except OSError:
            print("busy", flush=True)
            return 1
    print("held", flush=True)
    time.sleep(args.seconds)
    return 0


def start(
    path: Path,
    *spans: int | str,
    seconds: float = 600.0,
    read: bool = False,
    uid: int | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Run the holder; return it and its first line (``held``, ``busy``, ``cannot open: …``)."""
    # Another uid may not reach this interpreter (under /root): the system's, which has
    # everything this file needs.
    python = sys.executable if uid is None else OTHER_USERS_PYTHON
    argv = [python, __file__, str(path), "--seconds", str(seconds)]
    if read:
        argv.append("--read")
    argv += [str(s) for s in spans]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(10)
        assert proc.stderr is not None
        raise AssertionError(f"the lock holder said nothing: {proc.stderr.read()}")
    return proc, line


if __name__ == "__main__":
    sys.exit(main())
