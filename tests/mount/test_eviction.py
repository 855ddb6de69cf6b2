"""A bounded cache: models fetched through the mount are evicted, least recently used first."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
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
    return manifest_of(m, proxy, "evict", tag)


def manifest_of(m, proxy, model: str, tag: str) -> Path:
    return m.cache / "manifests" / proxy.host / "library" / model / tag


def status_json(m) -> dict:
    return json.loads(run_modelfs("status", str(m.mountpoint), "--json", env=m.env).stdout)


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


# -- two models used at the same moment ---------------------------------------------------------

# The reported scenario (three 96 MiB models under a 200M bound), scaled down four times.
SAME_MOMENT_MIB = 24
SAME_MOMENT_BOUND = "50M"


@pytest.fixture(scope="module")
def same_moment_models(registry, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Tags m0, m1, m2 of library/moment (24 MiB each): tag → (name, sha256)."""
    work = tmp_path_factory.mktemp("moment-src")
    out = {}
    for i, tag in enumerate(("m0", "m1", "m2")):
        gguf = work / f"{tag}.gguf"
        write_synthetic_gguf(gguf, SAME_MOMENT_MIB << 20, seed=60 + i)
        name = f"{registry.host}/library/moment:{tag}"
        run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(work / "cache"))
        run_modelfs("push", name, "--cache", str(work / "cache"))
        out[tag] = (name, sha256_path(gguf))
    return out


def test_two_models_read_at_the_same_moment_then_a_third_stay_within_the_bound(
    proxy, mount_factory, same_moment_models
):
    bound = SAME_MOMENT_BOUND
    m = mount_factory(f"cache_max={bound},min_free=0")
    tag_dir = m.mountpoint / proxy.host / "library" / "moment"
    got: dict[str, str] = {}
    start = threading.Barrier(2)

    def read(tag: str) -> None:
        start.wait(timeout=60)
        got[tag] = sha256_path(tag_dir / tag / "model.gguf")

    readers = [threading.Thread(target=read, args=(t,)) for t in ("m0", "m1")]
    for t in readers:
        t.start()
    for t in readers:
        t.join(300)
    assert got == {t: same_moment_models[t][1] for t in ("m0", "m1")}, "wrong bytes read"
    for tag in ("m0", "m1"):
        wait_for(manifest_of(m, proxy, "moment", tag).exists, f"{tag} to be complete")
    marks = m.cache / ".modelfs" / "lazy" / proxy.host.lower() / "library" / "moment"
    # Two lookups at once mark their models within one tick of the filesystem's clock about
    # as often as not; make it certain: both were used at the same instant.
    same = time.time_ns()
    for tag in ("m0", "m1"):
        os.utime(marks / tag, ns=(same, same))
    assert sha256_path(tag_dir / "m2" / "model.gguf") == same_moment_models["m2"][1]

    def settled():
        # m2 complete too: a small blob of it fetched once its model blob landed (as the
        # status test's template and params) leaves nothing in flight for a moment before
        # its manifest is written.
        if not manifest_of(m, proxy, "moment", "m2").exists():
            return None
        s = status_json(m)
        return s if s["evictions"]["count"] >= 1 and not s["in_flight"] else None

    s = wait_for(settled, "an eviction once m2 was read, and m2 complete in the cache")
    max_bytes = s["cache"]["max_bytes"]
    assert max_bytes == 50 << 20
    wait_for(
        lambda: status_json(m)["cache"]["bytes"] <= max_bytes,
        f"the cache to be back within its {bound} bound",
    )
    s = status_json(m)
    assert s["evictions"]["count"] == 1, "evicted more than the bound needed"
    # At the same instant, by name: m0 goes; m1 and m2 stay.
    assert not manifest_of(m, proxy, "moment", "m0").exists()
    assert manifest_of(m, proxy, "moment", "m1").exists()
    assert manifest_of(m, proxy, "moment", "m2").exists()
    assert s["errors"] == {"EIO": 0}, "a lookup or read failed"
    assert s["failures"] == {}, "a loop of the daemon failed"


def test_a_model_removed_while_it_is_read_leaves_no_partial_behind(
    proxy, mount_factory, same_moment_models
):
    m = mount_factory("cache_max=1G,min_free=0")
    name = f"{proxy.host}/library/moment:m0"
    model = m.mountpoint / proxy.host / "library" / "moment" / "m0" / "model.gguf"
    fd = os.open(model, os.O_RDONLY)
    try:
        assert len(os.pread(fd, 4096, 0)) == 4096
        wait_for(lambda: status_json(m)["cache"]["bytes"] > 0, "the first chunk in the cache")
        # The mount holds the partial blob: rm removes the manifest and cannot discard it.
        run_modelfs("rm", name, "--cache", str(m.cache))
        assert status_json(m)["cache"]["bytes"] >= 4 << 20, "rm discarded a partial in use"
    finally:
        os.close(fd)
    # No model names it any more: once the mount lets it go, it goes, and status agrees
    # with du (which counts only what models name) but for the lock files (a few KiB).
    wait_for(
        lambda: status_json(m)["cache"]["bytes"] <= 64 << 10,
        "the partial blob of the removed model to be discarded",
        seconds=60,
    )
    assert not list((m.cache / ".modelfs" / "partial").glob("*.state"))
    du = run_modelfs("du", "--cache", str(m.cache)).stdout.splitlines()[-1]
    assert du.split()[:3] == ["total", "0", "B"], du


def test_a_model_read_again_after_rm_is_back_in_the_cache_and_evictable(
    proxy, mount_factory, same_moment_models
):
    m = mount_factory("cache_max=1G,min_free=0")
    name, digest = same_moment_models["m1"]
    model = m.mountpoint / proxy.host / "library" / "moment" / "m1" / "model.gguf"
    assert sha256_path(model) == digest
    wait_for(manifest_of(m, proxy, "moment", "m1").exists, "m1 to be complete in the cache")
    blob = str(m.cache / "blobs" / f"sha256-{digest}")

    def daemon_lets_go() -> bool:
        fds = f"/proc/{m.pid()}/fd"
        return all(os.readlink(f"{fds}/{fd}") != blob for fd in os.listdir(fds))

    # Once the daemon has let the blob go (a kernel's release comes after close returns),
    # reading it again after rm needs a fetch.
    wait_for(daemon_lets_go, "the daemon to close the blob")
    run_modelfs("rm", f"{proxy.host}/library/moment:m1", "--cache", str(m.cache))
    # Read again at once (the mount still knows the tag: its lookup has not expired), through
    # the daemon: none of it from the kernel's page cache.
    fd = os.open(model, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        while piece := os.read(fd, 1 << 20):
            h.update(piece)
    finally:
        os.close(fd)
    assert h.hexdigest() == digest
    # Its blobs are back: so is its manifest, or they would be blobs no model names, which
    # eviction never removes and du never counts.
    wait_for(manifest_of(m, proxy, "moment", "m1").exists, "m1's manifest to be written again")
    mark = m.cache / ".modelfs" / "lazy" / proxy.host.lower() / "library" / "moment" / "m1"
    assert mark.exists(), "a model the mount fetched again is pinned, never evicted"
    assert name.endswith("moment:m1")
