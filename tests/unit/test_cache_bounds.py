"""Cache bounds: sizes users type, and when the cache is over its bound."""

from __future__ import annotations

import pytest

from modelfs.blobs.eviction import CacheBounds, parse_size
from modelfs.errors import UsageError


@pytest.mark.parametrize(
    ("text", "want"),
    [("1234", 1234), ("500M", 500 << 20), ("500MiB", 500 << 20), ("20g", 20 << 30), ("1.5K", 1536)],
)
def test_sizes(text, want):
    assert parse_size(text) == (want, None)


def test_percentages_only_where_allowed():
    assert parse_size("10%", percent=True) == (0, 10.0)
    with pytest.raises(UsageError, match="not a size"):
        parse_size("10%")


@pytest.mark.parametrize("text", ["", "M", "-1G", "ten", "100%", "5X"])
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
