"""The chunks of one blob being fetched or re-checked: one ``Flight`` each, shared by readers.

A chunk has a flight from the moment someone starts bringing it (a range request,
a re-check of what an earlier run left, another process's fetch waited for, a
whole-blob body) until it is present and trusted, or failed: sixteen readers of
one chunk make one request and wait for one outcome, each with its own deadline.
A finished flight leaves the table, so the next reader after a failure starts a
new one. Trio thread only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from modelfs.errors import ModelfsError
from modelfs.flight import Flight


class ChunkFlights:
    def __init__(self) -> None:
        self._flights: dict[int, Flight] = {}

    def __contains__(self, i: object) -> bool:
        return i in self._flights

    def __bool__(self) -> bool:
        return bool(self._flights)

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, i: int) -> Flight | None:
        return self._flights.get(i)

    def claim(self, i: int) -> Flight:
        """A new flight for chunk ``i``, which has none: the caller brings the chunk."""
        assert i not in self._flights, f"chunk {i} is already in flight"
        flight = self._flights[i] = Flight()
        return flight

    def of(self, chunks: Iterable[int]) -> dict[int, Flight]:
        """The flights of those of ``chunks`` that have one."""
        return {i: f for i in chunks if (f := self._flights.get(i)) is not None}

    def finish(self, i: int, flight: Flight, error: ModelfsError | None = None) -> None:
        """Chunk ``i`` is here (or failed: ``error``): its waiters wake, and the flight leaves
        the table unless another has replaced it meanwhile."""
        if self._flights.get(i) is flight:
            del self._flights[i]
        flight.finish(error)

    def finish_chunk(self, i: int, error: ModelfsError | None = None) -> None:
        """Whatever flight chunk ``i`` has, finished (none: nothing to do)."""
        flight = self._flights.pop(i, None)
        if flight is not None:
            flight.finish(error)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._flights))
