"""Complete blobs appear as symlinks into a read-only view of the cache's blobs/, bound outside
the mount (as root)."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from pathlib import Path

import pytest
from mount.test_mount import TAG_DIR, wait_for
from support.mount import run_modelfs, sha256_path

from modelfs.fs.mountctl import blobs_view_path, find_mount

SMOLLM2 = "library/smollm2:135m"


def mounts_under(path: Path) -> list[str]:
    prefix = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def test_complete_blob_becomes_a_read_only_link(
    proxy, mount_factory, smollm2_pushed, source, model_hex
):
    m = mount_factory()
    tag = m.mountpoint / proxy.host / TAG_DIR
    model = tag / "model.gguf"
    assert not model.is_symlink(), "a blob not yet in the cache must be served by the daemon"
    assert sha256_path(model) == model_hex
    wait_for((m.cache / "blobs" / f"sha256-{model_hex}").exists, "the blob to be published")
    wait_for(model.is_symlink, "model.gguf to become a link once its blob is complete")
    view = blobs_view_path(m.mountpoint)
    assert os.readlink(model) == f"{view}/sha256-{model_hex}"
    entry = find_mount(view)
    assert entry is not None and "ro" in entry.options, "links do not lead into a read-only view"
    assert os.stat(model).st_ino == os.stat(m.cache / "blobs" / f"sha256-{model_hex}").st_ino
    assert os.stat(model).st_size == len(source)
    # The model's bytes only: the model's small blobs may still be on their way (the
    # manifest is written once they are).
    fetched = proxy.blob_bytes(model_hex)
    assert sha256_path(model) == model_hex
    with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert (
            mm[len(source) // 2 : len(source) // 2 + 4096]
            == (source[len(source) // 2 : len(source) // 2 + 4096])
        )
    assert proxy.blob_bytes(model_hex) == fetched, "reading through the link fetched bytes"
    assert os.getxattr(model, "user.modelfs.digest") == f"sha256:{model_hex}".encode()

    # Writing through a link is refused like every other write to the mount.
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    wait_for((tag / "params.json").is_symlink, "params.json to become a link")
    for attempt in (
        lambda: os.open(model, os.O_RDWR),
        lambda: os.open(tag / "params.json", os.O_WRONLY | os.O_TRUNC),
        lambda: os.setxattr(tag / "params.json", "user.x", b"1"),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    # The manifest is not a blob: it stays a file of the mount.
    assert not (tag / "manifest.json").is_symlink()

    m.stop()
    assert mounts_under(m.mountpoint) == []
    assert find_mount(view) is None, "the read-only view outlived the mount"
    assert not view.exists()


def test_links_survive_the_daemon(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
):
    """A model loaded through a link keeps working after kill -9; a new mount cleans up."""
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert sha256_path(tag / "model.gguf") == model_hex
    wait_for((tag / "model.gguf").is_symlink, "model.gguf to become a link")
    with open(tag / "model.gguf", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        m.kill()
        assert hashlib.sha256(mm[:]).hexdigest() == model_hex
    with pytest.raises(OSError) as info:
        os.listdir(m.mountpoint)
    assert info.value.errno == errno.ENOTCONN

    view = blobs_view_path(m.mountpoint)
    assert find_mount(view) is not None, (
        "a killed daemon's view is left until the next mount or umount"
    )

    m2 = mount_factory(root=tmp_path / "a")  # detaches the dead mount, binds its view anew
    tag = m2.mountpoint / proxy.host / TAG_DIR
    wait_for((tag / "model.gguf").is_symlink, "a cached blob to be a link from the start")
    assert sha256_path(tag / "model.gguf") == model_hex
    assert len([p for p in mounts_under(view.parent) if p == str(view)]) == 1
    m2.stop()
    assert mounts_under(m2.mountpoint) == []
    assert find_mount(view) is None


def test_links_no_serves_every_byte_through_the_daemon(
    proxy, mount_factory, smollm2_pushed, model_hex, tmp_path
):
    m = mount_factory("links=no", root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert sha256_path(tag / "model.gguf") == model_hex
    wait_for((m.cache / "blobs" / f"sha256-{model_hex}").exists, "the blob to be published")
    assert not (tag / "model.gguf").is_symlink()
    assert find_mount(blobs_view_path(m.mountpoint)) is None
    assert sha256_path(tag / "model.gguf") == model_hex


def test_removed_blob_stops_being_a_link_at_once(
    proxy, mount_factory, smollm2_pushed, source, model_hex
):
    """`modelfs unlink` (or `ollama rm`) under a mount: the link is dropped as the blob goes
    (blobs/ is watched), not when the kernel's entry expires (30 s here)."""
    m = mount_factory("lookup_ttl=30")
    tag = m.mountpoint / proxy.host / TAG_DIR
    model = tag / "model.gguf"
    assert sha256_path(model) == model_hex
    wait_for(model.is_symlink, "model.gguf to become a link once its blob is complete")
    with open(model, "rb") as kept:
        run_modelfs("unlink", f"{proxy.host}/{SMOLLM2}", "--cache", str(m.cache))
        wait_for(lambda: not model.is_symlink(), "the link to go with its blob", seconds=10)
        # The open handle keeps its data; a new open is served by the daemon, fetched anew.
        assert kept.read(4096) == source[:4096]
    with open(model, "rb") as f:
        assert f.read(1 << 20) == source[: 1 << 20]
