"""Soak: random reads from several models for N minutes through a fault-injecting proxy.

Starts a docker-registry and the tests' fault-injecting proxy (every 7th blob request a 503,
every 11th cut short, every 17th stalled for 15 s), pushes SmolLM2 and two synthetic models,
mounts, and runs reader threads that open a random model and check random ranges against the
source bytes, while every minute one model is unlinked from the cache (so it is fetched again).
Samples the daemon's RSS, open fds and threads every 10 s and writes bench/SOAK.md.
Not part of the test run. Needs root. Run: bash scripts/soak.sh [--minutes 10] [--readers 8]
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gguf_synth import smollm2_gguf_path, write_synthetic_gguf  # noqa: E402
from support.mount import Mount, run_modelfs  # noqa: E402
from support.proxy import Proxy  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402

FAULTS = [
    {"path": "/blobs/", "method": "GET", "every": 7, "status": 503},
    {"path": "/blobs/", "method": "GET", "every": 11, "cut_after": 300_000},
    {"path": "/blobs/", "method": "GET", "every": 17, "stall_after": 100_000, "stall_seconds": 15},
]


def sample(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SOAK.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak: needs root")
    work = Path(tempfile.mkdtemp(prefix="modelfs-soak-"))
    reg = RegistryProcess(work / "registry").start()
    proxy = Proxy(reg.host).start()
    m: Mount | None = None
    try:
        sources = {"smollm2:135m": smollm2_gguf_path()}
        for tag, seed in (("a", 31), ("b", 32)):
            path = work / f"synthetic-{tag}.gguf"
            write_synthetic_gguf(path, 256 << 20, seed=seed)
            sources[f"synthetic:{tag}"] = path
        for model, path in sources.items():
            name = f"{reg.host}/library/{model}"
            run_modelfs("create", name, "--gguf", str(path), "--cache", str(work / "src"))
            run_modelfs("push", name, "--cache", str(work / "src"))
        shutil.rmtree(work / "src")
        data = {model: path.read_bytes() for model, path in sources.items()}

        m = Mount(work / "m", options=("lookup_ttl=2",)).start()
        pid = m.pid()
        assert pid is not None
        proxy.set_faults(FAULTS)
        root = m.mountpoint / proxy.host / "library"
        counts = {"reads": 0, "bytes": 0, "eio": 0, "wrong": 0, "unlinks": 0}
        lock = threading.Lock()
        deadline = time.monotonic() + args.minutes * 60

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                model = rng.choice(list(data))
                expected = data[model]
                path = root / model.replace(":", "/") / "model.gguf"
                offset = rng.randrange(len(expected))
                size = rng.choice([4096, 65536, 1 << 20, 4 << 20])
                try:
                    with open(path, "rb") as f:
                        got = os.pread(f.fileno(), size, offset)
                    key = "reads" if got == expected[offset : offset + size] else "wrong"
                except OSError as e:
                    key = "eio" if e.errno == errno.EIO else errno.errorcode.get(e.errno, "other")
                    got = b""
                with lock:
                    counts[key] = counts.get(key, 0) + 1
                    counts["bytes"] += len(got)

        samples = [(0.0, sample(pid))]
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
        start = time.monotonic()
        for t in threads:
            t.start()
        next_unlink = start + 60
        while time.monotonic() < deadline:
            time.sleep(10)
            samples.append((time.monotonic() - start, sample(pid)))
            if time.monotonic() >= next_unlink:
                next_unlink += 60
                model = random.choice(list(data))
                r = run_modelfs(
                    "unlink", f"{proxy.host}/library/{model}", "--cache", str(m.cache), check=False
                )
                counts["unlinks"] += r.returncode == 0
        for t in threads:
            t.join(120)
        samples.append((time.monotonic() - start, sample(pid)))
        statuses: dict[int, int] = {}
        for rec in proxy.blob_records():
            statuses[rec.status] = statuses.get(rec.status, 0) + 1
        problems = [
            line for line in m.log_text().splitlines() if " ERROR " in line or "Traceback" in line
        ]
        warnings = sum(" WARNING " in line for line in m.log_text().splitlines())
    finally:
        if m is not None:
            m.stop()
        proxy.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    write(args, counts, samples, statuses, problems, warnings)
    print(args.out.read_text())


def write(args, counts, samples, statuses, problems, warnings) -> None:
    first, last = samples[0][1], samples[-1][1]
    known = ("reads", "bytes", "eio", "wrong", "unlinks")
    other = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in known)
    peak = max(s["rss"] for _, s in samples)
    mid = samples[len(samples) // 2][1]
    lines = [
        "# Soak: random reads through injected faults",
        "",
        f"Generated by `bash scripts/soak.sh --minutes {args.minutes:g} --readers {args.readers}` on "
        f"{time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}. Faults: every 7th blob request a 503, every 11th cut short, every "
        "17th stalled 15 s; one model unlinked from the cache every minute.",
        "",
        f"- reads checked against the source: {counts['reads']} right, **{counts['wrong']} wrong**, "
        f"{counts['eio']} EIO, other errors: {other or 'none'}; {counts['bytes'] / 1e9:.2f} GB read; "
        f"{counts['unlinks']} unlinks",
        "- blob responses at the proxy by status: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        "",
        "| daemon | start | middle | end | peak |",
        "|---|---|---|---|---|",
        f"| RSS | {first['rss'] >> 20} MiB | {mid['rss'] >> 20} MiB | {last['rss'] >> 20} MiB "
        f"| {peak >> 20} MiB |",
        f"| open fds | {first['fds']} | {mid['fds']} | {last['fds']} | "
        f"{max(s['fds'] for _, s in samples)} |",
        f"| threads | {first['threads']} | {mid['threads']} | {last['threads']} | "
        f"{max(s['threads'] for _, s in samples)} |",
        "",
        f"Daemon log: {warnings} WARNING lines (failed fetches a reader waited for), "
        f"{len(problems)} ERROR or traceback lines"
        + ("" if not problems else "; first: `" + problems[0][:200] + "`"),
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
