"""Fixtures of the blob layer's unit tests (test_blob_layer.py, test_shared_partial.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelfs.blobs.blobcache import BlobCache

CB = 64 << 10
SIZE = 10 * CB + 1234  # eleven chunks of CB, the last one short


@pytest.fixture
def data() -> bytes:
    """A blob's bytes: SIZE random bytes."""
    return os.urandom(SIZE)


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    c = BlobCache(tmp_path / "cache")
    c.prepare()
    return c
