"""modelfs.registry.retry: capped exponential backoff with jitter; Retry-After honoured."""

from __future__ import annotations

import random

import pytest
import trio

from modelfs.errors import RegistryError, Transient
from modelfs.registry.retry import (
    BACKOFF_MAX_SECONDS,
    RETRY_AFTER_MAX_SECONDS,
    backoff_seconds,
    retrying,
)


def test_backoff_grows_is_capped_and_jittered():
    rng = random.Random(1)
    delays = [backoff_seconds(n, rng=rng) for n in range(1, 12)]
    assert delays[0] <= 0.15
    assert max(delays) <= BACKOFF_MAX_SECONDS * 1.5
    assert len(set(delays)) == len(delays)


def test_retry_after_wins_but_is_capped():
    assert backoff_seconds(1, 7.0, random.Random(0)) >= 7.0
    assert backoff_seconds(1, 3600.0, random.Random(0)) == RETRY_AFTER_MAX_SECONDS


async def test_transient_is_retried_then_succeeds(autojump_clock):
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Transient("reset")
        return "ok"

    assert await retrying("op", flaky) == "ok"
    assert calls == 3


async def test_other_errors_are_not_retried(autojump_clock):
    calls = 0

    async def refused():
        nonlocal calls
        calls += 1
        raise RegistryError("400", 400)

    with pytest.raises(RegistryError):
        await retrying("op", refused)
    assert calls == 1


async def test_gives_up_after_attempts(autojump_clock):
    calls = 0

    async def down():
        nonlocal calls
        calls += 1
        raise Transient("503")

    start = trio.current_time()
    with pytest.raises(Transient):
        await retrying("op", down, attempts=4)
    assert calls == 4
    assert trio.current_time() - start < 4 * BACKOFF_MAX_SECONDS
