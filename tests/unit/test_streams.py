"""StreamSlots: one host's streams cannot starve another host's reads."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from modelfs.registry.streams import StreamSlots


async def hold(slots: StreamSlots, host: str, release: trio.Event, log: list[str]) -> None:
    async with slots.slot(host):
        log.append(host)
        await release.wait()


async def test_a_host_never_holds_more_than_its_share():
    slots = StreamSlots(per_host=2, total=4)
    release = trio.Event()
    got: list[str] = []
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(hold, slots, "slow:1", release, got)
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["slow:1", "slow:1"], "one host took more than its per-host share"
        release.set()
    assert len(got) == 5 and slots.in_use == 0


async def test_a_healthy_host_is_served_while_a_hostile_one_holds_its_streams():
    slots = StreamSlots(per_host=4, total=16)
    stuck = trio.Event()
    got: list[str] = []
    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(hold, slots, "evil:1", stuck, got)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            async with slots.slot("good:2"):
                got.append("good:2")
        assert got.count("evil:1") == 4 and "good:2" in got
        stuck.set()


async def test_when_all_streams_are_busy_the_host_with_fewest_goes_next():
    slots = StreamSlots(per_host=3, total=3)
    holders = [trio.Event() for _ in range(3)]
    later = {h: trio.Event() for h in ("a", "b")}
    got: list[str] = []
    async with trio.open_nursery() as n:
        for release in holders:
            n.start_soon(hold, slots, "a", release, got)
        await trio.testing.wait_all_tasks_blocked()
        # "a" waits first, "b" second: "b" holds none, so it gets the next free stream.
        n.start_soon(hold, slots, "a", later["a"], got)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(hold, slots, "b", later["b"], got)
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["a", "a", "a"]
        holders[0].set()  # one stream frees
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["a", "a", "a", "b"], (
            f"the host holding no stream was not served first: {got}"
        )
        for e in (*holders, *later.values()):
            e.set()
    assert slots.in_use == 0


async def test_a_cancelled_waiter_gives_back_nothing_it_did_not_get():
    slots = StreamSlots(per_host=1, total=1)
    release = trio.Event()
    got: list[str] = []
    async with trio.open_nursery() as n:
        n.start_soon(hold, slots, "h", release, got)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            async with slots.slot("h"):
                pytest.fail("got a stream that was taken")
        release.set()
    assert slots.in_use == 0
    async with slots.slot("h"):
        assert slots.in_use == 1


def test_limits_are_checked():
    with pytest.raises(ValueError):
        StreamSlots(per_host=4, total=2)
