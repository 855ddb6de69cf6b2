"""llama.cpp (llama-cpp-python, mmap on) runs SmolLM2 from a cold mount, and again after the
daemon is killed mid-load and the mount restarted over the same cache: the same completion as
from the local file, each byte fetched once. SmolLM2 split into GGUF shards and pushed as
Docker Model Runner pushes them loads from its first shard through the mount all the same."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from gguf_synth import smollm2_shards_path
from mount.test_mount import TAG_DIR, model_records, wait_for
from support.modelformats import dmr_v01_gguf, push
from support.mount import run_modelfs

from modelfs.blobs.partial import present_bytes_in_state
from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.digest import Digest

pytestmark = pytest.mark.llama

RUNNER = Path(__file__).resolve().parents[1] / "support" / "llama_run.py"
MODEL_CTX = 8192


def runner_env(tmp: Path) -> dict[str, str]:
    # The runner's log file goes in the test's own directory: a runner killed mid-load (below)
    # cannot remove it, and nothing may be left in /tmp.
    return {**os.environ, "TMPDIR": str(tmp)}


def llama(path: Path, *args: str, tmp: Path, check: bool = True) -> dict:
    """Load ``path`` with llama.cpp in a process of its own; what it generated and sized."""
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=runner_env(tmp),
    )
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)
    return {"returncode": result.returncode}


@pytest.fixture(scope="module")
def local_run(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = llama(smollm2_gguf, "--ctx", str(MODEL_CTX), tmp=tmp_path_factory.mktemp("llama"))
    assert run["text"].strip(), "llama.cpp generated nothing from the local file"
    return run


def test_llama_cpp_runs_a_model_from_a_cold_mount_as_from_the_local_file(
    proxy, mount_factory, smollm2_pushed, smollm2_gguf, model_hex, local_run, tmp_path
):
    m = mount_factory()
    tag = m.mountpoint / proxy.host / TAG_DIR
    path = tag / "model.gguf"
    proxy.reset()
    assert stat.S_ISREG(os.lstat(path).st_mode), "not cold: the blob is already in the cache"
    assert model_records(proxy, model_hex) == [], "a lookup fetched blob bytes"

    run = llama(path, "--ctx", str(MODEL_CTX), tmp=tmp_path)
    assert run["text"] == local_run["text"]
    assert run["weights_mib"] == local_run["weights_mib"]
    fetched = sum(r.body_bytes for r in model_records(proxy, model_hex))
    assert fetched == smollm2_gguf.stat().st_size, "bytes fetched more than once, or not all"

    # What `modelfs show` estimates is what llama.cpp allocated for its KV cache.
    shown = json.loads(
        run_modelfs(
            "show", f"{proxy.host}/library/smollm2:135m", "--json", "--cache", str(m.cache)
        ).stdout
    )
    kv = next(x for x in shown["memory"] if x["context"] == MODEL_CTX)["kv_cache_bytes"]
    assert run["kv_cells"] == MODEL_CTX
    assert kv == run["kv_cache_mib"] * (1 << 20)
    # llama.cpp prints MiB to two decimals.
    assert abs(shown["model"]["weights_bytes"] / (1 << 20) - run["weights_mib"]) < 0.01


def test_llama_cpp_after_the_daemon_is_killed_mid_load_and_the_mount_restarted(
    proxy, mount_factory, smollm2_pushed, smollm2_gguf, model_hex, local_run, tmp_path
):
    size = smollm2_gguf.stat().st_size
    m = mount_factory(root=tmp_path / "a")
    path = m.mountpoint / proxy.host / TAG_DIR / "model.gguf"
    os.stat(path)
    # Slow enough that llama.cpp is still mapping the model in when the daemon dies.
    proxy.set_faults([{"path": model_hex, "trickle_bps": 4 << 20}])
    state = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}.state"
    loading = subprocess.Popen(
        [sys.executable, str(RUNNER), str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=runner_env(tmp_path),
    )
    try:
        wait_for(
            lambda: (
                state.exists()
                and present_bytes_in_state(state.read_bytes(), Digest(model_hex), size)
                >= 4 * CHUNK_BYTES
            ),
            "llama.cpp's reads to have fetched a few chunks",
        )
        m.kill()
        # llama.cpp maps the model with MAP_POPULATE; on a dead FUSE mount this kernel (6.18)
        # keeps it spinning inside mmap() rather than failing it (a plain mmap gets SIGBUS), and
        # only SIGKILL ends it: what a user of a crashed mount has to do too (README).
        try:
            code = loading.wait(10)
        except subprocess.TimeoutExpired:
            loading.kill()
            code = loading.wait(60)
        assert code != 0, "llama.cpp finished loading from a dead mount"
    finally:
        if loading.poll() is None:
            loading.kill()
            loading.wait()
    saved = present_bytes_in_state(state.read_bytes(), Digest(model_hex), size)
    assert 0 < saved < size
    assert not (m.cache / "blobs" / f"sha256-{model_hex}").exists(), "published a partial blob"

    proxy.clear_faults()
    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    run = llama(
        m2.mountpoint / proxy.host / TAG_DIR / "model.gguf", "--ctx", str(MODEL_CTX), tmp=tmp_path
    )
    assert run["text"] == local_run["text"]
    fetched = sum(r.body_bytes for r in model_records(proxy, model_hex))
    assert fetched <= size - saved, f"refetched chunks saved before the kill: {fetched}"
    wait_for((m2.cache / "blobs" / f"sha256-{model_hex}").exists, "the blob to be published")


def test_llama_cpp_loads_a_sharded_gguf_from_its_first_shard_through_the_mount(
    proxy, registry, mount_factory, local_run, tmp_path
):
    shards = smollm2_shards_path()
    art = dmr_v01_gguf(shards)
    push(registry.host, "library/smollm2-split", "latest", art)
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "library/smollm2-split/latest"
    # DMR's names are llama.cpp's split names (<prefix>-%05d-of-%05d.gguf): from the first
    # shard it finds the others beside it.
    names = [f"model-{i:05d}-of-{len(shards):05d}.gguf" for i in range(1, len(shards) + 1)]
    assert sorted(p for p in os.listdir(tag) if not p.startswith(".")) == names
    for name, shard in zip(names, shards, strict=True):
        assert os.stat(tag / name).st_size == shard.stat().st_size, name
    proxy.reset()
    run = llama(tag / names[0], "--ctx", str(MODEL_CTX), tmp=tmp_path)
    assert run["text"] == local_run["text"]
    for shard in shards:
        hex_ = Digest.of_bytes(shard.read_bytes()).hex
        fetched = sum(r.body_bytes for r in model_records(proxy, hex_))
        assert fetched == shard.stat().st_size, f"{shard.name}: {fetched} bytes fetched"
