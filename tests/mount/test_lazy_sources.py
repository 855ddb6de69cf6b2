"""Models modelfs did not create, read lazily: through the registry's own chunksums (Ollama's), and a local index.

A model pushed in Ollama's layout has no chunk index. The registry.ollama.ai look-alike
serves chunksums for its blobs, behind its auth, with the CDN as ``Content-Location``;
docker-registry answers 404. Reads are served as soon as the ranges they touch arrived
and matched; a body that does not hold up, or digests that keep failing, fall back to
whole-blob verification: slower, never wrong bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from mount.test_mount import model_records, wait_for
from mount.test_mount_auth import push_through_front
from support.mount import run_modelfs, sha256_path
from support.ollama_front import CDN, OllamaFront, chunksums_body
from support.proxy import Proxy

from modelfs.formats.digest import Digest

MODEL_BYTES = 40 << 20
RANGE_BYTES = 3 << 20  # the look-alike's first range is half of it: 1.5 MiB


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chunksums-gguf") / "m.gguf"
    write_synthetic_gguf(path, MODEL_BYTES, seed=31)
    return path


def cdn_bytes(cdn: CDN, digest: str) -> int:
    total = 0
    for r in cdn.requests:
        if digest not in r.path:
            continue
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", str(r.headers.get("Range") or ""))
        total += int(m.group(2)) - int(m.group(1)) + 1 if m else MODEL_BYTES
    return total


def ollama_layout(front: OllamaFront, gguf: Path, tmp_path: Path, tag: str) -> dict[str, str]:
    """``gguf`` pushed through the front without a chunk index, as Ollama pushes models."""
    return push_through_front(front, gguf, tmp_path, tag, "--no-chunk-index")[0]


def test_a_model_in_ollamas_layout_is_read_lazily_through_its_chunksums(
    ollama_front: tuple[OllamaFront, CDN], mount_factory, gguf: Path, tmp_path: Path
) -> None:
    front, cdn = ollama_front
    front.chunksum_bytes = RANGE_BYTES
    env = ollama_layout(front, gguf, tmp_path, "lazy")
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    cdn.reset()

    m = mount_factory(env=env)
    path = m.mountpoint / front.host / "alice" / "m" / "lazy" / "model.gguf"
    assert os.getxattr(path, "user.modelfs.verify") == b"chunksums"
    with open(path, "rb") as f:
        # What one read costs, without the kernel's readahead (2 MiB by default) racing it.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert f.read(1 << 20) == data[: 1 << 20]
        fetched = cdn_bytes(cdn, digest)
        assert fetched == RANGE_BYTES // 2, f"the first MiB fetched {fetched} bytes"
        state = m.cache / ".modelfs" / "partial" / f"sha256-{digest}.state"
        wait_for(state.exists, "the progress of the first range to be saved")
        ls = run_modelfs("ls", "--cache", str(m.cache)).stdout
        assert re.search(r"alice/m:lazy .* chunksums ", ls), ls
        assert f.read() == data[1 << 20 :]
    assert not [r for r in cdn.requests if "Authorization" in r.headers]
    asked = [r for r in front.requests if "/chunksums/" in r.path]
    assert len(asked) == 1 and asked[0].status == 200, asked
    assert cdn_bytes(cdn, digest) == MODEL_BYTES, "a range was fetched twice"
    wait_for((m.cache / "blobs" / f"sha256-{digest}").exists, "the blob to be published")


def _line(d: str, start: int, end: int) -> bytes:
    return f"{d} {start}-{end}\n".encode()


ZERO = "sha256:" + "0" * 64
HALF = MODEL_BYTES // 2
BAD_BODIES = {
    "cut short": _line(ZERO, 0, 99),
    "unsorted": _line(ZERO, HALF, MODEL_BYTES - 1) + _line(ZERO, 0, HALF - 1),
    "overlapping": _line(ZERO, 0, HALF) + _line(ZERO, HALF, MODEL_BYTES - 1),
    "a gap": _line(ZERO, 0, HALF - 2) + _line(ZERO, HALF, MODEL_BYTES - 1),
    "past the end": _line(ZERO, 0, HALF - 1) + _line(ZERO, HALF, MODEL_BYTES),
    "a malformed digest": _line("sha256:xyz", 0, MODEL_BYTES - 1),
    "absurdly long": _line(ZERO, 0, 0) * ((9 << 20) // len(_line(ZERO, 0, 0))),
}
REASONS = {
    "cut short": "cut short",
    "unsorted": "leaves a gap",
    "overlapping": "overlaps",
    "a gap": "leaves a gap",
    "past the end": "past the blob's end",
    "a malformed digest": "malformed digest",
    "absurdly long": "more than",
}


@pytest.mark.parametrize("bad", list(BAD_BODIES))
def test_chunksums_that_do_not_hold_up_fall_back_to_whole_verification(
    ollama_front: tuple[OllamaFront, CDN], mount_factory, gguf: Path, tmp_path: Path, bad: str
) -> None:
    front, cdn = ollama_front
    env = ollama_layout(front, gguf, tmp_path, "garbage")
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    front.chunksums[f"sha256:{digest}"] = BAD_BODIES[bad]
    cdn.reset()

    m = mount_factory(env=env)
    m.expect_log(rf"invalid chunksums.*{re.escape(REASONS[bad])}.*; verifying blob")
    path = m.mountpoint / front.host / "alice" / "m" / "garbage" / "model.gguf"
    assert os.getxattr(path, "user.modelfs.verify") == b"whole"
    with open(path, "rb") as f:
        assert f.read(4096) == data[:4096]
    assert cdn_bytes(cdn, digest) == MODEL_BYTES, "served before the whole blob was checked"
    warnings = [line for line in m.log_text().splitlines() if "invalid chunksums" in line]
    assert len(warnings) == 1, warnings
    # Complete: a link to the blob in the cache, whose own label says so.
    wait_for(lambda: os.path.islink(path), "the file to become a link to the blob")
    assert os.getxattr(path, "user.modelfs.verify") == b"complete"


def test_stale_chunksums_never_serve_wrong_bytes_and_never_make_the_model_unreadable(
    ollama_front: tuple[OllamaFront, CDN], mount_factory, gguf: Path, tmp_path: Path
) -> None:
    front, _cdn = ollama_front
    env = ollama_layout(front, gguf, tmp_path, "stale")
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    stale = bytearray(data)
    bad = 30 << 20  # beyond the kernel's readahead of the first read
    stale[bad] ^= 0xFF  # the registry's digests describe other bytes than it serves
    entries = [
        (
            Digest(hashlib.sha256(stale[s : s + RANGE_BYTES]).hexdigest()),
            s,
            min(s + RANGE_BYTES, len(data)) - 1,
        )
        for s in range(0, len(data), RANGE_BYTES)
    ]
    front.chunksums[f"sha256:{digest}"] = chunksums_body(entries)

    m = mount_factory(env=env)
    m.expect_log(r"does not match the chunk index \(chunksums\); fetching it once more")
    m.expect_log(r"failed its check twice; not trusting the chunksums")
    m.expect_log(r"read: blob .* does not match the chunk index")
    path = m.mountpoint / front.host / "alice" / "m" / "stale" / "model.gguf"
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 4096, 0) == data[:4096]
        # The READ that met the range failing twice got EIO (the kernel then asks again for
        # the page it needs); from then on the blob is checked whole before it is served.
        assert os.pread(f.fileno(), 4096, bad) == data[bad : bad + 4096]
    log = m.log_text()
    assert "not trusting the chunksums for this blob" in log
    assert re.search(r"read: blob .* does not match the chunk index", log)
    assert sha256_path(path) == digest
    wait_for((m.cache / "blobs" / f"sha256-{digest}").exists, "the blob to be published")


def test_a_registry_without_chunksums_is_asked_once_and_verified_whole(
    proxy: Proxy, mount_factory, smollm2_noindex_pushed: str, model_hex: str
) -> None:
    m = mount_factory()
    tag = m.mountpoint / proxy.host / "library" / "smollm2" / "noindex"
    assert os.getxattr(tag / "model.gguf", "user.modelfs.verify") == b"whole"
    for _ in range(2):
        with open(tag / "model.gguf", "rb") as f:
            assert len(f.read(4096)) == 4096
    asked = [r for r in proxy.records() if "/chunksums/" in r.path]
    assert len(asked) == 1 and asked[0].status == 404, asked
    assert sum(r.body_bytes for r in model_records(proxy, model_hex)) >= os.path.getsize(
        tag / "model.gguf"
    )


def test_a_blob_verified_whole_is_lazy_and_verified_when_read_again_after_eviction(
    proxy: Proxy, mount_factory, smollm2_noindex_pushed: str, model_hex: str, tmp_path: Path
) -> None:
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / "library" / "smollm2" / "noindex"
    assert sha256_path(tag / "model.gguf") == model_hex  # fetched whole, checked, published
    blob = m.cache / "blobs" / f"sha256-{model_hex}"
    wait_for(blob.exists, "the blob to be published")
    index = m.cache / ".modelfs" / "indexes" / f"sha256-{model_hex}.json"
    wait_for(index.exists, "its chunk index to be kept")
    m.stop()
    blob.unlink()  # evicted (or removed with ollama rm): the few KB of its index stay

    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    tag = m2.mountpoint / proxy.host / "library" / "smollm2" / "noindex"
    assert os.getxattr(tag / "model.gguf", "user.modelfs.verify") == b"local-index"
    with open(tag / "model.gguf", "rb") as f:
        assert len(f.read(4096)) == 4096
    fetched = sum(r.body_bytes for r in model_records(proxy, model_hex))
    assert fetched == 4 << 20, f"the first 4 KiB fetched {fetched} bytes"
    assert sha256_path(tag / "model.gguf") == model_hex
