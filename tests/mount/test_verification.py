"""Verification policies through a real mount: models with no chunk index, verify=deferred,
and a larger synthetic model read sequentially."""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest

from modelfs.formats.chunks import CHUNK_BYTES

WAIT_SECONDS = 30.0


def wait_for(predicate, what: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def model_bytes(proxy, digest_hex: str) -> int:
    return sum(r.body_bytes for r in proxy.blob_records() if digest_hex in r.path)


def test_without_index_the_whole_blob_is_verified_before_any_byte(
    proxy, mount_factory, smollm2_noindex_pushed, source, model_hex
):
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "library/smollm2/noindex"
    assert "chunks.json" not in os.listdir(tag)
    with open(tag / "model.gguf", "rb") as f:
        assert f.read(4096) == source[:4096]
    # Strict policy: nothing was served before the whole blob had arrived and matched.
    assert model_bytes(proxy, model_hex) >= len(source)
    assert (m.cache / "blobs" / f"sha256-{model_hex}").stat().st_size == len(source)


def test_without_index_a_flipped_byte_is_eio_and_nothing_is_published(
    proxy, mount_factory, smollm2_noindex_pushed, source, model_hex
):
    m = mount_factory()
    m.expect_log(r"whole-blob sha256 is .* discarding the fetched data")
    m.expect_log(r"read: blob .* does not match its digest")
    tag = m.mountpoint / proxy.host / "library/smollm2/noindex"
    bad = 17 * CHUNK_BYTES + 99
    proxy.set_faults([{"path": "/blobs/", "flip_at": bad}])
    with open(tag / "model.gguf", "rb") as f, pytest.raises(OSError) as info:
        f.read(4096)
    assert info.value.errno == errno.EIO
    assert not (m.cache / "blobs" / f"sha256-{model_hex}").exists()
    assert not (m.cache / "manifests").exists() or not any((m.cache / "manifests").rglob("noindex"))
    proxy.clear_faults()
    with open(tag / "model.gguf", "rb") as f:
        assert f.read(4096) == source[:4096], "a new open must fetch the blob again"


def test_deferred_serves_as_it_arrives_and_catches_a_lie_at_the_end(
    proxy, mount_factory, smollm2_noindex_pushed, source, model_hex
):
    m = mount_factory("verify=deferred")
    m.expect_log(r"whole-blob sha256 is .* discarding the fetched data")
    m.expect_log(r"read: blob .* does not match its digest")
    tag = m.mountpoint / proxy.host / "library/smollm2/noindex"
    with open(tag / "model.gguf", "rb") as f:
        assert f.read(4096) == source[:4096]
        assert 0 < model_bytes(proxy, model_hex) <= CHUNK_BYTES, "deferred must not fetch it all"
    bad = 20 * CHUNK_BYTES + 7
    proxy.set_faults([{"path": "/blobs/", "flip_at": bad}])

    def eio_at(fd: int, offset: int) -> bool:
        try:
            os.pread(fd, 4096, offset)
        except OSError as e:
            return e.errno == errno.EIO
        return False

    def fetches_from_0() -> int:
        return sum(
            1
            for r in proxy.blob_records()
            if model_hex in r.path and r.span is not None and r.span[0] == 0
        )

    fd = os.open(tag / "model.gguf", os.O_RDONLY)
    try:
        # Stream it: bytes are served as they arrive; readahead completes the blob while
        # the reader is still going, the whole-blob check catches the lie, and from then
        # on reads fail rather than serve anything more.
        got = 0
        try:
            while piece := os.pread(fd, 1 << 20, got):
                got += len(piece)
        except OSError as e:
            assert e.errno == errno.EIO
        wait_for(lambda: "whole-blob sha256" in m.log_text(), "the whole-blob check")
        # Pages already in the kernel's cache were dropped: a read of offset 0 reaches the
        # daemon again, which fails it or (the reader having been told of the failure
        # already) fetches that chunk afresh; never the discarded pages from the cache.
        before = fetches_from_0()
        wait_for(
            lambda: eio_at(fd, 0) or fetches_from_0() > before,
            "reads after a whole-blob mismatch to reach the daemon again",
        )
    finally:
        os.close(fd)
    assert not (m.cache / "blobs" / f"sha256-{model_hex}").exists()


def test_synthetic_model_streams_with_growing_requests(
    proxy, mount_factory, synthetic_pushed, synthetic_gguf
):
    expected = hashlib.sha256(synthetic_gguf.read_bytes()).hexdigest()
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "library/synthetic/200m"
    h = hashlib.sha256()
    with open(tag / "model.gguf", "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    assert h.hexdigest() == expected
    spans = [r.span for r in proxy.blob_records() if expected in r.path and r.span]
    assert max(b - a for a, b in spans) > CHUNK_BYTES, (
        "sequential reads never asked for more than a chunk"
    )
    fetched = sum(r.body_bytes for r in proxy.blob_records() if expected in r.path)
    assert fetched == synthetic_gguf.stat().st_size, "some bytes were fetched twice"
    wait_for(lambda: (m.cache / "blobs" / f"sha256-{expected}").exists(), "publication")


@pytest.mark.parametrize("push", ["push=yes", "push=no"])
def test_a_cold_mmap_and_stream_read_the_right_bytes_with_or_without_pushing_pages(
    proxy, mount_factory, synthetic_pushed, synthetic_gguf, push
):
    """-o push=yes puts checked chunks into the page cache as they land: what a reader then
    finds there (without a READ reaching the daemon) must be the same bytes."""
    import mmap

    data = synthetic_gguf.read_bytes()
    m = mount_factory(push)
    path = m.mountpoint / proxy.host / "library/synthetic/200m/model.gguf"
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        # Touch every page in order (as llama.cpp loads), then compare the whole mapping.
        for off in range(0, len(data), 1 << 16):
            _ = mm[off]
        assert hashlib.sha256(mm[:]).hexdigest() == hashlib.sha256(data).hexdigest()
    subprocess_drop_caches()
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def subprocess_drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
