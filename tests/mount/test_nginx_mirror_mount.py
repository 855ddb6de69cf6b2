"""Mounts reading through the shipped nginx mirror (mirror/nginx.conf), as a fleet's nodes do.

Each mount is a node with an empty cache and ``[[mirror]]`` pointing at nginx; the counting
proxy sits between nginx and the registry, so what the registry served the whole fleet is on
record.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount.test_mount import TAG_DIR, model_records
from support.mount import sha256_path
from support.nginx import NginxMirror

NODES = 3


@pytest.fixture
def nginx_mirror(proxy, tmp_path: Path) -> Iterator[NginxMirror]:
    """The shipped mirror in front of the counting proxy. Ask for it before ``mount_factory``:
    it is then stopped after the mounts, which may still be fetching when the test ends."""
    mirror = NginxMirror(tmp_path / "nginx", proxy.host).start()
    yield mirror
    mirror.stop()
    assert mirror.problems() == [], "nginx logged errors"


def test_nodes_reading_a_model_through_the_nginx_mirror_cost_the_registry_one_copy(
    registry, proxy, nginx_mirror, mount_factory, smollm2_pushed, model_hex, source, tmp_path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[[mirror]]\nhost = "{registry.host}"\nendpoints = ["{nginx_mirror.url}"]\n')
    env = {**os.environ, "MODELFS_CONFIG": str(config)}
    nodes = [mount_factory(env=env) for _ in range(NODES)]
    models: list[Path] = [m.mountpoint / registry.host / TAG_DIR / "model.gguf" for m in nodes]
    digests: dict[int, str] = {}
    barrier = threading.Barrier(NODES)

    def read(i: int) -> None:
        barrier.wait(30)
        digests[i] = sha256_path(models[i])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(NODES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert digests == dict.fromkeys(range(NODES), model_hex), "a node read the wrong bytes"

    served = [r for r in model_records(proxy, model_hex) if r.status in (200, 206)]
    assert sum(r.body_bytes for r in served) == len(source), (
        f"{NODES} nodes cost the registry "
        f"{sum(r.body_bytes for r in served) / len(source):.2f} copies of the model"
    )
    assert all(r.span is not None for r in served), "the mirror asked for a whole blob"
    assert len({r.range for r in served}) == len(served), "a slice was fetched twice"
