"""Where a cold read's daemon CPU goes, by stage: ``perf record -g`` on the daemon during a cold `cat`.

Starts tests/support's docker-registry, pushes a synthetic model made by ``modelfs create``,
then for each round and each tree (``--tree LABEL=PATH``, interleaved; default: this one)
mounts it fresh, drops the page cache, records the daemon with ``perf record -g`` while
``cat`` reads the model, and sorts every on-CPU sample into a stage by the functions on its
stack (kernel stacks are whole; Python 3.11 has no perf trampolines, so the interpreter's own
time is one stage, "Python glue"). Prints, per tree, each stage's share and its CPU-seconds
per GiB (the share times the daemon's CPU-seconds from /proc, over the blob's GiB). Needs root
and perf.

  .venv/bin/python bench/cold_profile.py --mib 1024 --repeat 2 --tree old=/tmp/old --tree new=.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]
from bench import Model, drop_caches, synthetic, timed, wait_for  # noqa: E402, I001
from cold import daemon_cpu_seconds  # noqa: E402
from support.mount import Mount  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402

GIB = 1 << 30

# First match wins, leaf first: (stage, substrings of a frame's symbol or object).
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("sha256 (whole blob)", ("sha256_block", "SHA256_", "sha256_", "libcrypto")),
    ("BLAKE3", ("blake3",)),
    ("page faults / mmap (fresh buffers)", ("asm_exc_page_fault", "__x64_sys_munmap", "__x64_sys_mmap")),
    ("HTTP receive (recv)", ("tcp_recvmsg", "sock_recvmsg", "__sys_recvfrom", "sock_read_iter")),
    ("HTTP send", ("tcp_sendmsg",)),
    ("write into the partial (pwrite)", ("__x64_sys_pwrite64", "ksys_pwrite64")),
    ("writeback / fadvise", ("sync_file_range", "fadvise", "do_writepages", "ext4_writepages")),
    ("read of the cache", ("filemap_read", "__x64_sys_pread64", "__x64_sys_preadv")),
    ("FUSE requests/replies (/dev/fuse)", ("fuse_dev_", "fuse_")),
    ("wake-ups, locks, scheduling", ("futex", "schedule", "epoll", "poll", "eventfd", "pipe_", "unix_stream", "try_to_wake_up")),
    ("zeroing/copying/allocating in user space", ("memset", "memcpy", "memmove", "malloc", "free", "_int_")),
    ("Python glue (interpreter)", ("libpython", "python3")),
]  # fmt: skip


def classify(frames: list[str], main: bool, background: bool) -> str:
    """The stage of one sample; ``main``: taken on the daemon's trio thread (the FUSE loop),
    ``background``: on the whole-blob hash's thread."""
    for stage, needles in STAGES:
        for f in frames:
            if any(n in f for n in needles):
                if stage == "BLAKE3":
                    # Trio's worker threads check chunks as they arrive; the background
                    # thread hashes the local index (with the sha256).
                    return stage + (" (local index)" if background else " (chunk check)")
                if stage == "read of the cache":
                    if main:
                        return "FUSE serve: read of the cache (preadv)"
                    if background:
                        return "read back for the whole-blob hash"
                if stage == "Python glue (interpreter)" and main:
                    return "Python glue on the trio thread (FUSE handlers, tasks)"
                if stage.startswith("zeroing") and main:
                    return "zeroing fresh read buffers on the trio thread"
                return stage
    return "other (kernel/libc)"


def perf_stages(data: Path, pid: int) -> collections.Counter[str]:
    """Samples of process ``pid`` (recorded system-wide: threads started later count too)."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: collections.Counter[str] = collections.Counter()
    frames: list[str] = []
    mine = main = background = False
    for line in [*out.splitlines(), ""]:
        if not line.strip():
            if mine and frames:
                counts[classify(frames, main, background)] += 1
            frames, mine = [], False
        elif not line.startswith("\t"):
            # "COMM PID/TID": trio names its worker threads; the background thread is "python".
            comm, ids = line.rsplit(None, 1)
            p, _, t = ids.partition("/")
            mine, main = p == str(pid), t == str(pid)
            background = mine and not main and not comm.strip().startswith(("Trio", "get_range"))
        else:
            frames.append(line.strip())
    return counts


def profile_once(model: Model, root: Path, tree: Path, out: Path) -> tuple[float, float, int]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    m = Mount(root, env=env).start()
    try:
        pid = m.pid()
        assert pid is not None
        drop_caches()
        before = daemon_cpu_seconds(pid)
        perf = subprocess.Popen(
            ["perf", "record", "-a", "-g", "-F", "997", "-o", str(out), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            seconds = timed(["cat", str(model.path(m))])
            # The whole-blob sha256 may finish after the last byte is served: count it too.
            wait_for(lambda: model.blob(m.cache).exists(), 120)
        finally:
            perf.send_signal(2)
            perf.wait(60)
        return seconds, daemon_cpu_seconds(pid) - before, pid
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tree", action="append", help="LABEL=PATH of a modelfs checkout")
    parser.add_argument("--keep", type=Path, help="keep perf.data files here")
    args = parser.parse_args()
    trees = [t.split("=", 1) for t in (args.tree or [f"this={REPO}"])]
    work = Path(tempfile.mkdtemp(prefix="modelfs-prof-"))
    os.chdir(work)  # `python -m modelfs` must import the tree on PYTHONPATH, not the cwd
    reg = RegistryProcess(work / "registry").start()
    results: dict[str, list[tuple[float, float, collections.Counter[str]]]] = {}
    try:
        model = Model(f"synthetic {args.mib} MiB", reg, "library/cold", "m", synthetic(args.mib))
        model.push(work)
        for i in range(args.repeat):
            for label, path in trees:
                data = (args.keep or work) / f"perf-{label}-{i}.data"
                data.parent.mkdir(parents=True, exist_ok=True)
                s, cpu, pid = profile_once(
                    model, work / f"r{i}-{label}", Path(path).resolve(), data
                )
                results.setdefault(label, []).append((s, cpu, perf_stages(data, pid)))
                la = os.getloadavg()[0]
                print(f"round {i} {label}: {model.size / s / 1e9:.2f} GB/s, daemon "
                      f"{cpu / (model.size / GIB):.2f} CPU-s/GiB, load {la:.2f}", flush=True)  # fmt: skip
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    gib = model.size / GIB
    for label, rs in results.items():
        print(f"\n## {label}: CPU-s per GiB by stage (each round)")
        stages = sorted({k for _, _, c in rs for k in c}, key=lambda k: -sum(c[k] for *_, c in rs))
        for k in stages:
            cells = []
            for _, cpu, c in rs:
                share = c[k] / max(1, sum(c.values()))
                cells.append(f"{share * cpu / gib:.3f} ({share:.0%})")
            print(f"| {k} | " + " | ".join(cells) + " |")
        print(
            "| total (daemon, /proc) | " + " | ".join(f"{cpu / gib:.2f}" for _, cpu, _ in rs) + " |"
        )


if __name__ == "__main__":
    main()
