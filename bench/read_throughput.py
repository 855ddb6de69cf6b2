"""Read throughput through a modelfs mount against the ceilings on the same machine, same run.

Starts a real docker-registry on loopback, creates and pushes SmolLM2 (98 MB) and a synthetic
GGUF-shaped model (1 GiB by default), then for each model measures (median of --repeat runs):

- curl -o /dev/null of the blob from the registry (the network ceiling)
- cold: `cat model.gguf` through a fresh mount with an empty cache, page cache dropped
- warm: the blob already in the cache, page cache dropped, fresh mount
- hot: the same again without dropping the page cache
- local: `cat` of the cache's blob file directly, page cache dropped
- pull: `modelfs pull` into an empty cache

and writes a table to bench/RESULTS.md. Needs root (mounts, drop_caches).
Run: .venv/bin/python bench/read_throughput.py [--synthetic-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gguf_synth import smollm2_gguf_path, write_synthetic_gguf  # noqa: E402
from support.mount import Mount, run_modelfs  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402

from modelfs.digest import Digest  # noqa: E402


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def median_rate(size: int, seconds: list[float]) -> tuple[float, float]:
    s = statistics.median(seconds)
    return size / s / 1e9, s


def sha256_of(path: Path) -> Digest:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return Digest(h.hexdigest())


def bench_model(reg: RegistryProcess, name: str, gguf: Path, work: Path, repeat: int) -> dict:
    size = gguf.stat().st_size
    digest = sha256_of(gguf)
    src = work / "src"
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(src))
    run_modelfs("push", name, "--cache", str(src))
    shutil.rmtree(src)
    host, _, rest = name.partition("/")
    model, _, tag = rest.rpartition(":")
    blob_url = f"http://{host}/v2/{model}/blobs/{digest}"
    out: dict[str, tuple[float, float]] = {}

    times = []
    for _ in range(repeat):
        drop_caches()
        times.append(timed(["curl", "-sf", "-o", "/dev/null", blob_url]))
    out["curl"] = median_rate(size, times)

    cold, warm, hot, local = [], [], [], []
    for i in range(repeat):
        root = work / f"run{i}"
        m = Mount(root).start()
        try:
            path = m.mountpoint / host / model / tag / "model.gguf"
            drop_caches()
            cold.append(timed(["cat", str(path)]))
        finally:
            m.stop()
        blob = m.cache / "blobs" / digest.filename
        deadline = time.monotonic() + 60
        while not blob.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        m = Mount(root).start()
        try:
            path = m.mountpoint / host / model / tag / "model.gguf"
            drop_caches()
            warm.append(timed(["cat", str(path)]))
            hot.append(timed(["cat", str(path)]))
        finally:
            m.stop()
        drop_caches()
        local.append(timed(["cat", str(blob)]))
        shutil.rmtree(root)
    out["cold"] = median_rate(size, cold)
    out["warm"] = median_rate(size, warm)
    out["hot"] = median_rate(size, hot)
    out["local"] = median_rate(size, local)

    pulls = []
    for i in range(repeat):
        cache = work / f"pull{i}"
        drop_caches()
        start = time.perf_counter()
        run_modelfs("pull", name, "--cache", str(cache))
        pulls.append(time.perf_counter() - start)
        shutil.rmtree(cache)
    out["pull"] = median_rate(size, pulls)
    return {"size": size, **out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts and drop_caches)")

    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-"))
    reg = RegistryProcess(work / "registry").start()
    results = {}
    try:
        synthetic = REPO / ".cache" / "bench" / f"synthetic-{args.synthetic_mib}m.gguf"
        if not synthetic.exists() or synthetic.stat().st_size != args.synthetic_mib << 20:
            synthetic.parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_gguf(synthetic, args.synthetic_mib << 20, seed=11)
        models = [
            ("SmolLM2-135M Q4_1", f"{reg.host}/library/smollm2:135m", smollm2_gguf_path()),
            (f"synthetic {args.synthetic_mib} MiB", f"{reg.host}/library/synthetic:big", synthetic),
        ]
        for label, name, gguf in models:
            print(f"bench: {label} …", file=sys.stderr)
            results[label] = bench_model(reg, name, gguf, work, args.repeat)
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, results, args.repeat)
    print(args.out.read_text())


def write_results(path: Path, results: dict, repeat: int) -> None:
    lines = [
        "# Read throughput: modelfs vs the ceilings",
        "",
        f"Generated by `bench/read_throughput.py` on {time.strftime('%Y-%m-%d')}: "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"docker-registry on loopback; median of {repeat} runs; page cache dropped before "
        "every cold, warm and local run.",
        "",
        "| model | size | curl (ceiling) | cold mount | cold / curl | `modelfs pull` | pull / curl "
        "| warm mount | local file | warm / local | hot mount |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        g = {k: v[0] for k, v in r.items() if k != "size"}
        lines.append(
            f"| {label} | {r['size'] / 1e6:.0f} MB | {g['curl']:.2f} GB/s | {g['cold']:.2f} GB/s "
            f"| {g['cold'] / g['curl']:.2f}× | {g['pull']:.2f} GB/s | {g['pull'] / g['curl']:.2f}× "
            f"| {g['warm']:.2f} GB/s | {g['local']:.2f} GB/s | {g['warm'] / g['local']:.2f}× "
            f"| {g['hot']:.2f} GB/s |"
        )
    lines += [
        "",
        "cold: `cat model.gguf` through a fresh mount, empty cache (every byte fetched, verified "
        "per chunk, written to the cache and served through FUSE). warm: the blob already in the "
        "cache, served by the daemon from disk. hot: the same again, from the kernel's page cache "
        "(keep_cache). local: `cat` of the cache's blob file, not through the mount.",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
