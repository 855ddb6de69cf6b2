"""Crash consistency: what survives a kill -9, and what is not trusted after one."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess

import pytest
from mount.test_mount import TAG_DIR, model_records, wait_for
from support.mount import modelfs_cmd

from modelfs.chunks import CHUNK_BYTES


def test_corrupted_partial_data_is_detected_and_refetched(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
):
    region = (3 * CHUNK_BYTES, 5 * CHUNK_BYTES)
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert os.pread(f.fileno(), region[1] - region[0], region[0]) == source[slice(*region)]
    m.stop()
    partial = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}"
    with open(partial, "r+b") as f:  # a torn write, or a disk that lied
        os.pwrite(f.fileno(), b"\0" * 4096, region[0] + 12345)

    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    m2.expect_log(r"chunk 3 on disk does not match the chunk index; refetching")
    tag = m2.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert os.pread(f.fileno(), region[1] - region[0], region[0]) == source[slice(*region)]
    spans = [r.span for r in model_records(proxy, model_hex)]
    assert any(s and s[0] <= region[0] < s[1] for s in spans), "the bad chunk was not refetched"
    assert not any(s and s[0] <= region[0] + CHUNK_BYTES < s[1] for s in spans), (
        "the good chunk next to it was refetched"
    )


def test_kill_9_pull_then_rerun_resumes(proxy, synthetic_pushed, synthetic_gguf, tmp_path):
    digest = hashlib.sha256(synthetic_gguf.read_bytes()).hexdigest()
    size = synthetic_gguf.stat().st_size
    name = synthetic_pushed.replace(synthetic_pushed.split("/")[0], proxy.host, 1)
    cache = tmp_path / "cache"
    # Slow enough that the pull is still going when it is killed.
    proxy.set_faults([{"path": digest, "trickle_bps": 8 << 20}])
    state = cache / ".modelfs" / "partial" / f"sha256-{digest}.state"
    proc = subprocess.Popen(
        modelfs_cmd("pull", name, "--cache", str(cache)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(state.exists, "the pull to save its progress", 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (cache / "blobs" / f"sha256-{digest}").exists(), "published a partial blob"

    proxy.clear_faults()
    proxy.reset()
    result = subprocess.run(
        modelfs_cmd("pull", name, "--cache", str(cache)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    fetched = sum(r.body_bytes for r in model_records(proxy, digest))
    assert fetched < size, "the re-run fetched the whole blob again"
    blob = cache / "blobs" / f"sha256-{digest}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest


def test_umount_of_a_dead_mount(proxy, mount_factory, smollm2_pushed, model_hex, tmp_path):
    """After kill -9 the mount is dead ("Transport endpoint is not connected"); umount clears it."""
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:  # a complete blob: its link's view is mounted too
        f.read()
    wait_for((m.cache / "blobs" / f"sha256-{model_hex}").exists, "the blob to be published")
    m.kill()
    with pytest.raises(OSError) as info:
        os.listdir(m.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    result = subprocess.run(
        modelfs_cmd("umount", str(m.mountpoint)), capture_output=True, text=True, env=m.env
    )
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(m.mountpoint)
    with open("/proc/self/mountinfo") as f:
        assert str(m.mountpoint) not in f.read(), "something of the dead mount is still mounted"
