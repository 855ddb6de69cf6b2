"""A range request: which bytes of which blob, and where the bytes go.

``BlobRange`` is the one request object every layer passes down unchanged: the blob layer
builds it (``blobs.fetchcontext`` names it ``RangeRequest``), a ``BlobSource`` (the
``Registry``) takes it in ``fetch_range``, ``BlobReads`` tries the host's mirrors with it
(``fetch_with_failover``), and ``bulk`` sends it as one HTTP request (``get_range``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelfs.formats.digest import Digest
from modelfs.formats.names import Name

# One piece callback per chunk-sized piece of a range body, called in the worker thread.
PieceSink = Callable[[int, memoryview], None]
# Asked when a range request is answered with the whole blob (its Content-Length, if
# given): True to take the whole body as it comes (worker thread).
WholeSink = Callable[[int | None], bool]
# Told the body bytes as they arrive (worker thread), before they make a whole piece.
ArrivalSink = Callable[[int], None]


@dataclass(frozen=True)
class BlobRange:
    """Blob bytes ``[start, end)`` of ``digest`` as ``name``'s repository serves it,
    delivered to ``on_piece(offset, view)`` in pieces of ``piece_bytes`` (worker thread; the
    view is valid only during the call). A server answering with the whole blob asks
    ``on_whole(length)`` whether to deliver all of it, from offset 0; ``on_bytes(n)`` is told
    of body bytes as they arrive, before they make a piece."""

    name: Name
    digest: Digest
    start: int
    end: int
    piece_bytes: int
    on_piece: PieceSink
    on_whole: WholeSink | None = None
    on_bytes: ArrivalSink | None = None
