"""Cold sequential reads of one model, against curl of the same blob, in one run (quick: ~2 min).

For each of --repeat rounds (page cache dropped before each read): `curl -o /dev/null` of the
blob, then a cold `cat` through a fresh mount for each mount option set given with --variant
(default: the defaults, and `push=no`), with the daemon's CPU seconds. Prints a table and, with
--json FILE, appends the medians as one JSON line. Needs root.

  .venv/bin/python bench/cold.py --mib 1024 --variant "" --variant push=no
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
from bench import GB, Model, drop_caches, median, synthetic, timed  # noqa: E402, I001
from support.mount import Mount  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402


def daemon_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


def cold_read(model: Model, root: Path, options: tuple[str, ...]) -> tuple[float, float]:
    m = Mount(root, options=options).start()
    try:
        pid = m.pid()
        assert pid is not None
        before = daemon_cpu_seconds(pid)
        drop_caches()
        seconds = timed(["cat", str(model.path(m))])
        return seconds, daemon_cpu_seconds(pid) - before
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", action="append", help="mount options, comma separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = args.variant if args.variant is not None else ["", "push=no"]
    work = Path(tempfile.mkdtemp(prefix="modelfs-cold-"))
    reg = RegistryProcess(work / "registry").start()
    try:
        model = Model(f"synthetic {args.mib} MiB", reg, "library/cold", "m", synthetic(args.mib))
        model.push(work)
        curl: list[float] = []
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for i in range(args.repeat):
            drop_caches()
            curl.append(timed(["curl", "-sf", "-o", "/dev/null", model.url]))
            for j, v in enumerate(variants):
                opts = tuple(o for o in v.split(",") if o)
                runs[v].append(cold_read(model, work / f"r{i}-{j}", opts))
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    c = median(curl)
    out = {"when": time.strftime("%Y-%m-%d %H:%M"), "mib": args.mib, "curl_s": c, "variants": {}}
    print(f"curl -o /dev/null: {model.size / c / GB:.2f} GB/s ({c:.2f} s)")
    for v, rs in runs.items():
        s = median([r[0] for r in rs])
        cpu = median([r[1] for r in rs])
        out["variants"][v or "default"] = {"seconds": s, "daemon_cpu_s": cpu}
        print(
            f"cold cat [{v or 'default'}]: {model.size / s / GB:.2f} GB/s ({s:.2f} s) "
            f"= {c / s:.2f}x curl; daemon CPU {cpu:.2f} s"
        )
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
