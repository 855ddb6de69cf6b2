"""Warm reads of a complete 1 GiB blob: through the mount's link (into the read-only view, and
with ``-o blobs_view=no`` straight into the cache), through the daemon (``-o links=no``) and
from the cache file directly; page cache dropped ("warm") and not ("hot").

How a complete blob is linked decides whether a plain ``umount MNT`` works (bench/UMOUNT.md);
this measures what the choice costs a reader. Needs root (mounts, drop_caches).
Run: PYTHONPATH=$PWD python bench/umount_read.py [--mib 1024] [--repeat 3] [--label NAME]
Prints one JSON line of medians (seconds and GB/s), of each run's time of the cache file over the
time of each way (``/local``: 1.00 is the disk's speed; each way is timed next to a read of the
cache file, so that a load that drifts between runs cancels out) and where the link points.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gguf_synth import write_synthetic_gguf  # noqa: E402
from support.mount import Mount, drop_caches, run_modelfs, sha256_path  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402

WAIT_SECONDS = 120.0
WAYS = [("link", ()), ("link_cache", ("blobs_view=no",)), ("daemon", ("links=no",))]


def timed_cat(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts and drop_caches)")
    work = Path(tempfile.mkdtemp(prefix="modelfs-umount-bench-"))
    gguf = work / "model.gguf"
    write_synthetic_gguf(gguf, args.mib << 20, seed=11)
    digest = sha256_path(gguf)
    reg = RegistryProcess(work / "registry").start()
    try:
        name = f"{reg.host}/library/synthetic:mid"
        run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(work / "src"))
        run_modelfs("push", name, "--cache", str(work / "src"))
        cache = work / "cache"
        run_modelfs("pull", name, "--cache", str(cache))
        gguf.unlink()
        blob = cache / "blobs" / f"sha256-{digest}"
        times: dict[str, list[float]] = {}
        link = ""
        for i in range(args.repeat):
            # Each way is timed next to a read of the cache file itself, in rotating order:
            # on a loaded machine only such pairs compare.
            for key, options in WAYS[i % len(WAYS) :] + WAYS[: i % len(WAYS)]:
                m = Mount(work / f"{key}{i}", options=options, cache=cache).start()
                try:
                    path = m.mountpoint / reg.host / "library" / "synthetic" / "mid" / "model.gguf"
                    if key.startswith("link"):
                        wait_for(path.is_symlink, "the model to be a link")
                    if key == "link":
                        link = os.readlink(path)
                    for way, read in ((key, path), (f"local@{key}", blob)):
                        drop_caches()
                        times.setdefault(f"{way}_warm", []).append(timed_cat(read))
                        times.setdefault(f"{way}_hot", []).append(timed_cat(read))
                finally:
                    m.stop()
        size = blob.stat().st_size
        out: dict[str, object] = {"label": args.label, "bytes": size, "link": link}
        for key, values in sorted(times.items()):
            seconds = statistics.median(values)
            out[key] = {"seconds": round(seconds, 3), "GB/s": round(size / seconds / 1e9, 2)}
            if not key.startswith("local@"):
                way, temp = key.rsplit("_", 1)
                local = times[f"local@{way}_{temp}"]
                ratios = [a / b for a, b in zip(local, values, strict=True)]
                out[key]["/local"] = round(statistics.median(ratios), 2)
        print(json.dumps(out))
    finally:
        reg.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
