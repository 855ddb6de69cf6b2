"""Whether a process id names a live process: for the scratch files and locks a process leaves
behind (blobs/orphans), and for a daemon being waited on to exit (fs/mountctl)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (another user's included); a zombie, dead but not yet reaped by
    its parent, is not alive: it holds nothing and will do nothing more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
