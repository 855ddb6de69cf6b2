"""A docker-registry pull-through mirror that has not stored a blob answers a range request with
the whole blob, copying it from its origin for every such request. A mount reading through it
sends no second request before the first is answered, takes that body as the blob's fill and asks
no more ranges meanwhile: the origin serves what distribution itself costs for one request,
however many readers read at once."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request
from pathlib import Path

from mount.test_mount import TAG_DIR, model_records, wait_for
from support.mount import sha256_path
from support.proxy import Proxy
from support.registry import PullThrough


def mirror_config(tmp_path: Path, origin_host: str, mirror_host: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[[mirror]]\nhost = "{origin_host}"\nendpoints = ["http://{mirror_host}"]\n')
    return config


def test_a_pull_through_mirror_costs_its_origin_one_copy(
    registry, registry_factory, mount_factory, smollm2_pushed, model_hex, source, tmp_path
) -> None:
    origin = Proxy(registry.host).start()  # counts what the origin serves the mirror
    try:
        mirror = registry_factory(pull_through=PullThrough(f"http://{origin.host}"))
        config = mirror_config(tmp_path, registry.host, mirror.host)
        m = mount_factory(env={**os.environ, "MODELFS_CONFIG": str(config)})
        # docker-registry 2.8 as a pull-through cache sometimes answers 500 (with or without
        # a body) when it is asked for several blobs it has not stored at once: the mount
        # then reads them from the origin, as it should.
        m.expect_log(r"mirror http://\S+ failed for .*registry answered 500\b")
        model = m.mountpoint / registry.host / TAG_DIR / "model.gguf"
        # Readers at the start, the middle and the end at once, as a loader and kernel
        # readahead make them: without the whole-blob fill, each would be a range request,
        # and each range request an upstream copy.
        middle, end = len(source) // 2, len(source) - 4096
        got: dict[int, bytes] = {}

        def read_at(offset: int) -> None:
            with open(model, "rb") as f:
                f.seek(offset)
                got[offset] = f.read(4096)

        threads = [threading.Thread(target=read_at, args=(o,)) for o in (0, middle, end)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for offset, data in got.items():
            assert data == source[offset : offset + 4096]
        assert sha256_path(model) == model_hex
        served = sum(r.body_bytes for r in model_records(origin, model_hex))
        # docker-registry itself fetches a blob twice for the first request it cannot serve:
        # once to store it, once to stream it to the client (distribution's proxyblobstore).
        # Each further range request modelfs sent would cost another copy (three readers at
        # once: 3.1x before modelfs waited for the first answer and took the whole body).
        assert served <= 2 * len(source), f"the origin served {served / len(source):.2f}x"
        assert "answered a range request with the whole blob" in m.log_text()
    finally:
        origin.stop()


def test_a_mirror_that_has_the_blob_is_read_by_ranges(
    registry, registry_factory, mount_factory, smollm2_pushed, model_hex, source, tmp_path
) -> None:
    origin = Proxy(registry.host).start()
    try:
        mirror = registry_factory(pull_through=PullThrough(f"http://{origin.host}"))
        # Warm the mirror: it stores the blob once a whole copy went through it.
        url = f"http://{mirror.host}/v2/library/smollm2/blobs/sha256:{model_hex}"
        with urllib.request.urlopen(url, timeout=60) as r:
            assert hashlib.sha256(r.read()).hexdigest() == model_hex
        # distribution stores it from a second fetch of its own, which may end after the
        # copy it streamed: the mirror has the blob once its repository links it.
        layers = mirror.storage / "docker/registry/v2/repositories/library/smollm2/_layers"
        wait_for((layers / "sha256" / model_hex / "link").exists, "the mirror to store it", 120)
        origin.reset()
        config = mirror_config(tmp_path, registry.host, mirror.host)
        m = mount_factory(env={**os.environ, "MODELFS_CONFIG": str(config)})
        # docker-registry 2.8 as a pull-through cache sometimes answers 500 (with or without
        # a body) when it is asked for several blobs it has not stored at once: the mount
        # then reads them from the origin, as it should.
        m.expect_log(r"mirror http://\S+ failed for .*registry answered 500\b")
        model = m.mountpoint / registry.host / TAG_DIR / "model.gguf"
        with open(model, "rb") as f:
            f.seek(len(source) // 2)
            assert f.read(4096) == source[len(source) // 2 : len(source) // 2 + 4096]
        assert model_records(origin, model_hex) == []
        assert "answered a range request with the whole blob" not in m.log_text()
    finally:
        origin.stop()
