"""A whole blob arriving for a range request, used as the blob's fill.

A registry mirror that has not stored a blob yet (docker-registry as a pull-through
cache) answers a range request with the whole blob (200), and copies the blob from its
origin for every such request: a node that went on asking for ranges would cost the
origin a whole copy each time. So the body is taken whole: every chunk that is neither
present nor being fetched by another request is claimed by the stream (a flight each),
and readers wait for the stream to bring it instead of asking for more ranges. A
reader's wait is bounded by the stream's progress (some chunk landing within the read
deadline), not by how far into the blob its chunk is. When the stream ends, the chunks
it did not bring are fetched as ranges as usual; by then a mirror has stored the blob
and answers them with 206.
"""

from __future__ import annotations

from collections.abc import Callable

from modelfs.errors import Transient
from modelfs.flight import Flight, Pulse


class WholeStream:
    """The chunks one whole-blob body is bringing, and how far it has got."""

    def __init__(self, claimed: dict[int, Flight]) -> None:
        self.claimed = claimed
        self._flights = {id(f) for f in claimed.values()}
        # Chunks a range request that was waiting to be sent handed to this body instead;
        # that request fetches what the body did not bring. The receiver of the body takes
        # a chunk if it is in ``claimed`` or here (read from its worker thread).
        self.adopted: set[int] = set()
        self.moved = Pulse()  # a chunk of the body landed, or the body ended
        self.ended = False

    def takes(self, i: int) -> bool:
        return i in self.claimed or i in self.adopted

    def owns(self, flight: Flight) -> bool:
        return not self.ended and id(flight) in self._flights

    def landed(self) -> None:
        """A chunk of the blob landed (trio thread): readers waiting on the stream look again."""
        self.moved.notify()

    async def wait(self, flight: Flight, seconds: float | None, what: str) -> None:
        """Wait for ``flight`` (a chunk this stream claimed) while the stream moves: each
        ``seconds`` must bring some chunk of the body, wherever the reader's chunk is."""
        while seconds is not None and not flight.done and not self.ended:
            if not await self.moved.wait(seconds):
                raise Transient(f"{what}: the whole-blob body brought nothing for {seconds:.0f}s")
        await flight.wait(seconds, what)

    async def bring(self, chunks: range, present: Callable[[int], bool]) -> None:
        """Hand ``chunks`` to this body and wait until it brought them all or ended. Not
        bounded here: the body's own request is (its stall detection ends it)."""
        self.adopted.update(chunks)
        while not self.ended and not all(present(i) for i in chunks):
            await self.moved.wait(None)

    def end(self) -> list[int]:
        """The body ended (or failed): the chunks it claimed and did not bring."""
        self.ended = True
        self.moved.notify()
        return sorted(i for i, f in self.claimed.items() if not f.done)
