"""Faults injected between the mount and a real registry: never a wrong byte, never a hang."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from mount.test_mount import TAG_DIR

from modelfs.blobs.fetchcontext import READ_WAIT_SECONDS
from modelfs.formats.chunks import CHUNK_BYTES

REGION = (5 * CHUNK_BYTES + 1000, 7 * CHUNK_BYTES - 1000)


def read_region(path) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), REGION[1] - REGION[0], REGION[0])


@pytest.mark.parametrize(
    ("fault", "log"),
    [
        ({"cut_after": 100_000, "times": 2}, r"body ended|chunks \d+-\d+ failed"),
        ({"status": 500, "times": 2}, r"HTTP 500|status 500|retry"),
        ({"status": 502, "times": 2}, r"502|retry"),
        ({"status": 503, "times": 2}, r"503|retry"),
        ({"status": 429, "headers": {"Retry-After": "1"}, "times": 1}, r"429|retry"),
        ({"content_range": "bytes 0-9/10", "times": 1}, r"registry sent|retry"),
        ({"full_body": True, "times": 1}, None),
        ({"stall_after": 200_000, "stall_seconds": 20, "times": 1}, r"stall|no progress|retry"),
        ({"trickle_bps": 2048, "times": 1}, r"stall|no progress|retry"),
    ],
    ids=["reset", "500", "502", "503", "429", "content-range", "200-full", "stall", "trickle"],
)
def test_a_fault_ends_in_the_right_bytes(proxy, mount_factory, smollm2_pushed, source, fault, log):
    m = mount_factory()
    if log:
        m.expect_log(log)
    m.expect_log(r"retry \d+ in")
    m.expect_log(r"chunks \d+-\d+ failed")
    proxy.set_faults([{"path": "/blobs/", "method": "GET", **fault}])
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert read_region(tag / "model.gguf") == source[REGION[0] : REGION[1]]


def test_a_dead_registry_is_eio_within_the_bound_and_other_files_still_work(
    proxy, mount_factory, smollm2_pushed, source, model_hex
):
    m = mount_factory()
    m.expect_log(r"chunks \d+-\d+ failed")
    m.expect_log(r"retry \d+ in")
    m.expect_log(r"read: .*503")
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert (tag / "system").read_text() == "You are helpful."  # resolved and cached first
    proxy.set_faults([{"path": model_hex, "status": 503}])
    outcome: dict[str, object] = {}

    def reader() -> None:
        start = time.monotonic()
        try:
            outcome["data"] = read_region(tag / "model.gguf")
        except OSError as e:
            outcome["errno"] = e.errno
        outcome["seconds"] = time.monotonic() - start

    t = threading.Thread(target=reader)
    t.start()
    # Meanwhile the mount serves everything else.
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    assert os.listdir(tag)
    t.join(READ_WAIT_SECONDS + 30)
    assert not t.is_alive(), "the read hung"
    assert outcome.get("errno") == errno.EIO, outcome
    assert outcome["seconds"] <= READ_WAIT_SECONDS  # the documented bound, not a speed check
    proxy.clear_faults()
    assert read_region(tag / "model.gguf") == source[REGION[0] : REGION[1]]
