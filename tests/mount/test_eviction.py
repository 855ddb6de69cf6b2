"""A bounded cache: models fetched through the mount are evicted, least recently used first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from mount.test_mount import wait_for
from support.mount import run_modelfs, sha256_path

MODEL_MIB = 40


@pytest.fixture(scope="module")
def three_models(registry, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Tags a, b, c of library/evict (40 MiB each, different content): tag → (name, sha256)."""
    work = tmp_path_factory.mktemp("evict-src")
    out = {}
    for tag, seed in (("a", 41), ("b", 42), ("c", 43)):
        gguf = work / f"{tag}.gguf"
        write_synthetic_gguf(gguf, MODEL_MIB << 20, seed=seed)
        name = f"{registry.host}/library/evict:{tag}"
        run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(work / "cache"))
        run_modelfs("push", name, "--cache", str(work / "cache"))
        out[tag] = (name, sha256_path(gguf))
    return out


def manifest(m, proxy, tag: str) -> Path:
    return m.cache / "manifests" / proxy.host / "library" / "evict" / tag


def read_whole(m, proxy, tag: str, digest: str) -> None:
    path = m.mountpoint / proxy.host / "library" / "evict" / tag / "model.gguf"
    assert sha256_path(path) == digest
    wait_for(manifest(m, proxy, tag).exists, f"model {tag} to be complete in the cache")


def test_least_recently_used_is_evicted_and_pulled_models_are_pinned(
    proxy, mount_factory, three_models
):
    m = mount_factory(f"cache_max={MODEL_MIB * 5 // 2}M,min_free=0")
    a, b, c = (three_models[t][1] for t in "abc")
    # Pulled on purpose (and the oldest): pinned, never evicted.
    run_modelfs("pull", f"{proxy.host}/library/evict:c", "--cache", str(m.cache))
    read_whole(m, proxy, "a", a)
    assert manifest(m, proxy, "a").exists(), "evicted while within the bound"
    read_whole(m, proxy, "b", b)
    wait_for(lambda: not manifest(m, proxy, "a").exists(), "a (least recently used) to be evicted")
    # The manifest goes first, its blobs after (never a manifest naming a missing blob):
    # the eviction is over once it is logged.
    wait_for(lambda: f"evicted {proxy.host}/library/evict:a " in m.log_text(), "a's eviction")
    assert not (m.cache / "blobs" / f"sha256-{a}").exists()
    assert manifest(m, proxy, "b").exists()
    assert (m.cache / "blobs" / f"sha256-{b}").exists()
    assert manifest(m, proxy, "c").exists(), "a pulled model was evicted"
    assert (m.cache / "blobs" / f"sha256-{c}").exists()


def test_an_open_model_is_not_evicted(proxy, mount_factory, three_models):
    # links=no: every open goes through the daemon, which therefore knows what is open.
    m = mount_factory(f"cache_max={MODEL_MIB * 7 // 4}M,min_free=0,links=no")
    a, b = three_models["a"][1], three_models["b"][1]
    read_whole(m, proxy, "a", a)
    fd = os.open(m.mountpoint / proxy.host / "library/evict/a/model.gguf", os.O_RDONLY)
    try:
        assert sha256_path(m.mountpoint / proxy.host / "library/evict/b/model.gguf") == b
        # Over the bound once b is in: a is the least recently used but open, so b goes instead.
        wait_for(lambda: "evicted" in m.log_text(), "an eviction")
        wait_for(lambda: not (m.cache / "blobs" / f"sha256-{b}").exists(), "b to be evicted")
        assert not manifest(m, proxy, "b").exists()
        assert manifest(m, proxy, "a").exists()
        assert (m.cache / "blobs" / f"sha256-{a}").exists()
        assert os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
