"""The resolver against an in-process registry: one request per name, caches, the cache fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support.hostile import build_manifest

from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import ModelNotFound, Transient
from modelfs.formats.manifest import MEDIA_TYPE_MODEL
from modelfs.formats.names import Name, parse_name
from modelfs.fs.resolver import Resolver

NAME = parse_name("127.0.0.1:5000/library/model:tag")
RAW = build_manifest(b"{}", [(MEDIA_TYPE_MODEL, "sha256:" + "ab" * 32, 10)])


class FakeRegistry:
    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.error: Exception | None = None

    async def get_manifest(self, name: Name) -> bytes:
        self.calls.append(str(name))
        await trio.sleep(0.01)
        if self.error is not None:
            raise self.error
        raw = self.manifests.get(str(name))
        if raw is None:
            raise ModelNotFound(f"{name}: not found")
        return raw


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    c = BlobCache(tmp_path / "cache")
    c.prepare()
    return c


def resolver(registry: FakeRegistry, cache: BlobCache, **kw: float) -> Resolver:
    return Resolver(registry, cache, anonymous_registry=registry, **kw)  # type: ignore[arg-type]


async def test_lookups_of_one_name_arriving_together_make_one_request(cache: BlobCache) -> None:
    registry = FakeRegistry()
    registry.manifests[str(NAME)] = RAW
    r = resolver(registry, cache)
    got = []

    async def one() -> None:
        got.append((await r.resolve(NAME)).manifest.raw)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert got == [RAW] * 10
    assert len(registry.calls) == 1
    # Within the TTL, answered from memory.
    await r.resolve(NAME)
    assert len(registry.calls) == 1


async def test_the_owner_and_other_users_do_not_share_answers(cache: BlobCache) -> None:
    registry = FakeRegistry()
    registry.manifests[str(NAME)] = RAW
    r = resolver(registry, cache)
    await r.resolve(NAME)
    await r.resolve(NAME, anonymous=True)
    assert len(registry.calls) == 2


async def test_not_found_is_remembered_briefly(cache: BlobCache, autojump_clock: object) -> None:
    # On a virtual clock: a process descheduled for 0.2 s of real time between two lookups
    # (a loaded machine) must not make the remembered answer stale before the second.
    registry = FakeRegistry()
    r = resolver(registry, cache, negative_ttl_seconds=0.2)
    for _ in range(3):
        with pytest.raises(ModelNotFound):
            await r.resolve(NAME)
    assert len(registry.calls) == 1
    await trio.sleep(0.3)
    registry.manifests[str(NAME)] = RAW
    assert (await r.resolve(NAME)).manifest.raw == RAW


async def test_an_unreachable_registry_falls_back_to_the_cached_manifest(
    cache: BlobCache,
) -> None:
    registry = FakeRegistry()
    registry.error = Transient("connection refused")
    r = resolver(registry, cache)
    with pytest.raises(Transient):
        await r.resolve(NAME)
    cache.write_manifest(NAME, RAW)
    assert (await r.resolve(NAME)).manifest.raw == RAW


async def test_a_failure_that_is_not_cached_lets_each_waiter_try_again(cache: BlobCache) -> None:
    registry = FakeRegistry()
    registry.error = Transient("connection reset")
    r = resolver(registry, cache)
    errors = []

    async def one() -> None:
        try:
            await r.resolve(NAME)
        except Transient as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert len(errors) == 3 and len(registry.calls) == 3
