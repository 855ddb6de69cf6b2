"""``modelfs status`` and ``-o metrics``: the live figures of a real mount match what happened."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import urllib.request
from typing import Any

import pytest
from mount.test_mount import TAG_DIR, wait_for
from prometheus_client.parser import text_string_to_metric_families
from support.mount import one_line_error, run_modelfs, sha256_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_json(m, *args: str) -> Any:
    return json.loads(run_modelfs("status", *args, "--json", env=m.env).stdout)


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``http://address/metrics``: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def reread_through_the_daemon(path) -> None:
    """Read the whole file again, its pages first dropped from the kernel's cache, so that
    every read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def test_status_and_metrics_count_what_the_mount_fetched_and_served(
    proxy, mount_factory, smollm2_pushed, model_hex, source
):
    port = free_port()
    # links=no: a complete model is read through the daemon, not through a link to the cache.
    m = mount_factory(f"metrics=127.0.0.1:{port}", "links=no")
    model = m.mountpoint / proxy.host / TAG_DIR / "model.gguf"
    assert sha256_path(model) == model_hex

    complete = m.cache / "manifests" / proxy.host / "library/smollm2/135m"

    def counted_all() -> dict[str, Any] | None:
        # Once the model blob lands, its small blobs (template, params, config, chunk index)
        # are fetched in the background and its manifest written: wait for that, then until
        # the daemon (counting each chunk as it lands) and the proxy (recording a request
        # once it has sent the body) have both seen everything.
        if not complete.exists():
            return None
        s = status_json(m, str(m.mountpoint))
        return s if s["fetched_bytes"].get(proxy.host) == proxy.blob_bytes() else None

    first = wait_for(counted_all, "status to count every byte the proxy served")
    assert proxy.blob_bytes(model_hex) == len(source), "the model was not fetched exactly once"
    assert first["mountpoint"] == str(m.mountpoint)
    assert first["cache_root"] == str(m.cache)
    assert first["metrics"] == f"127.0.0.1:{port}"
    assert first["reads"]["miss"] > 0, "a cold read was not counted as a miss"
    assert first["digest_failures"] == {"chunk": 0, "blob": 0}
    assert first["errors"]["EIO"] == 0
    assert first["evictions"] == {"count": 0, "bytes": 0}
    assert first["cache"]["bytes"] >= len(source)

    reread_through_the_daemon(model)
    again = status_json(m, str(m.mountpoint))
    assert again["reads"]["hit"] > first["reads"]["hit"], "re-reading found no hits"
    assert again["reads"]["miss"] == first["reads"]["miss"], "re-reading a complete model missed"
    assert again["fetched_bytes"] == first["fetched_bytes"], "re-reading fetched bytes again"
    assert again["in_flight"] == []

    samples = scrape(first["metrics"])
    host = (("registry", proxy.host),)
    assert samples[("modelfs_fetched_bytes_total", host)] == proxy.blob_bytes()
    assert samples[("modelfs_reads_total", (("result", "hit"),))] == again["reads"]["hit"]
    assert samples[("modelfs_reads_total", (("result", "miss"),))] == again["reads"]["miss"]
    assert samples[("modelfs_cache_bytes", ())] > 0
    assert samples[("modelfs_blobs_in_flight", ())] == 0
    assert samples[("modelfs_digest_failures_total", (("kind", "chunk"),))] == 0
    assert samples[("modelfs_errors_total", (("errno", "EIO"),))] == 0
    requests = samples[("modelfs_fetch_seconds_count", host)]
    assert 0 < requests <= again["range_requests"], "no range request was timed"

    # Without a mountpoint: every mount of this user, in text.
    text = run_modelfs("status", env=m.env).stdout
    assert text.splitlines()[0] == str(m.mountpoint)
    assert f"from {proxy.host}" in text
    assert f"http://127.0.0.1:{port}/metrics" in text


def test_status_of_a_path_no_daemon_serves_is_a_one_line_error(mount_factory, tmp_path):
    m = mount_factory()
    assert status_json(m, str(m.mountpoint))["mountpoint"] == str(m.mountpoint)
    plain = tmp_path / "plain"
    plain.mkdir()
    result = run_modelfs("status", str(plain), env=m.env, check=False)
    assert one_line_error(result) == f"modelfs: no modelfs daemon serves {plain}"
    m.stop()
    result = run_modelfs("status", str(m.mountpoint), env=m.env, check=False)
    assert one_line_error(result) == f"modelfs: no modelfs daemon serves {m.mountpoint}"
    run = m.root / "run" / "modelfs"
    assert not list(run.glob("*.sock")), "the daemon left its control socket behind"
    assert status_json(m) == []


def test_a_metrics_port_in_use_fails_the_mount(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_modelfs(
            "mount",
            str(mnt),
            "--cache",
            str(tmp_path / "cache"),
            "--log",
            str(tmp_path / "modelfs.log"),
            "--metrics",
            f"127.0.0.1:{port}",
            env=env,
            check=False,
            timeout=60,
        )
    assert one_line_error(result).startswith(f"modelfs: cannot serve metrics at 127.0.0.1:{port}: ")
    assert not os.path.ismount(mnt), "mounted although its metrics port was taken"


def test_cache_bounds_in_decimal_units_read_back_as_typed(mount_factory, tmp_path):
    """``-o cache_max=500MB`` is 500,000,000 bytes (``524.3 MB`` before: read as MiB), and a
    config.toml bound reads the same way; status prints them as they were typed."""
    config = tmp_path / "config.toml"
    config.write_text('min_free = "1GB"\n')
    env = {**os.environ, "MODELFS_CONFIG": str(config)}
    m = mount_factory("cache_max=500MB", env=env)
    cache = status_json(m, str(m.mountpoint))["cache"]
    assert cache["max_bytes"] == 500_000_000
    assert cache["min_free_bytes"] == 1_000_000_000
    text = run_modelfs("status", str(m.mountpoint), env=m.env).stdout
    assert "max 500.0 MB, keep 1.0 GB free" in text, text


def test_status_gives_the_cause_of_eio_and_eacces(mount_factory, basic_registry, tmp_path):
    # A registry port nobody listens on, and a registry that wants credentials we lack: the
    # reader sees only EIO and EACCES; status must say why.
    nobody = tmp_path / "no-credentials"
    nobody.mkdir()
    m = mount_factory(env={**os.environ, "DOCKER_CONFIG": str(nobody)})
    m.expect_log(r"needs a username and password")
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(OSError) as unreachable:
        os.stat(m.mountpoint / closed / "library" / "m" / "latest")
    assert unreachable.value.errno == errno.EIO
    with pytest.raises(OSError) as refused:
        os.stat(m.mountpoint / basic_registry.host / "library" / "m" / "latest")
    assert refused.value.errno == errno.EACCES

    recent = status_json(m, str(m.mountpoint))["recent_errors"]
    causes = {(e["operation"], e["errno"]): e["message"] for e in recent}
    assert f"cannot connect to {closed}" in causes.get(("lookup", "EIO"), ""), recent
    assert causes.get(("lookup", "EACCES")) == (
        f"registry {basic_registry.host} needs a username and password: "
        f"run `modelfs login {basic_registry.host}`"
    ), recent
    text = run_modelfs("status", str(m.mountpoint), env=m.env).stdout
    assert "last error" in text
    assert f"lookup EACCES: {causes[('lookup', 'EACCES')]}" in text
    assert f"lookup EIO: {causes[('lookup', 'EIO')]}" in text


def test_missing_xattrs_are_not_counted_as_errors(proxy, mount_factory, smollm2_pushed):
    m = mount_factory()
    tag = m.mountpoint / proxy.host / TAG_DIR
    listing = subprocess.run(["ls", "-la", str(tag)], capture_output=True, text=True, check=True)
    assert "model.gguf" in listing.stdout
    with pytest.raises(OSError) as info:
        os.getxattr(tag / "model.gguf", "user.not.there")
    assert info.value.errno == errno.ENODATA
    errors = status_json(m, str(m.mountpoint))["errors"]
    assert errors == {"EIO": 0}, f"a missing xattr was counted as an error: {errors}"
