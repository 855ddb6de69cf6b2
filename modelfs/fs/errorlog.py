"""The last errors a mount answered to the kernel, each with its cause (``modelfs status``).

The errno a reader sees (EIO, EACCES) says little; the reason (connection refused,
the registry refused the credentials) is what a user can act on. ``fuse_ops``'s
boundary adds each error it answers; ``fs.status`` puts them in the snapshot.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

# Distinct recent errors kept (the oldest go first).
RECENT_ERRORS = 10


@dataclass(frozen=True)
class RecentError:
    """An error answered to the kernel, with the reason a user can act on."""

    at: float  # seconds since the epoch, the last time it was answered
    operation: str  # the FUSE request: lookup, read, opendir ...
    errno: int
    message: str
    count: int  # times answered (the same request, errno and reason)


class RecentErrors:
    """The last few distinct errors the mount answered, newest last: the same request
    failing the same way again moves to the end and counts up, so a shell retrying one
    name does not push every other cause out."""

    def __init__(self, keep: int = RECENT_ERRORS) -> None:
        self.keep = keep
        self._seen: OrderedDict[tuple[str, int, str], RecentError] = OrderedDict()

    def add(self, operation: str, err: int, message: str) -> None:
        key = (operation, err, message)
        before = self._seen.pop(key, None)
        count = 1 if before is None else before.count + 1
        self._seen[key] = RecentError(time.time(), operation, err, message, count)
        while len(self._seen) > self.keep:
            self._seen.popitem(last=False)

    def entries(self) -> tuple[RecentError, ...]:
        return tuple(self._seen.values())
