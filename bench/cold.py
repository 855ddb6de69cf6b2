"""Cold sequential reads of one model, against curl of the same blob, in one run (quick: ~2 min).

For each of --repeat rounds (page cache dropped before each read): `curl -o /dev/null` of the
blob, then a cold `cat` through a fresh mount for each mount option set given with --variant
(default: the defaults, and `push=no`), with the daemon's CPU seconds. Prints a table and, with
--json FILE, appends the medians as one JSON line. Needs root.

With --ceilings DIR (../shared/tools/ceilings), each round also times, interleaved with the rest:
netsim.py's minimal lazy verified file through FUSE (`--mode push --hash`, cold `cat`), its
fetcher alone without FUSE (one process, then four at once), and four fresh modelfs mounts read
at once (each with its own cache): the ceilings of the cold-read and fleet targets, side by side.

  .venv/bin/python bench/cold.py --mib 1024 --variant "" --variant push=no
  .venv/bin/python bench/cold.py --mib 1024 --variant "" --ceilings ../shared/tools/ceilings
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def netsim_fuse(netsim: Path, model: Model, root: Path) -> float:
    """Seconds of a cold ``cat`` of netsim's lazily fetched, verified, pushed file."""
    mnt = root / "mnt"
    mnt.mkdir(parents=True)
    argv = [sys.executable, str(netsim), model.url, str(model.size), str(mnt)]
    argv += ["--mode", "push", "--hash", "1", "--partial", str(root / "partial")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("netsim did not mount")
            time.sleep(0.05)
        drop_caches()
        return timed(["cat", str(mnt / "file")])
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def netsim_alone(netsim: Path, model: Model, root: Path, n: int) -> list[float]:
    """Seconds of each of ``n`` netsim fetchers (no FUSE, one sha256 per chunk) run at once."""
    root.mkdir(parents=True)
    drop_caches()

    def one(i: int) -> float:
        argv = [sys.executable, str(netsim), model.url, str(model.size), "-", "--nofuse"]
        return timed([*argv, "--hash", "1", "--partial", str(root / f"partial-{i}")])

    try:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mounts_at_once(model: Model, root: Path, n: int) -> list[float]:
    """Seconds of each of ``n`` fresh mounts (a cache each) read cold at once with ``cat``."""
    mounts = [Mount(root / f"m{i}") for i in range(n)]
    try:
        for m in mounts:
            m.start()
        drop_caches()
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda m: timed(["cat", str(model.path(m))]), mounts))
    finally:
        for m in mounts:
            m.stop()
        shutil.rmtree(root, ignore_errors=True)


def ceiling_rounds(netsim: Path, model: Model, work: Path, i: int, out: dict) -> None:
    """One round of the ceilings (--ceilings), appended to ``out``'s lists."""
    out.setdefault("netsim_fuse_s", []).append(netsim_fuse(netsim, model, work / f"nf{i}"))
    out.setdefault("netsim_1_s", []).extend(netsim_alone(netsim, model, work / f"n1{i}", 1))
    out.setdefault("netsim_4_s", []).extend(netsim_alone(netsim, model, work / f"n4{i}", 4))
    out.setdefault("modelfs_1_s", []).extend(mounts_at_once(model, work / f"m1{i}", 1))
    out.setdefault("modelfs_4_s", []).extend(mounts_at_once(model, work / f"m4{i}", 4))


def print_ceilings(model: Model, curl_s: float, c: dict[str, list[float]]) -> dict[str, float]:
    gbs = model.size / GB
    fuse = median(c["netsim_fuse_s"])
    print(
        f"netsim through FUSE (push, sha256 per chunk): {gbs / fuse:.2f} GB/s ({fuse:.2f} s) "
        f"= {curl_s / fuse:.2f}x curl"
    )
    ratios = {}
    for key, label in (
        ("netsim", "netsim fetcher alone, no FUSE"),
        ("modelfs", "modelfs, fresh mounts with a cache each"),
    ):
        one, fours = median(c[f"{key}_1_s"]), c[f"{key}_4_s"]
        ratios[f"{key}_4_over_1"] = max(fours) / one
        print(
            f"{label}: 1 {one:.2f} s; 4 at once, slowest {max(fours):.2f} s = "
            f"{max(fours) / one:.2f}x a lone one (each of "
            + ", ".join(f"{x:.2f}" for x in fours)
            + " s)"
        )
    return {"netsim_fuse_s": fuse, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", action="append", help="mount options, comma separated")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ceilings", type=Path, help="../shared/tools/ceilings: time those too")
    args = parser.parse_args()
    netsim = args.ceilings / "netsim.py" if args.ceilings else None
    ceilings: dict[str, list[float]] = {}
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
            if netsim is not None:
                ceiling_rounds(netsim, model, work, i, ceilings)
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
    if netsim is not None:
        out["ceilings"] = {**ceilings, **print_ceilings(model, c, ceilings)}
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
