"""The command line as users type it: Ctrl-C during a pull stopping at once with its progress
kept."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.mount import modelfs_cmd, run_modelfs
from support.proxy import Proxy

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.inventory import present_bytes
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import parse_name

# Generous for a loaded machine: a pull asked to stop must be gone well within this.
INTERRUPT_SECONDS = 5.0
WAIT_SECONDS = 60.0


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A user of their own: home, Docker config, cache, runtime dir; no config file."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    return {
        **os.environ,
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "MODELFS_CONFIG": str(tmp_path / "config.toml"),
        "OLLAMA_MODELS": str(tmp_path / "cache"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }


def wait_for(predicate, what: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def saved_bytes(cache: Path, name: str) -> int:
    """Bytes of the model the cache holds checked and saved (what ``ls`` counts as present)."""
    bc = BlobCache(cache)
    raw = bc.read_manifest(parse_name(name), pending=True)
    if raw is None:
        return 0
    return sum(present_bytes(bc, layer) for layer in parse_manifest(raw).blobs)


def test_ctrl_c_stops_a_slow_pull_at_once_and_the_next_pull_resumes(
    proxy: Proxy, smollm2_pushed: str, env: dict[str, str], tmp_path: Path
) -> None:
    name = f"{proxy.host}/library/smollm2:135m"
    # 1 MB/s per connection: the whole model takes minutes.
    proxy.set_faults([{"path": "/blobs/", "trickle_bps": 1_000_000}])
    cache = tmp_path / "cache"
    pull = subprocess.Popen(
        modelfs_cmd("pull", name, "--insecure-registry", proxy.host, "--cache", str(cache)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # Some of the model is in (a chunk checked and saved), far from all of it.
        wait_for(lambda: saved_bytes(cache, name) >= 4 << 20, "the pull to save a chunk")
        pull.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            _, stderr = pull.communicate(timeout=INTERRUPT_SECONDS * 4)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the pull was still running {INTERRUPT_SECONDS * 4:.0f}s after Ctrl-C"
            ) from None
        took = time.monotonic() - sent
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.communicate()
    assert took < INTERRUPT_SECONDS, f"the pull took {took:.1f}s to stop after Ctrl-C"
    assert pull.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "modelfs: interrupted", stderr
    assert "Traceback" not in stderr
    assert BlobCache(cache).read_manifest(parse_name(name)) is None, "the pull had finished"
    kept = saved_bytes(cache, name)
    assert kept >= 4 << 20, "the interrupted pull lost what it had fetched"

    proxy.clear_faults()
    proxy.reset()
    run_modelfs("pull", name, "--insecure-registry", proxy.host, "--cache", str(cache), env=env)
    raw = BlobCache(cache).read_manifest(parse_name(name))
    assert raw is not None
    total = parse_manifest(raw).total_bytes
    again = proxy.blob_bytes()
    assert again <= total - kept, (
        f"the second pull fetched {again} bytes of a {total}-byte model of which "
        f"{kept} were kept: it did not resume"
    )
