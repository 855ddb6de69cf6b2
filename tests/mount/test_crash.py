"""Crash consistency: what survives a kill -9, and what is not trusted after one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import threading

import pytest
from gguf_synth import write_synthetic_gguf
from mount.test_mount import TAG_DIR, model_records, wait_for
from support.mount import modelfs_cmd, run_modelfs, sha256_path
from support.proxy import Proxy

from modelfs.blobs.partial import present_bytes_in_state
from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.digest import Digest
from modelfs.fs.mountctl import blobs_view_path, find_mount


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
    assert find_mount(blobs_view_path(m.mountpoint)) is None, "the dead mount's view is still bound"


def test_kill_9_push_then_rerun_uploads_only_what_is_missing(
    fresh_registry, smollm2_gguf, model_hex, tmp_path
):
    """Killed between blobs (the registry has some, not the manifest): a re-run finishes."""
    upstream = Proxy(fresh_registry.host).start()
    try:
        name = f"{upstream.host}/library/pushed:1"
        cache = tmp_path / "cache"
        run_modelfs("create", name, "--gguf", str(smollm2_gguf), "--cache", str(cache))
        # The model blob's existence check never answers: the push is stuck after the config.
        upstream.set_faults([{"path": model_hex, "method": "HEAD", "hang_seconds": 120}])
        proc = subprocess.Popen(
            modelfs_cmd("push", name, "--cache", str(cache)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: any(model_hex in r.path for r in upstream.records()),
                "the push to reach the model blob",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        manifests = [r for r in upstream.records() if "/manifests/" in r.path and r.method == "PUT"]
        assert not manifests, "the killed push got as far as the manifest"
        uploaded_before = {r.path for r in upstream.records() if r.method == "HEAD"}

        upstream.clear_faults()
        result = run_modelfs("push", name, "--cache", str(cache))
        assert "already on the registry" in result.stderr, result.stderr
        assert len(uploaded_before) >= 2  # the config was checked (and uploaded) before the kill
        pulled = tmp_path / "pulled"
        run_modelfs("pull", name, "--cache", str(pulled))
        assert sha256_path(pulled / "blobs" / f"sha256-{model_hex}") == model_hex
    finally:
        upstream.stop()


GIB = 1 << 30


@pytest.fixture(scope="module")
def gib_pushed(registry, tmp_path_factory):
    """A 1 GiB GGUF-shaped model on the session registry (the issue's size for this test)."""
    work = tmp_path_factory.mktemp("gib")
    gguf = work / "gib.gguf"
    write_synthetic_gguf(gguf, GIB, seed=5)
    name = f"{registry.host}/library/synthetic:1g"
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(work / "cache"))
    run_modelfs("push", name, "--cache", str(work / "cache"))
    digest = sha256_path(gguf)
    shutil.rmtree(work / "cache")
    gguf.unlink()
    return digest


def test_kill_9_mid_stream_keeps_verified_chunks_and_publishes_nothing_half_written(
    proxy, mount_factory, gib_pushed, tmp_path
):
    digest = gib_pushed
    size = GIB
    m = mount_factory(root=tmp_path / "a")
    path = m.mountpoint / proxy.host / "library/synthetic/1g/model.gguf"
    os.stat(path)
    proxy.set_faults([{"path": digest, "trickle_bps": 16 << 20}])  # still filling when killed
    state = m.cache / ".modelfs" / "partial" / f"sha256-{digest}.state"

    def stream() -> None:
        with contextlib.suppress(OSError):  # the daemon is killed under it
            sha256_path(path)

    t = threading.Thread(target=stream)
    t.start()
    wait_for(
        lambda: (
            state.exists()
            and present_bytes_in_state(state.read_bytes(), Digest(digest), size) >= 8 * CHUNK_BYTES
        ),
        "several chunks to be saved",
    )
    m.kill()
    t.join(60)
    saved = present_bytes_in_state(state.read_bytes(), Digest(digest), size)
    assert 0 < saved < size
    assert not (m.cache / "blobs" / f"sha256-{digest}").exists(), "published a partial blob"
    assert not list((m.cache / "manifests").rglob("1g")), "wrote a manifest for a partial model"

    proxy.clear_faults()
    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    assert sha256_path(m2.mountpoint / proxy.host / "library/synthetic/1g/model.gguf") == digest
    fetched = sum(r.body_bytes for r in model_records(proxy, digest))
    assert fetched <= size - saved, f"refetched saved chunks: {fetched} > {size - saved}"
    wait_for((m2.cache / "blobs" / f"sha256-{digest}").exists, "the blob to be published")


def test_kill_9_right_after_a_cold_header_read_keeps_what_it_fetched(
    proxy, mount_factory, gib_pushed, tmp_path
):
    # The first chunks of a cold read are saved within a second of landing, not only once a
    # stream has gone on for a while: a kill -9 then costs at most that second of fetching.
    digest = gib_pushed
    m = mount_factory(root=tmp_path / "a")
    path = m.mountpoint / proxy.host / "library/synthetic/1g/model.gguf"
    with open(path, "rb") as f:
        header = f.read(64 << 10)  # one chunk, and no readahead
    state = m.cache / ".modelfs" / "partial" / f"sha256-{digest}.state"
    wait_for(
        lambda: (
            state.exists()
            and present_bytes_in_state(state.read_bytes(), Digest(digest), GIB) >= CHUNK_BYTES
        ),
        "the first chunk's progress to be saved",
    )
    m.kill()

    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    with open(m2.mountpoint / proxy.host / "library/synthetic/1g/model.gguf", "rb") as f:
        assert f.read(64 << 10) == header
    fetched = sum(r.body_bytes for r in model_records(proxy, digest))
    assert fetched == 0, f"fetched {fetched} bytes of a chunk saved before the kill"
