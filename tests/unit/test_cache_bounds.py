"""Cache bounds: sizes users type, and when the cache is over its bound."""

from __future__ import annotations

import pytest

from modelfs.blobs.eviction import CacheBounds, parse_size
from modelfs.errors import UsageError


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
