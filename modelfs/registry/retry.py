"""Retry policy for network operations: capped exponential backoff with jitter, Retry-After honoured.

Only ``Transient`` errors are retried; everything else is final on the first try.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from modelfs.errors import Transient

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
RETRY_AFTER_MAX_SECONDS = 30.0
DEFAULT_ATTEMPTS = 6


def backoff_seconds(
    attempt: int, retry_after_seconds: float | None = None, rng: random.Random | None = None
) -> float:
    """Delay before retry number ``attempt`` (1-based).

    Exponential from 0.1 s, capped at 5 s, times a 0.5–1.5 jitter so that many
    readers failing together do not come back together. A server's Retry-After
    wins when it asks for longer, up to 30 s.
    """
    r = rng or random
    delay = min(BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
    delay *= 0.5 + r.random()
    if retry_after_seconds is not None:
        delay = max(delay, min(retry_after_seconds, RETRY_AFTER_MAX_SECONDS))
    return delay


async def retrying(
    what: str, fn: Callable[[], Awaitable[T]], attempts: int = DEFAULT_ATTEMPTS
) -> T:
    """Call ``fn`` until it succeeds, retrying ``Transient`` up to ``attempts`` tries in all."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Transient as e:
            if attempt >= attempts:
                raise
            delay = backoff_seconds(attempt, e.retry_after_seconds)
            log.info("%s: %s; retry %d/%d in %.2fs", what, e, attempt, attempts - 1, delay)
            await trio.sleep(delay)
