"""Single flight: KeyedLock (one task per key) and Flight (one outcome, many bounded waiters)."""

from __future__ import annotations

import pytest
import trio

from modelfs.errors import DigestMismatch, Transient
from modelfs.flight import Flight, KeyedLock


async def test_one_task_per_key_the_others_find_the_work_done() -> None:
    locks: KeyedLock[str] = KeyedLock()
    done: dict[str, int] = {}
    calls = 0
    inside = 0

    async def get(key: str) -> int:
        nonlocal calls, inside
        async with locks.hold(key):
            if key in done:
                return done[key]
            inside += 1
            assert inside == 1
            calls += 1
            await trio.sleep(0.01)
            done[key] = len(key)
            inside -= 1
            return done[key]

    results: list[int] = []

    async def one(key: str) -> None:
        results.append(await get(key))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one, "abc")
    assert results == [3] * 10 and calls == 1
    assert len(locks) == 0  # nothing kept for a key nobody holds


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks: KeyedLock[int] = KeyedLock()
    async with locks.hold(1):
        with trio.fail_after(5):
            async with locks.hold(2):
                assert locks.busy(1) and locks.busy(2)
    assert not locks.busy(1)


async def test_a_holder_that_fails_lets_the_next_one_try() -> None:
    locks: KeyedLock[str] = KeyedLock()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("first try failed")
    async with locks.hold("k"):
        pass
    assert len(locks) == 0


async def test_a_flight_gives_every_waiter_its_own_copy_of_the_error() -> None:
    flight = Flight()
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await flight.wait(10, "chunk 3")
        except DigestMismatch as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(wait)
        await trio.sleep(0.01)
        flight.finish(DigestMismatch("chunk 3 does not match"))
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3
    assert all(str(e) == "chunk 3 does not match" for e in errors)


async def test_a_flight_wait_is_bounded_and_leaves_the_flight_going() -> None:
    flight = Flight()
    with pytest.raises(Transient, match="chunk 3: no data after 0s"):
        await flight.wait(0.05, "chunk 3")
    flight.finish(value=b"late")
    await flight.wait(1, "chunk 3")  # another waiter still gets it
    assert flight.value == b"late"
