"""Single flight and waiting: KeyedLock (one task per key), Flight (one outcome, many bounded
waiters), Pulse (something changed: look again, within a bound)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from modelfs.errors import DigestMismatch, Transient
from modelfs.flight import Flight, KeyedLock, Pulse


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
    assert not locks._locks  # nothing kept for a key nobody holds


async def test_different_keys_do_not_wait_for_each_other() -> None:
    locks: KeyedLock[int] = KeyedLock()
    async with locks.hold(1):
        with trio.fail_after(5):
            async with locks.hold(2):
                assert set(locks._locks) == {1, 2}
    assert not locks._locks


async def test_a_holder_that_fails_lets_the_next_one_try() -> None:
    locks: KeyedLock[str] = KeyedLock()
    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("first try failed")
    async with locks.hold("k"):
        pass
    assert not locks._locks


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


async def test_a_flight_keeps_its_first_outcome_and_says_whether_anyone_waits() -> None:
    flight = Flight()
    assert not flight.done and not flight.has_waiters
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flight.settled, None)
        await trio.testing.wait_all_tasks_blocked()
        assert flight.has_waiters
        flight.finish(value=b"first")
        flight.finish(DigestMismatch("too late"))
    assert flight.done and flight.value == b"first" and flight.error is None
    await flight.wait(0, "chunk 1")  # no error: the first outcome counts


async def test_settled_is_bounded_and_does_not_raise_the_outcome(autojump_clock) -> None:
    flight = Flight()
    began = trio.current_time()
    assert not await flight.settled(7)
    assert trio.current_time() - began == pytest.approx(7)
    flight.finish(DigestMismatch("bad"))
    assert await flight.settled(7)


async def test_a_pulse_wakes_every_waiter_and_a_wait_after_it_waits_for_the_next(
    autojump_clock,
) -> None:
    pulse = Pulse()
    woke: list[bool] = []

    async def waiter() -> None:
        woke.append(await pulse.wait(10))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pulse.notify()
    assert woke == [True, True, True]
    began = trio.current_time()
    assert not await pulse.wait(5), "a notify before the wait must not end it"
    assert trio.current_time() - began == pytest.approx(5)


def test_every_wait_asks_for_its_bound() -> None:
    import inspect

    for fn in (Flight.wait, Flight.settled, Pulse.wait):
        seconds = inspect.signature(fn).parameters["seconds"]
        assert seconds.default is inspect.Parameter.empty, f"{fn.__qualname__} has a default bound"
