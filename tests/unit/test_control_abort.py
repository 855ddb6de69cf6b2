"""At shutdown the daemon ends the registry's control requests in flight (a manifest, a tag
list, a token) as it ends blob transfers: the caller gets ``ShuttingDown`` at once, never a
cancellation turned into a failure, nor a wait for the request's deadline; later requests are
not sent."""

from __future__ import annotations

import httpx
import pytest
import trio

from modelfs.errors import ShuttingDown
from modelfs.formats.names import parse_name
from modelfs.registry.client import Registry

NAME = parse_name("registry.test/library/m:1")


async def hanging_registry() -> tuple[Registry, trio.Event, list[str]]:
    asked = trio.Event()
    paths: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        asked.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    registry = Registry()
    await registry.sender.client.aclose()
    registry.sender.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return registry, asked, paths


@pytest.mark.parametrize("read", ["get_manifest", "tags", "manifest_digest"])
async def test_a_control_request_in_flight_ends_with_shutting_down_at_abort(read: str) -> None:
    registry, asked, paths = await hanging_registry()
    outcome: list[BaseException] = []

    async def ask() -> None:
        try:
            await getattr(registry, read)(NAME)
        except ShuttingDown as e:
            outcome.append(e)

    with trio.fail_after(5):  # far below the request's own deadline (30 s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await asked.wait()
            registry.abort_transfers()
    assert len(outcome) == 1, f"{read} of a registry that does not answer ended otherwise"
    assert "shutting down" in str(outcome[0])

    # Nothing more is asked once modelfs is shutting down.
    with pytest.raises(ShuttingDown):
        await registry.get_manifest(NAME)
    assert len(paths) == 1, paths
    await registry.aclose()


async def test_a_request_cancelled_from_outside_is_cancelled_not_shutting_down() -> None:
    registry, asked, _ = await hanging_registry()
    with trio.move_on_after(5) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.get_manifest, NAME)
            await asked.wait()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the request did not end when its caller was cancelled"
    await registry.aclose()
