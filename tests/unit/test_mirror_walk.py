"""The walk over a host's mirrors (``Endpoints.first_answer``): a mirror that fails is logged,
rests and the next endpoint is asked; a transfer ended because modelfs is shutting down is
nobody's failure: it ends the walk at once, logs nothing and rests no mirror."""

from __future__ import annotations

import logging

import pytest

from modelfs.errors import ModelNotFound, ShuttingDown, Transient
from modelfs.formats.names import parse_name
from modelfs.registry.bulk import Aborted
from modelfs.registry.mirrors import Endpoints
from modelfs.registry.settings import RegistryConfig
from modelfs.registry.translate import bulk_error

NAME = parse_name("registry.example/library/weights:latest")
MIRRORS = ("http://mirror-a.example", "http://mirror-b.example")


def _endpoints() -> Endpoints:
    return Endpoints(
        RegistryConfig(tls_hosts=("registry.example",), mirrors={"registry.example": MIRRORS})
    )


def test_an_abort_at_shutdown_is_its_own_error() -> None:
    error = bulk_error(Aborted("transfer aborted: modelfs is shutting down"), "blob 1", "h")
    assert isinstance(error, ShuttingDown)
    assert str(error) == "blob 1: transfer aborted: modelfs is shutting down"


async def test_a_failing_mirror_is_logged_rested_and_the_next_endpoint_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoints, asked = _endpoints(), []

    async def read(base: str, at_origin: bool) -> str:
        asked.append(base)
        if base == MIRRORS[0]:
            raise Transient("reset by peer")
        if base == MIRRORS[1]:
            raise ModelNotFound("not there yet")
        return "bytes"

    with caplog.at_level(logging.INFO, logger="modelfs.registry.mirrors"):
        assert await endpoints.first_answer(NAME, read) == "bytes"
    assert asked == [*MIRRORS, "https://registry.example"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"mirror {MIRRORS[0]} failed for {NAME} (reset by peer); using the next endpoint"
    ]
    # The failed mirror rests; the one without the model does not.
    assert endpoints.read_bases(NAME) == [MIRRORS[1], "https://registry.example"]


async def test_shutting_down_ends_the_walk_without_a_warning_or_a_rested_mirror(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoints, asked = _endpoints(), []

    async def read(base: str, at_origin: bool) -> str:
        asked.append(base)
        raise bulk_error(Aborted("transfer aborted: modelfs is shutting down"), "blob 1", "h")

    with (
        caplog.at_level(logging.DEBUG, logger="modelfs.registry.mirrors"),
        pytest.raises(ShuttingDown),
    ):
        await endpoints.first_answer(NAME, read)
    assert asked == [MIRRORS[0]]
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert endpoints.read_bases(NAME) == [*MIRRORS, "https://registry.example"]
