"""A cache on a filesystem that fills up: reads are still served, pull and create stop cleanly."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest
from mount.test_mount import TAG_DIR
from support.mount import run_modelfs, sha256_path

SMALL_FS = "24m"  # holds the small blobs and some chunks of the 98 MB model, not all of it


@pytest.fixture
def small_root(tmp_path: Path):
    """A mount root whose ``cache/`` is a small tmpfs (torn down after the mounts using it)."""
    root = tmp_path / "small"
    cache = root / "cache"
    cache.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS}", "tmpfs", str(cache)], check=True
    )
    yield root
    subprocess.run(["umount", "-l", str(cache)], check=False)


def test_full_cache_still_serves_reads(small_root, proxy, mount_factory, smollm2_pushed, model_hex):
    m = mount_factory(root=small_root)
    m.expect_log(r"cannot write the cache \(no space left")
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert sha256_path(tag / "model.gguf") == model_hex
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    # Read again: chunks that reached the disk and chunks that did not both come back right.
    assert sha256_path(tag / "model.gguf") == model_hex
    m.stop()
    warnings = [line for line in m.log_text().splitlines() if "cannot write the cache" in line]
    assert len(warnings) == 1, f"the full disk was reported {len(warnings)} times"
    assert not (m.cache / "blobs" / f"sha256-{model_hex}").exists()
    assert not (m.cache / "manifests").exists() or not any(
        p.is_file() for p in (m.cache / "manifests").rglob("*")
    ), "a manifest was written for a model that is not complete"


def test_pull_into_a_full_cache_fails_cleanly(small_root, registry, smollm2_pushed, model_hex):
    cache = small_root / "cache"
    result = run_modelfs("pull", smollm2_pushed, "--cache", str(cache), check=False, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("modelfs: ") and "no space left" in lines[-1], lines
    assert "Traceback" not in result.stderr
    assert not (cache / "blobs" / f"sha256-{model_hex}").exists()


def test_create_into_a_full_cache_fails_cleanly(small_root, smollm2_gguf, registry):
    cache = small_root / "cache"
    name = f"{registry.host}/library/full:1"
    result = run_modelfs(
        "create", name, "--gguf", str(smollm2_gguf), "--cache", str(cache), check=False
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("modelfs: ") and "no space left" in lines[-1], lines
    assert "Traceback" not in result.stderr
    assert not list((cache / "manifests").rglob("*")) if (cache / "manifests").exists() else True


def test_full_cache_and_a_blob_without_index(
    small_root, proxy, mount_factory, smollm2_noindex_pushed, model_hex
):
    """A blob without a chunk index cannot be checked before it is whole, nor held whole
    without disk: strict reads are ENOSPC (docs/reliability.md), deferred ones are served."""
    m = mount_factory(root=small_root)
    m.expect_log(r"cannot write the cache \(no space left")
    m.expect_log(r"read: .*no space left")
    tag = m.mountpoint / proxy.host / "library/smollm2/noindex"
    with open(tag / "model.gguf", "rb") as f, pytest.raises(OSError) as info:
        f.read(4096)
    assert info.value.errno == errno.ENOSPC
    m.stop()
    m2 = mount_factory("verify=deferred", root=small_root)
    m2.expect_log(r"cannot write the cache \(no space left")
    tag = m2.mountpoint / proxy.host / "library/smollm2/noindex"
    assert sha256_path(tag / "model.gguf") == model_hex
    assert not (m2.cache / "blobs" / f"sha256-{model_hex}").exists()
