"""Processes sharing one cache fetch each byte once: two mounts, or a mount and a ``pull``.

Both fill one partial file chunk by chunk (``modelfs.blobs.sharing``); the registry is
reached through the counting proxy, slowed down so that both are fetching at once.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
from pathlib import Path

from mount.test_mount import TAG_DIR, model_records, wait_for
from mount.test_status import status_json
from support.mount import modelfs_cmd, sha256_path

PIECE = 1 << 20


def read_forward(path: Path, opened: threading.Barrier | None = None) -> bytes:
    with open(path, "rb") as f:
        if opened is not None:
            opened.wait(60)
        return f.read()


def read_backward(path: Path, size: int, opened: threading.Barrier | None = None) -> bytes:
    parts = []
    with open(path, "rb") as f:
        if opened is not None:
            opened.wait(60)
        end = size
        while end > 0:
            start = max(0, end - 4 * PIECE)
            f.seek(start)
            parts.append(f.read(end - start))
            end = start
    return b"".join(reversed(parts))


def served_once(proxy, model_hex: str, size: int) -> None:
    """The registry served every byte of the model blob exactly once."""
    # The proxy records a request once its handler is done, which may be just after the
    # client has the last byte.
    wait_for(
        lambda: sum(r.body_bytes for r in model_records(proxy, model_hex)) >= size,
        "the proxy to record every request",
        10,
    )
    records = model_records(proxy, model_hex)
    spans = sorted(r.span for r in records if r.span is not None)
    for (_a, end), (start, _b) in itertools.pairwise(spans):
        assert start >= end, f"bytes {start}-{end - 1} were fetched twice"
    served = sum(r.body_bytes for r in records)
    assert served == size, f"the registry served {served / size:.2f}x the model"


def test_two_mounts_of_one_cache_fetch_each_byte_once(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
) -> None:
    cache = tmp_path / "cache"
    proxy.set_faults([{"path": model_hex, "trickle_bps": 32 << 20}])
    a = mount_factory(root=tmp_path / "a", cache=cache)
    b = mount_factory(root=tmp_path / "b", cache=cache)
    got: dict[str, bytes] = {}
    # Both files open before either is read: a mount that opened it only once the other had
    # read and published the whole blob (its lookup slow on a loaded machine) would read
    # the published blob and share nothing.
    opened = threading.Barrier(2)
    model_a = a.mountpoint / proxy.host / TAG_DIR / "model.gguf"
    model_b = b.mountpoint / proxy.host / TAG_DIR / "model.gguf"
    readers = [
        threading.Thread(target=lambda: got.__setitem__("a", read_forward(model_a, opened))),
        threading.Thread(
            target=lambda: got.__setitem__("b", read_backward(model_b, len(source), opened))
        ),
    ]
    for t in readers:
        t.start()
    for t in readers:
        t.join(300)
    assert got.get("a") == source and got.get("b") == source
    served_once(proxy, model_hex, len(source))
    # Each daemon counts what it fetched and what it took from the other (modelfs status).
    figures = [status_json(m, str(m.mountpoint)) for m in (a, b)]
    fetched = sum(f["fetched_bytes"].get(proxy.host, 0) for f in figures)
    taken = sum(f["from_processes_bytes"] for f in figures)
    assert taken > 0, "neither mount used a chunk the other fetched"
    assert fetched >= len(source)
    blob = cache / "blobs" / f"sha256-{model_hex}"
    wait_for(blob.exists, "the blob to be published")
    assert sha256_path(blob) == model_hex


def test_a_pull_while_a_mount_reads_fetches_each_byte_once(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
) -> None:
    cache = tmp_path / "cache"
    proxy.set_faults([{"path": model_hex, "trickle_bps": 16 << 20}])
    m = mount_factory(root=tmp_path / "m", cache=cache)
    model = m.mountpoint / proxy.host / TAG_DIR / "model.gguf"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_backward(model, len(source))))
    reader.start()
    try:
        wait_for(lambda: model_records(proxy, model_hex), "the mount to start fetching")
        name = smollm2_pushed.replace(smollm2_pushed.split("/")[0], proxy.host, 1)
        result = subprocess.run(
            modelfs_cmd("pull", name, "--cache", str(cache)),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        reader.join(300)
    assert result.returncode == 0, result.stderr
    assert got == [source]
    served_once(proxy, model_hex, len(source))
    assert sha256_path(cache / "blobs" / f"sha256-{model_hex}") == model_hex
