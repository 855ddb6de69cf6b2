"""Range streams shared fairly by registries: one slow or hostile host cannot starve another.

Each host may hold at most ``per_host`` streams at once, and all hosts together at
most ``total``. When every stream is taken, the next free one goes to the waiting
host that holds the fewest (first come first served among equals), so a registry
that trickles its bodies keeps at most its own share while the others are served.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio


@dataclass
class _Waiter:
    host: str
    event: trio.Event = field(default_factory=trio.Event)
    granted: bool = False


class StreamSlots:
    def __init__(self, per_host: int, total: int) -> None:
        if per_host < 1 or total < per_host:
            raise ValueError(f"bad stream limits: {per_host} per host, {total} in all")
        self.per_host = per_host
        self.total = total
        self.held: dict[str, int] = {}
        self._waiters: list[_Waiter] = []
        # Worker threads of the streams: never the bottleneck (a slot is held first).
        self.threads = trio.CapacityLimiter(total)

    @property
    def in_use(self) -> int:
        return sum(self.held.values())

    def _can_take(self, host: str) -> bool:
        return self.in_use < self.total and self.held.get(host, 0) < self.per_host

    def _take(self, host: str) -> None:
        self.held[host] = self.held.get(host, 0) + 1

    def _give(self, host: str) -> None:
        n = self.held[host] - 1
        if n:
            self.held[host] = n
        else:
            del self.held[host]
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            eligible = [w for w in self._waiters if self._can_take(w.host)]
            if not eligible:
                return
            # min() keeps the first of equals: FIFO within the same share.
            w = min(eligible, key=lambda w: self.held.get(w.host, 0))
            self._waiters.remove(w)
            self._take(w.host)
            w.granted = True
            w.event.set()

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold one stream to ``host`` for the body of the ``async with``."""
        host = host.lower()
        w = _Waiter(host)
        self._waiters.append(w)
        self._grant()
        try:
            if w.granted:
                await trio.lowlevel.checkpoint()
            else:
                await w.event.wait()
        except BaseException:
            if w.granted:
                self._give(host)
            else:
                self._waiters.remove(w)
            raise
        try:
            yield
        finally:
            self._give(host)
