"""Cache bounds: sizes users type, when the cache is over its bound, and the order of eviction."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor, parse_size
from modelfs.errors import UsageError
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_MODEL,
    Layer,
    build_manifest,
)
from modelfs.formats.names import Name, parse_name


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1234", 1234),
        ("1234B", 1234),
        ("500M", 500 << 20),
        ("500MiB", 500 << 20),
        ("500mib", 500 << 20),
        ("20g", 20 << 30),
        ("1.5K", 1536),
        # As docker and ollama print sizes, and as modelfs prints them: MB is 10^6 bytes.
        ("500MB", 500_000_000),
        ("500mb", 500_000_000),
        ("1.5GB", 1_500_000_000),
        ("2kB", 2000),
        ("1TB", 10**12),
        ("1TiB", 1 << 40),
    ],
)
def test_sizes(text, want):
    assert parse_size(text) == (want, None)


def test_500MB_reads_back_as_500_MB():
    from modelfs.commands.progress import human_bytes

    assert human_bytes(parse_size("500MB")[0]) == "500.0 MB"
    assert human_bytes(parse_size("20GB")[0]) == "20.0 GB"


def test_percentages_only_where_allowed():
    assert parse_size("10%", percent=True) == (0, 10.0)
    with pytest.raises(UsageError, match="not a size"):
        parse_size("10%")


@pytest.mark.parametrize(
    "text", ["", "M", "-1G", "ten", "100%", "5X", "5BM", "5MIBB", "inf", "nan", "1e999G", "5 M B"]
)
def test_bad_sizes_are_one_line_usage_errors(text):
    with pytest.raises(UsageError):
        parse_size(text, percent=True)


def test_over_the_bound():
    gib = 1 << 30
    assert not CacheBounds(max_bytes=10 * gib, min_free_percent=None).over(5 * gib, 0, 100 * gib)
    assert CacheBounds(max_bytes=10 * gib, min_free_percent=None).over(
        11 * gib, 50 * gib, 100 * gib
    )
    # 10% of a 100 GiB filesystem must stay free.
    assert CacheBounds().over(1, 9 * gib, 100 * gib)
    assert not CacheBounds().over(1, 11 * gib, 100 * gib)
    assert CacheBounds(min_free_bytes=20 * gib, min_free_percent=None).over(1, 19 * gib, 100 * gib)


# -- models marked in the same instant --------------------------------------------------------


def _cache_with_marks(tmp_path: Path, *names: Name, mtime_ns: int) -> BlobCache:
    """A cache where ``names`` were all marked as used at exactly ``mtime_ns`` (the marks of
    two readers' lookups touched within one tick of the filesystem's clock)."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    for name in names:
        cache.mark_lazy(name)
        mark = cache.lazy_dir.joinpath(*(p.lower() for p in name.parts))
        os.utime(mark, ns=(mtime_ns, mtime_ns))
    return cache


M0, M1, M2 = (parse_name(f"127.0.0.1:5000/library/m:{t}") for t in ("m0", "m1", "m2"))


def test_models_marked_in_the_same_instant_come_by_name(tmp_path):
    cache = _cache_with_marks(tmp_path, M1, M2, M0, mtime_ns=1_700_000_000_123_456_789)
    cache.mark_lazy(parse_name("127.0.0.1:5000/library/a:later"))
    order = [str(name) for _t, name in cache.lazy_models()]
    assert order == [str(M0), str(M1), str(M2), "127.0.0.1:5000/library/a:later"]


def test_eviction_with_equal_marks_evicts_the_first_by_name(tmp_path):
    cache = _cache_with_marks(tmp_path, M1, M0, mtime_ns=1_700_000_000_000_000_000)
    for name, seed in ((M0, b"0"), (M1, b"1")):
        data = seed * 70_000
        digest = Digest.of_bytes(data)
        cache.store_bytes(data, digest)
        config = b"{}"
        cache.store_bytes(config, Digest.of_bytes(config))
        cache.write_manifest(
            name,
            build_manifest(
                Layer(Digest.of_bytes(config), MEDIA_TYPE_DOCKER_CONFIG, len(config)),
                [Layer(digest, MEDIA_TYPE_MODEL, len(data))],
            ),
        )
    # Room for one model (and the shared config), not two.
    bounds = CacheBounds(max_bytes=120_000, min_free_percent=None)
    evictor = Evictor(cache, bounds, in_use=set, in_thread=None)  # type: ignore[arg-type]
    assert evictor._evict(set()) == [M0]
    assert cache.find_manifest(M1) is not None


async def test_a_failing_helper_never_fails_the_lookup_that_recorded_a_use(tmp_path, caplog):
    cache = _cache_with_marks(tmp_path, M0, mtime_ns=1_700_000_000_000_000_000)

    def broken() -> list[tuple[float, Name]]:
        raise TypeError("'<' not supported between instances of 'Name' and 'Name'")

    cache.lazy_models = broken  # type: ignore[method-assign]
    cache.write_manifest(M1, _one_blob_manifest(cache))

    async def in_thread(fn, *args):
        return fn(*args)

    evictor = Evictor(cache, CacheBounds(), in_use=set, in_thread=in_thread)
    with caplog.at_level(logging.DEBUG, logger="modelfs.tasks"):
        await evictor.used(M1)  # complete in the cache: asks lazy_models whether it is pinned
        evictor._touched.clear()
        await evictor.used(M1)
    assert evictor.failures.counts == {"recording the use of a model": 2}
    assert "TypeError" in evictor.failures.last["recording the use of a model"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None, "not logged exactly once"


async def _inline(fn, *args):  # the daemon's worker thread, here the test's own
    return fn(*args)


def _one_blob_manifest(cache: BlobCache) -> bytes:
    config = b"{}"
    cache.store_bytes(config, Digest.of_bytes(config))
    return build_manifest(Layer(Digest.of_bytes(config), MEDIA_TYPE_DOCKER_CONFIG, len(config)), [])


def test_partials_no_manifest_names_are_discarded_unless_in_use_or_named(tmp_path):
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    orphan, in_use, named = (Digest.of_bytes(bytes([i])) for i in range(3))
    for digest in (orphan, in_use, named):
        cache.partial_path(digest).write_bytes(b"x" * 8192)
        cache.state_path(digest).write_bytes(b"{}")
    config = b"{}"
    cache.store_bytes(config, Digest.of_bytes(config))
    cache.write_manifest(
        M0,
        build_manifest(
            Layer(Digest.of_bytes(config), MEDIA_TYPE_DOCKER_CONFIG, len(config)),
            [Layer(named, MEDIA_TYPE_MODEL, 1 << 20)],
        ),
        pending=True,
    )
    holder = cache.lock_blob(in_use)  # another modelfs process reading it
    assert holder is not None
    try:
        evictor = Evictor(cache, CacheBounds(max_bytes=1 << 40), set, _inline)
        trio.run(evictor.check)
        assert evictor.evicted == []
    finally:
        os.close(holder)
    assert set(cache.partial_digests()) == {in_use, named}
    assert evictor.evicted_bytes >= 8192
