"""11. Models modelfs did not create: a big model pushed in Ollama's layout (no chunk index).

For each way a mount can verify it lazily — the registry's chunksums (the Ollama look-alike
serving them, ranges of ``RANGE_MIB``), a chunk index published beside it (``modelfs index``,
found through the referrers tag schema of docker-registry), and neither (the whole blob is
fetched and checked first) — on a cold mount with the page cache dropped: blob bytes fetched
by ``ls -l`` of the tag directory, by reading the GGUF header, and the time from ``open`` to
the first 4 KiB of ``model.gguf``. Byte counts go through the counting proxy (neither, the
published index) or the look-alike's CDN log (chunksums).

Run alone (it merges into bench/RESULTS.json and rewrites RESULTS.md):
    .venv/bin/python bench/bench.py --only lazy [--big-mib 4096]
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from support.mount import Mount, drop_caches, run_modelfs
from support.ollama_front import CDN, OllamaFront, chunksums_body
from support.proxy import Proxy
from support.registry import RegistryProcess

from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.digest import Digest
from modelfs.formats.gguf import read_gguf_header
from modelfs.registry.auth import OllamaKey

RANGE_MIB = 16


def _chunksums(gguf: Path, range_bytes: int) -> bytes:
    entries = []
    with open(gguf, "rb") as f:
        start = 0
        while piece := f.read(range_bytes):
            entries.append(
                (Digest(hashlib.sha256(piece).hexdigest()), start, start + len(piece) - 1)
            )
            start += len(piece)
    return chunksums_body(entries)


def _cdn_bytes(cdn: CDN, digest: str) -> int:
    total = 0
    for r in cdn.requests:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", str(r.headers.get("Range") or ""))
        if digest in r.path and m:
            total += int(m.group(2)) - int(m.group(1)) + 1
    return total


def _probe(m: Mount, tagdir: Path, fetched) -> dict[str, float]:
    """ls -l, then the GGUF header, then (on a fresh page cache) open + first 4 KiB, timed."""
    subprocess.run(["ls", "-l", str(tagdir)], check=True, capture_output=True)
    ls_bytes = fetched()
    verify = os.getxattr(tagdir / "model.gguf", "user.modelfs.verify").decode()
    t0 = time.perf_counter()
    with open(tagdir / "model.gguf", "rb") as f:
        first = os.pread(f.fileno(), 4096, 0)
        ttfb = time.perf_counter() - t0
        assert len(first) == 4096
        info = read_gguf_header(lambda offset, size: os.pread(f.fileno(), size, offset))
    header_bytes = fetched() - ls_bytes
    return {
        "ls_bytes": ls_bytes,
        "header_bytes": header_bytes,
        "ttfb": ttfb,
        "tensors": len(info.tensors),
        "verify": verify,  # type: ignore[dict-item]
    }


def _cold_probe(work: Path, tag: str, host: str, fetched, env=None) -> dict[str, float]:
    """``_probe`` of ``alice/ollama:<tag>`` through a fresh mount, the page cache dropped."""
    drop_caches()
    m = Mount(work / f"lazy-{tag}", env=env).start()
    try:
        return _probe(m, m.mountpoint / host / "alice/ollama" / tag, fetched)
    finally:
        m.stop()
        shutil.rmtree(work / f"lazy-{tag}", ignore_errors=True)


def measure(work: Path, reg: RegistryProcess, proxy: Proxy, gguf: Path) -> dict[str, object]:
    h = hashlib.sha256()
    with open(gguf, "rb") as f:
        while piece := f.read(16 << 20):
            h.update(piece)
    digest = h.hexdigest()
    out: dict[str, object] = {"size": gguf.stat().st_size, "range_mib": RANGE_MIB}
    src = work / "lazy-src"
    for tag in ("neither", "published", "chunksums"):
        # One blob, three manifests (a published index is about one manifest).
        name = f"{reg.host}/alice/ollama:{tag}"
        run_modelfs(
            "create", name, "--gguf", str(gguf), "--no-chunk-index", "--system", tag,
            "--cache", str(src),
        )  # fmt: skip
        run_modelfs("push", name, "--cache", str(src))
    shutil.rmtree(src)

    # Neither: docker-registry has no chunksums, no index is published.
    proxy.reset()
    out["neither"] = _cold_probe(work, "neither", proxy.host, proxy.blob_bytes)

    # A published index, found through the referrers tag schema.
    t0 = time.perf_counter()
    run_modelfs("index", f"{reg.host}/alice/ollama:published", "--cache", str(work / "idx"))
    out["index_seconds"] = time.perf_counter() - t0
    shutil.rmtree(work / "idx", ignore_errors=True)
    proxy.reset()
    out["published"] = _cold_probe(work, "published", proxy.host, proxy.blob_bytes)

    # The registry's chunksums: the Ollama look-alike in front of the same registry.
    cdn = CDN(reg.host).start()
    front = OllamaFront(reg.host, cdn=cdn).start()
    try:
        front.chunksums[f"sha256:{digest}"] = _chunksums(gguf, RANGE_MIB << 20)
        key = OllamaKey(work / "id_ed25519")
        env = {**os.environ, "MODELFS_KEY": str(key.path)}
        out["chunksums"] = _cold_probe(
            work, "chunksums", front.host, lambda: _cdn_bytes(cdn, digest), env
        )
    finally:
        front.stop()
        cdn.stop()
    return out


def render(r: dict) -> list[str]:
    size = r["size"]
    rows = [
        ("the registry's chunksums", r["chunksums"], f"{r['range_mib']} MiB ranges, sha256"),
        ("a published index", r["published"], f"{CHUNK_BYTES >> 20} MiB chunks, BLAKE3"),
        ("neither", r["neither"], "whole blob checked first"),
    ]
    when = f", measured on {r['date']} (`bench.py --only lazy`)" if "date" in r else ""
    L = [
        f"## 11. Models modelfs did not create ({size >> 20} MiB, Ollama's layout, cold)",
        "",
        f"bench/lazy.py{when}. Bytes fetched from the registry (or its CDN), page cache dropped "
        "before each mount.",
        "",
        "| verified by | `user.modelfs.verify` | `ls -l`: blob bytes | GGUF header: blob bytes "
        "| open → first 4 KiB | chunks |",
        "|---|---|---|---|---|---|",
    ]
    for label, p, how in rows:
        L.append(
            f"| {label} | `{p['verify']}` | {p['ls_bytes']} | {p['header_bytes'] / 1e6:.1f} MB "
            f"({p['header_bytes'] / size * 100:.2f}% of the blob) | {p['ttfb']:.2f} s | {how} |"
        )
    L += [
        "",
        f"`modelfs index` of this model (streaming it from the registry, checking its sha256, "
        f"pushing the index): {r['index_seconds']:.1f} s.",
        "",
    ]
    return L
