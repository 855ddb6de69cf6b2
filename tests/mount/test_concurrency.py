"""Many readers across several models while a model is unlinked and a tag is re-pushed."""

from __future__ import annotations

import os
import random
import threading

from gguf_synth import write_synthetic_gguf
from mount.test_mount import wait_for
from support.mount import run_modelfs

READERS = 32
READS_EACH = 25


def test_readers_across_models_survive_unlink_and_repush(
    proxy,
    registry,
    mount_factory,
    smollm2_pushed,
    smollm2_noindex_pushed,
    synthetic_pushed,
    source,
    synthetic_gguf,
    tmp_path,
):
    old, new = tmp_path / "old.gguf", tmp_path / "new.gguf"
    write_synthetic_gguf(old, 24 << 20, seed=21)
    write_synthetic_gguf(new, 24 << 20, seed=22)
    moving = f"{registry.host}/library/moving:1"
    run_modelfs("create", moving, "--gguf", str(old), "--cache", str(tmp_path / "src-old"))
    run_modelfs("push", moving, "--cache", str(tmp_path / "src-old"))

    m = mount_factory("lookup_ttl=1")
    root = m.mountpoint / proxy.host / "library"
    models = {
        root / "smollm2/135m/model.gguf": source,
        root / "smollm2/noindex/model.gguf": source,
        root / "synthetic/200m/model.gguf": synthetic_gguf.read_bytes(),
        root / "moving/1/model.gguf": old.read_bytes(),
    }
    paths = list(models)
    # One model complete in the cache (its file a link to the blob), so that unlink has work.
    assert (root / "smollm2/135m/model.gguf").read_bytes() == source
    manifest = m.cache / "manifests" / proxy.host / "library/smollm2/135m"
    wait_for(manifest.exists, "the model to be complete in the cache")
    wait_for((root / "smollm2/135m/model.gguf").is_symlink, "its file to become a link")
    wrong: list[str] = []
    started = threading.Barrier(READERS + 1)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        path = paths[seed % len(paths)]
        expected = models[path]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            wrong.append(f"open {path.name}: {e}")
            started.wait()
            return
        try:
            started.wait()
            for _ in range(READS_EACH):
                offset = rng.randrange(len(expected))
                size = rng.choice([1, 4096, 65536, 1 << 20, 3 << 20])
                try:
                    got = os.pread(fd, size, offset)
                except OSError as e:
                    wrong.append(f"{path.parent.parent.name}@{offset}: {e}")
                    continue
                if got != expected[offset : offset + size]:
                    wrong.append(f"{path.parent.parent.name}@{offset}+{size}: wrong bytes")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    started.wait()
    # While they read: remove a model from the cache, and point a tag at new content.
    run_modelfs(
        "unlink", f"{proxy.host}/library/smollm2:135m", "--cache", str(m.cache), check=False
    )
    run_modelfs("create", moving, "--gguf", str(new), "--cache", str(tmp_path / "src-new"))
    run_modelfs("push", moving, "--cache", str(tmp_path / "src-new"))
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert not wrong, wrong[:10]
    assert not manifest.exists()

    # New opens see the new manifest once the lookup TTL has passed.
    fresh = root / "moving/1/model.gguf"
    want = new.read_bytes()[: 1 << 20]

    def sees_new() -> bool:
        with open(fresh, "rb") as f:
            return f.read(1 << 20) == want

    wait_for(sees_new, "a new open to see the re-pushed tag")
