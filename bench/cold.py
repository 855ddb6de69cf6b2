"""Cold sequential reads of one model, against curl of the same blob, in one run (quick: ~2 min).

For each of --repeat rounds (page cache dropped before each read): `curl -o /dev/null` of the
blob (with curl's CPU seconds), then a cold `cat` through a fresh mount for each mount option
set given with --variant (default: the defaults, and `push=no`) and each checkout given with
--tree (interleaved: A/B rounds of two commits), with the daemon's CPU seconds until the last
byte was read and until the blob was published (its whole-blob sha256 included), per GiB.
Prints a table and, with --json FILE, appends the medians as one JSON line. Needs root.

With --ceilings DIR (../shared/tools/ceilings), each round also times, interleaved with the rest,
each with its CPU seconds per GiB: bench/lazycurl.py (curl receives into the page cache, a minimal
pyfuse3 daemon serves READs from it: no Python touches a byte on the way in, nothing checked),
netsim.py's minimal lazy file through FUSE (`--mode push`, 4 streams) checking nothing and one
sha256 per chunk, and the sum "lazycurl + the sha256 and BLAKE3 measured alone" (the verified
ceiling); then netsim's fetcher alone without FUSE (one process, then four at once) and four
fresh modelfs mounts read at once (each with its own cache): the fleet's ceilings.

With --pull-mmap, each round also times `curl -o FILE && sync` and an mmap load of that file
touching every tensor page in order, against `modelfs pull` and the same load through a cold
mount (bench.py's sections 1 and 5), for each tree.

With --fio, each round also runs fio (4 jobs x 64 MiB of 1 MiB random reads, cold) on a fresh
modelfs mount of each tree and on an rclone mount (--vfs-cache-mode full) of the same blob
served by nginx, a cold `cat` of rclone, and fio's pattern without FUSE (4 threads requesting
the 4 MiB chunk around each random 1 MiB block: the ceiling of a 4 MiB chunk index). With
--taskset, each round also reads cold with the daemon, the registry and `cat` all on CPU 0
("1 core") and with the daemon on CPU 1 apart from the registry and `cat` on CPU 0 ("2 cores"),
and curl the same way.

  .venv/bin/python bench/cold.py --mib 1024 --variant "" --variant push=no
  .venv/bin/python bench/cold.py --mib 1024 --variant "" --ceilings ../shared/tools/ceilings
  .venv/bin/python bench/cold.py --mib 1024 --repeat 2 --variant "" --fio --taskset \
      --tree main=/tmp/old --tree new=.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]
from bench import (  # noqa: E402, I001
    GB,
    NGINX_CONF,
    Model,
    _rclone_cmd,
    drop_caches,
    free_port,
    median,
    mmap_load,
    process_cpu_seconds,
    synthetic,
    timed,
    timed_cpu,
    timed_fn,
    wait_for,
)
from support.mount import Mount, run_modelfs  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402


GIB = 1 << 30


daemon_cpu_seconds = process_cpu_seconds


def pin(pid: int, cpus: str) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads it starts later inherit it)."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


@dataclass
class ColdRead:
    seconds: float
    cpu_read: float  # daemon CPU seconds until the last byte was read
    cpu_published: float  # ... until the blob was published (its sha256 checked)


def tree_env(tree: Path | None) -> dict[str, str] | None:
    """The environment of a daemon importing modelfs from ``tree`` (the cwd must not hold one)."""
    return None if tree is None else dict(os.environ, PYTHONPATH=str(tree))


def cold_read(
    model: Model,
    root: Path,
    options: tuple[str, ...],
    tree: Path | None = None,
    cpus: tuple[str, str] | None = None,
) -> ColdRead:
    """A cold ``cat`` through a fresh mount; ``cpus``: (the daemon's, the reader's) CPU lists."""
    m = Mount(root, options=options, env=tree_env(tree)).start()
    try:
        pid = m.pid()
        assert pid is not None
        if cpus is not None:
            pin(pid, cpus[0])
        before = daemon_cpu_seconds(pid)
        drop_caches()
        cat = ["cat", str(model.path(m))]
        seconds = timed(cat if cpus is None else ["taskset", "-c", cpus[1], *cat])
        cpu_read = daemon_cpu_seconds(pid) - before
        wait_for(lambda: model.blob(m.cache).exists(), 300)
        return ColdRead(seconds, cpu_read, daemon_cpu_seconds(pid) - before)
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


def fuse_ceiling(argv: list[str], mnt: Path, size: int) -> tuple[float, float]:
    """Seconds of a cold ``cat`` of ``mnt``/file served by the daemon ``argv`` (which mounts
    ``mnt``), and that daemon's CPU seconds from just before the ``cat`` to its exit, with those
    of the children it waited for (lazycurl's curl). ``read_ahead_kb`` and ``max_background`` are
    set as modelfs sets them."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{Path(argv[1]).name} did not mount")
            time.sleep(0.05)
        st = os.stat(mnt)
        major, minor = os.major(st.st_dev), os.minor(st.st_dev)
        Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb").write_text("2048")
        Path(f"/sys/fs/fuse/connections/{minor}/max_background").write_text("64")
        before = process_cpu_seconds(proc.pid)
        drop_caches()
        seconds = timed(["cat", str(mnt / "file")])
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
        try:
            _, _, usage = os.wait4(proc.pid, 0) if _exits(proc, 30) else (0, 0, None)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if usage is None:
        raise RuntimeError(f"{Path(argv[1]).name} did not exit")
    return seconds, usage.ru_utime + usage.ru_stime - before


def _exits(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether ``proc`` ends within ``seconds`` (left unreaped, for ``os.wait4``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return False
        time.sleep(0.02)
    return False


def netsim_fuse(netsim: Path, model: Model, root: Path, check: bool) -> tuple[float, float]:
    """A cold ``cat`` of netsim's lazily fetched, pushed file, one sha256 per chunk or none:
    seconds and CPU seconds."""
    mnt = root / "mnt"
    mnt.mkdir(parents=True)
    argv = [sys.executable, str(netsim), model.url, str(model.size), str(mnt)]
    argv += ["--mode", "push", "--hash", "1" if check else "0", "--partial", str(root / "partial")]
    try:
        return fuse_ceiling(argv, mnt, model.size)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def lazycurl_fuse(model: Model, root: Path) -> tuple[float, float]:
    """A cold ``cat`` of bench/lazycurl.py's file (curl receives, READs wait, nothing checked):
    seconds and CPU seconds of the daemon and its curl."""
    mnt = root / "mnt"
    mnt.mkdir(parents=True)
    argv = [sys.executable, str(REPO / "bench" / "lazycurl.py"), model.url, str(model.size)]
    argv += [str(mnt), str(root / "partial")]
    try:
        return fuse_ceiling(argv, mnt, model.size)
    finally:
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


def ceiling_rounds(netsim: Path, model: Model, work: Path, i: int, out: dict, add) -> None:
    """One round of the ceilings (--ceilings): the lazy files' rows through ``add``, the
    fleet's seconds appended to ``out``'s lists."""
    gib = model.size / GIB
    for key, label, run in (
        (
            "netsim_fuse",
            "netsim, sha256 per chunk",
            lambda: netsim_fuse(netsim, model, work / f"nf{i}", True),
        ),
        (
            "netsim_nocheck",
            "netsim, no check",
            lambda: netsim_fuse(netsim, model, work / f"nn{i}", False),
        ),
        (
            "lazycurl",
            "lazycurl (curl receives, no check)",
            lambda: lazycurl_fuse(model, work / f"lc{i}"),
        ),
    ):
        seconds, cpu = run()
        out.setdefault(f"{key}_s", []).append(seconds)
        add(f"{label} cold cat GB/s", model.size / seconds / GB)
        add(f"{label} CPU-s/GiB", cpu / gib)
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


def fio_cmd(path: Path, size: int) -> list[str]:
    # fio splits --filename at colons (the mount's host:port directory): escape them.
    return [
        "fio", "--name=rand", "--filename=" + str(path).replace(":", "\\:"), "--readonly",
        "--rw=randread", "--bs=1M", "--numjobs=4", "--io_size=64M", f"--size={size}",
        "--ioengine=psync", "--invalidate=0", "--group_reporting", "--output-format=json",
    ]  # fmt: skip


def fio_randread(path: Path, size: int) -> tuple[float, float]:
    """fio's random 1 MiB reads of ``path``: (MB/s, p99 completion latency in ms)."""
    out = subprocess.run(fio_cmd(path, size), check=True, capture_output=True, text=True).stdout
    read = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return read["bw_bytes"] / 1e6, read["clat_ns"]["percentile"]["99.000000"] / 1e6


def ranges_alone(url: str, size: int, chunk: int = 4 << 20) -> tuple[float, float]:
    """fio's pattern without FUSE, checks or a file: 4 threads, each 64 requests for the 4 MiB
    chunk around a random 1 MiB block (the least a cold read checked by a 4 MiB chunk index must
    fetch), read into a reused buffer with http.client. (MB/s counted as fio counts, 1 MiB per
    read; p99 of the requests in ms): the ceiling of the chunk-granular design on this registry."""
    u = urllib.parse.urlsplit(url)
    rng = random.Random(26)
    blocks = [[rng.randrange(size >> 20) for _ in range(64)] for _ in range(4)]

    def job(mine: list[int]) -> list[float]:
        conn = http.client.HTTPConnection(u.hostname, u.port)
        buf = memoryview(bytearray(chunk))
        took = []
        for block in mine:
            start = (block << 20) // chunk * chunk
            n = min(chunk, size - start)
            t = time.perf_counter()
            conn.request("GET", u.path, headers={"Range": f"bytes={start}-{start + n - 1}"})
            r = conn.getresponse()
            got = 0
            while got < n:
                k = r.readinto(buf[got:n])
                if not k:
                    raise RuntimeError("short body")
                got += k
            r.read()
            took.append(time.perf_counter() - t)
        conn.close()
        return took

    drop_caches()
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        took = sorted(x for xs in pool.map(job, blocks) for x in xs)
    seconds = time.perf_counter() - start
    return len(took) * (1 << 20) / seconds / 1e6, took[int(len(took) * 0.99)] * 1e3


def modelfs_fio(model: Model, root: Path, tree: Path | None) -> tuple[float, float]:
    m = Mount(root, env=tree_env(tree)).start()
    try:
        drop_caches()
        return fio_randread(model.path(m), model.size)
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)


class Nginx:
    """The model's file served by nginx on loopback (rclone's origin: it speaks no registry)."""

    def __init__(self, model: Model, root: Path) -> None:
        (root / "www").mkdir(parents=True)
        os.symlink(model.gguf, root / "www" / "model.gguf")
        port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf")])
        wait_for(lambda: subprocess.run(["curl", "-sfI", self.url + "model.gguf"],
                                        capture_output=True).returncode == 0, 30)  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def rclone(url: str, root: Path, what: str, size: int) -> tuple[float, ...]:
    """A fresh rclone mount read cold: ``cat`` (seconds, rclone's CPU seconds) or ``fio``."""
    mnt, cache = root / "mnt", root / "cache"
    mnt.mkdir(parents=True)
    cache.mkdir()
    proc = subprocess.Popen(
        _rclone_cmd(url, mnt, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: (mnt / "model.gguf").exists(), 60)
        drop_caches()
        if what == "fio":
            return fio_randread(mnt / "model.gguf", size)
        before = daemon_cpu_seconds(proc.pid)
        seconds = timed(["cat", str(mnt / "model.gguf")])
        return seconds, daemon_cpu_seconds(proc.pid) - before
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def hash_cpu_seconds(path: Path) -> tuple[float, float]:
    """CPU seconds of one sha256 and of one BLAKE3 over the file (read from the page cache into
    one reused buffer, not counted): what checking every byte costs at least, in this process."""
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    sha, b3 = hashlib.sha256(), blake3.blake3()
    spent = [0.0, 0.0]
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            for k, h in enumerate((sha, b3)):
                t = time.thread_time()
                h.update(view[:n])
                spent[k] += time.thread_time() - t
    return spent[0], spent[1]


def pull_and_mmap(model: Model, work: Path, trees: list[tuple[str, Path | None]], add) -> None:
    """One round of --pull-mmap: `curl -o FILE && sync` and the mmap load of that file, then
    for each tree `modelfs pull` into a fresh cache and the same load through a cold mount."""
    out = work / "curl.out"
    drop_caches()
    disk = timed(["sh", "-c", f"curl -sf -o {out} '{model.url}' && sync {out}"])
    drop_caches()
    local = mmap_load(out)
    out.unlink()
    add("curl -o FILE && sync s", disk)
    add("mmap load of that file s", local)
    for label, tree in trees:
        cache = work / f"pull-{label}"
        drop_caches()
        pull = timed_fn(
            lambda c=cache, t=tree: run_modelfs(
                "pull", model.name(), "--cache", str(c), env=tree_env(t)
            )
        )
        shutil.rmtree(cache)
        add(f"{label} modelfs pull / (curl -o FILE && sync)".strip(), disk / pull)
        root = work / f"mmap-{label}"
        m = Mount(root, env=tree_env(tree)).start()
        try:
            path = model.path(m)
            os.stat(path)
            drop_caches()
            cold = mmap_load(path)
            wait_for(lambda m=m: model.blob(m.cache).exists(), 300)
        finally:
            m.stop()
            shutil.rmtree(root, ignore_errors=True)
        add(f"{label} mmap load, cold mount s".strip(), cold)
        add(f"{label} mmap cold / (curl -o + load)".strip(), cold / (disk + local))


# The cores of --taskset: (the daemon's or curl's, the registry's and the reader's).
CORES = {"1 core": ("0", "0"), "2 cores": ("1", "0")}


def spread(xs: list[float], fmt: str = ".2f") -> str:
    """The median and the range of one figure over the rounds."""
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(median(xs), fmt)} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", action="append", help="mount options, comma separated")
    parser.add_argument("--tree", action="append", help="LABEL=PATH: the daemon of a checkout")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ceilings", type=Path, help="../shared/tools/ceilings: time those too")
    parser.add_argument("--fio", action="store_true", help="fio random reads, and rclone")
    parser.add_argument("--taskset", action="store_true", help="cold reads on 1 and 2 cores")
    parser.add_argument("--pull-mmap", action="store_true", help="pull and mmap load, vs curl")
    args = parser.parse_args()
    netsim = args.ceilings / "netsim.py" if args.ceilings else None
    ceilings: dict[str, list[float]] = {}
    variants = args.variant if args.variant is not None else ["", "push=no"]
    trees: list[tuple[str, Path | None]] = [
        (label, Path(path).resolve()) for label, path in (t.split("=", 1) for t in args.tree or [])
    ] or [("", None)]
    work = Path(tempfile.mkdtemp(prefix="modelfs-cold-"))
    if args.tree:
        os.chdir(work)  # `python -m modelfs` imports from the cwd before PYTHONPATH
    reg = RegistryProcess(work / "registry").start()
    rows: dict[str, list[float]] = {}  # figure -> one value per round

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    nginx = None
    try:
        model = Model(f"synthetic {args.mib} MiB", reg, "library/cold", "m", synthetic(args.mib))
        model.push(work)
        gib = model.size / GIB
        if args.fio:
            nginx = Nginx(model, work / "nginx")
        assert reg.proc is not None
        for i in range(args.repeat):
            add("load average (1 min)", os.getloadavg()[0])
            drop_caches()
            seconds, cpu = timed_cpu(["curl", "-sf", "-o", "/dev/null", model.url])
            add("curl GB/s", model.size / seconds / GB)
            add("curl CPU-s/GiB", cpu / gib)
            drop_caches()  # into fresh pages, as the daemon writes its partial file
            seconds_f, cpu = timed_cpu(["curl", "-sf", "-o", str(work / "curl.out"), model.url])
            os.unlink(work / "curl.out")
            add("curl -o FILE GB/s", model.size / seconds_f / GB)
            add("curl -o FILE CPU-s/GiB", cpu / gib)
            sha, b3 = hash_cpu_seconds(model.gguf)
            add("sha256 alone CPU-s/GiB", sha / gib)
            add("BLAKE3 alone CPU-s/GiB", b3 / gib)
            # Each round starts from another tree: the first read after curl's measured
            # ~0.7 CPU-s/GiB less here than the next ones, whichever code it ran (bench/COLD.md).
            k = i % len(trees)
            ordered = trees[k:] + trees[:k]
            for label, tree in ordered:
                for j, v in enumerate(variants):
                    opts = tuple(o for o in v.split(",") if o)
                    r = cold_read(model, work / f"r{i}-{label}-{j}", opts, tree)
                    key = f"{label} [{v or 'default'}]".strip()
                    add(f"{key} cold cat GB/s", model.size / r.seconds / GB)
                    add(f"{key} cold cat / curl", seconds / r.seconds)
                    add(f"{key} daemon CPU-s/GiB to the last byte", r.cpu_read / gib)
                    add(f"{key} daemon CPU-s/GiB to published", r.cpu_published / gib)
            if nginx is not None:
                s, cpu = rclone(nginx.url, work / f"rc{i}", "cat", model.size)
                add("rclone cold cat GB/s", model.size / s / GB)
                add("rclone CPU-s/GiB", cpu / gib)
                mbs, p99 = rclone(nginx.url, work / f"rf{i}", "fio", model.size)
                add("rclone fio MB/s", mbs)
                add("rclone fio p99 ms", p99)
                mbs, p99 = ranges_alone(model.url, model.size)
                add("4 MiB ranges alone (fio's pattern, no FUSE) MB/s", mbs)
                add("4 MiB ranges alone p99 ms", p99)
                for label, tree in ordered:
                    mbs, p99 = modelfs_fio(model, work / f"f{i}-{label}", tree)
                    add(f"{label} fio MB/s".strip(), mbs)
                    add(f"{label} fio p99 ms".strip(), p99)
            if args.taskset:
                for cores, (mine, theirs) in CORES.items():
                    pin(reg.proc.pid, theirs)
                    try:
                        drop_caches()
                        seconds, cpu = timed_cpu(
                            ["taskset", "-c", mine, "curl", "-sf", "-o", "/dev/null", model.url]
                        )
                        add(f"curl on {cores} GB/s", model.size / seconds / GB)
                        for label, tree in ordered:
                            r = cold_read(
                                model, work / f"t{i}-{label}", (), tree, cpus=(mine, theirs)
                            )
                            add(
                                f"{label} cold cat on {cores} GB/s".strip(),
                                model.size / r.seconds / GB,
                            )
                            add(
                                f"{label} on {cores} daemon CPU-s/GiB".strip(),
                                r.cpu_published / gib,
                            )
                    finally:
                        pin(reg.proc.pid, f"0-{os.cpu_count() - 1}")
            if args.pull_mmap:
                pull_and_mmap(model, work, trees, add)
            if netsim is not None:
                ceiling_rounds(netsim, model, work, i, ceilings, add)
                # The verified ceiling: the lazy file with no Python on the way in, plus the
                # two checks every byte needs, each measured alone in this round.
                add(
                    "lazycurl + sha256 + BLAKE3 alone CPU-s/GiB",
                    rows["lazycurl (curl receives, no check) CPU-s/GiB"][-1]
                    + rows["sha256 alone CPU-s/GiB"][-1]
                    + rows["BLAKE3 alone CPU-s/GiB"][-1],
                )
    finally:
        if nginx is not None:
            nginx.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {"when": time.strftime("%Y-%m-%d %H:%M"), "mib": args.mib, "rounds": rows}
    print(f"{args.repeat} rounds, interleaved; median (range):")
    for key, xs in rows.items():
        print(f"| {key} | {spread(xs)} | " + " | ".join(f"{x:.2f}" for x in xs) + " |")
    if netsim is not None:
        c = median([model.size / GB / x for x in rows["curl GB/s"]])
        out["ceilings"] = {**ceilings, **print_ceilings(model, c, ceilings)}
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
