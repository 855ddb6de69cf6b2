"""modelfs against the ceilings and peers on this machine, in one run: writes bench/RESULTS.md.

Starts a real docker-registry on loopback, creates and pushes SmolLM2 (98 MB) and synthetic
GGUF-shaped models (1 GiB, and a big one, 4 GiB by default), then measures — medians of
--repeat runs, page cache dropped before every cold, warm and local run:

1. cold `cat` through a fresh mount vs `curl -o /dev/null` of the same blob (the network
   ceiling), `curl -o file && sync` (network + durable disk write), and `modelfs pull`; the
   CPU seconds per GiB of curl and of the daemon (until the blob is published);
2. warm (blob in the cache): through the mount (a link to the cache: the default) and with
   `-o links=no` (every byte through the daemon) vs a minimal pyfuse3 passthrough of the cache
   file (the FUSE ceiling) vs reading the cache file directly;
3. hot (page cache) vs the local file;
4. random 4 KiB and 1 MiB reads, cold and warm: bytes fetched per byte read, reads per second;
5. a llama.cpp-style load: mmap the GGUF, touch each tensor's pages in the order the file
   lists them — through a cold mount vs the local file;
6. `ls -l` and a GGUF header read on the cold big model: blob bytes fetched;
7. 16 concurrent readers of one cold blob: requests and bytes fetched vs the blob's size;
8. peers over the same blob served by nginx: rclone mount (--vfs-cache-mode full) and
   httpdirfs (--cache), cold and warm (if installed: scripts/bench.sh installs them);
9. daemon peak RSS (VmHWM) streaming the big model;
10. the read path without FUSE;
11. the big model pushed in Ollama's layout (no chunk index): what `ls -l`, the GGUF header and
    the first byte cost with the registry's chunksums, a published index, and neither
    (bench/lazy.py; `--only lazy` measures just this and merges it into RESULTS.json);
12. llama.cpp load + first token on SmolLM2: a cold mount vs the local file vs `modelfs pull`
    then load (bench/engine.py; `--only engine`).

Byte counts (4, 6, 7) go through the tests' counting proxy; timings never do.
Needs root (mounts, drop_caches). Run: bash scripts/bench.sh [--repeat 3] [--big-mib 4096]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import engine  # noqa: E402
import lazy  # noqa: E402
from gguf_synth import smollm2_gguf_path, write_synthetic_gguf  # noqa: E402
from support.mount import Mount, drop_caches, run_modelfs, sha256_path  # noqa: E402
from support.proxy import Proxy  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402

from modelfs.formats.chunks import CHUNK_BYTES  # noqa: E402
from modelfs.formats.gguf import read_gguf_header  # noqa: E402

GB = 1e9


def timed(cmd: list[str], **kw) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    return time.perf_counter() - start


def timed_cpu(cmd: list[str]) -> tuple[float, float]:
    """Seconds and CPU seconds (user + system) of a command run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), cmd)
    return seconds, usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (utime + stime, every thread) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_fn(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench: timed out")
        time.sleep(0.05)


class Model:
    def __init__(self, label: str, reg: RegistryProcess, repo: str, tag: str, gguf: Path):
        self.label, self.reg, self.repo, self.tag, self.gguf = label, reg, repo, tag, gguf
        self.size = gguf.stat().st_size
        self.hex = sha256_path(gguf)

    def push(self, work: Path) -> Model:
        src = work / "src"
        name = f"{self.reg.host}/{self.repo}:{self.tag}"
        run_modelfs("create", name, "--gguf", str(self.gguf), "--cache", str(src))
        run_modelfs("push", name, "--cache", str(src))
        shutil.rmtree(src)
        return self

    def name(self, host: str | None = None) -> str:
        return f"{host or self.reg.host}/{self.repo}:{self.tag}"

    def path(self, m: Mount, host: str | None = None) -> Path:
        model = self.repo.split("/")[-1]
        ns = "/".join(self.repo.split("/")[:-1])
        return m.mountpoint / (host or self.reg.host) / ns / model / self.tag / "model.gguf"

    @property
    def url(self) -> str:
        return f"http://{self.reg.host}/v2/{self.repo}/blobs/sha256:{self.hex}"

    def blob(self, cache: Path) -> Path:
        return cache / "blobs" / f"sha256-{self.hex}"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# -- 1-3: sequential throughput -----------------------------------------------------------------


def throughput(model: Model, work: Path, repeat: int) -> dict[str, float]:
    """Seconds (medians) for each way of reading the whole blob."""
    t: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        t.setdefault(key, []).append(seconds)

    for i in range(repeat):
        drop_caches()
        seconds, cpu = timed_cpu(["curl", "-sf", "-o", "/dev/null", model.url])
        add("curl", seconds)
        add("curl_cpu", cpu)
        out = work / "curl.out"
        drop_caches()
        add("curl_disk", timed(["sh", "-c", f"curl -sf -o {out} '{model.url}' && sync {out}"]))
        out.unlink()

        root = work / f"run{i}"
        m = Mount(root).start()
        try:
            pid = m.pid()
            assert pid is not None
            before = process_cpu_seconds(pid)
            drop_caches()
            add("cold", timed(["cat", str(model.path(m))]))
            # The daemon's CPU until the blob is published: its whole-blob sha256 included.
            wait_for(model.blob(m.cache).exists)
            add("cold_cpu", process_cpu_seconds(pid) - before)
        finally:
            m.stop()
        m = Mount(root).start()
        try:
            wait_for(model.path(m).is_symlink)
            drop_caches()
            add("warm", timed(["cat", str(model.path(m))]))
            add("hot", timed(["cat", str(model.path(m))]))
        finally:
            m.stop()
        m = Mount(root, options=("links=no",)).start()
        try:
            drop_caches()
            add("warm_daemon", timed(["cat", str(model.path(m))]))
            add("hot_daemon", timed(["cat", str(model.path(m))]))
        finally:
            m.stop()
        drop_caches()
        add("local", timed(["cat", str(model.blob(m.cache))]))
        add("local_hot", timed(["cat", str(model.blob(m.cache))]))
        add("passthrough", passthrough_read(model.blob(m.cache), work / "pt"))

        cache = work / f"pull{i}"
        drop_caches()
        add("pull", timed_fn(lambda c=cache: run_modelfs("pull", model.name(), "--cache", str(c))))
        shutil.rmtree(cache)
        shutil.rmtree(root)
    return {k: median(v) for k, v in t.items()}


def passthrough_read(path: Path, mnt: Path) -> float:
    """`cat` through a fresh minimal pyfuse3 passthrough of ``path``, with ``path`` itself in the
    page cache: only FUSE is timed (the FUSE ceiling; a source read from disk would time the disk)."""
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "passthrough.py"), str(path), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"passthrough failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        drop_caches()
        subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)
        return timed(["cat", str(mnt / "file")])
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        proc.wait(timeout=30)


def profile_cold(model: Model, work: Path, seconds_out: dict) -> list[tuple[str, float]]:
    """py-spy the daemon during one cold `cat`: the busiest functions, as shares of samples."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return []
    m = Mount(work / "profile").start()
    raw = work / "profile.txt"
    try:
        path = model.path(m)
        os.stat(path)
        drop_caches()
        rec = subprocess.Popen(
            [spy, "record", "-p", str(m.pid()), "-o", str(raw), "-f", "raw", "-r", "200",
             "--threads", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        seconds_out["profiled_cold"] = timed(["cat", str(path)])
        rec.send_signal(2)
        rec.wait(timeout=60)
    finally:
        m.stop()
    counts: dict[str, int] = {}
    total = 0
    idle = ("_thread_cache.py", "_io_epoll.py", "threading.py")
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        if any(i in leaf for i in idle):
            continue
        name = leaf.split(" (")[0]
        counts[name] = counts.get(name, 0) + int(n)
        total += int(n)
    shutil.rmtree(work / "profile", ignore_errors=True)
    return [(k, v / total) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:10]]


# -- 4, 6, 7: what a read costs in fetched bytes ------------------------------------------------


def model_bytes(proxy: Proxy, model: Model) -> tuple[int, int]:
    """Bytes and requests the proxy served for the model's blob (not its small blobs)."""
    records = [rec for rec in proxy.blob_records() if model.hex in rec.path]
    return sum(rec.body_bytes for rec in records), len(records)


def access_patterns(model: Model, proxy: Proxy, work: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    rng = random.Random(5)
    for label, piece, count in (("4k", 4096, 200), ("1m", 1 << 20, 40)):
        offsets = [rng.randrange(0, model.size - piece) for _ in range(count)]
        m = Mount(work / f"rand{label}").start()
        try:
            path = model.path(m, proxy.host)
            os.stat(path)
            proxy.reset()
            fd = os.open(path, os.O_RDONLY)
            try:
                drop_caches()
                cold = timed_fn(
                    lambda fd=fd, p=piece, offs=offsets: [os.pread(fd, p, o) for o in offs]
                )
                fetched, requests = model_bytes(proxy, model)
                warm = timed_fn(
                    lambda fd=fd, p=piece, offs=offsets: [os.pread(fd, p, o) for o in offs]
                )
            finally:
                os.close(fd)
        finally:
            m.stop()
        shutil.rmtree(work / f"rand{label}")
        out[f"random_{label}"] = {
            "reads": count,
            "bytes_read": count * piece,
            "fetched": fetched,
            "requests": requests,
            "cold_reads_per_s": count / cold,
            "again_reads_per_s": count / warm,
        }

    # 16 concurrent readers of one cold blob
    m = Mount(work / "sixteen").start()
    try:
        path = model.path(m, proxy.host)
        os.stat(path)
        proxy.reset()
        digests: list[str] = []

        def reader() -> None:
            digests.append(sha256_path(path))

        threads = [threading.Thread(target=reader) for _ in range(16)]
        drop_caches()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        fetched, requests = model_bytes(proxy, model)
        out["sixteen"] = {
            "ok": all(d == model.hex for d in digests) and len(digests) == 16,
            "fetched": fetched,
            "requests": requests,
        }
    finally:
        m.stop()
    shutil.rmtree(work / "sixteen")
    return out


def header_and_listing(model: Model, proxy: Proxy, work: Path) -> dict[str, int]:
    m = Mount(work / "header").start()
    try:
        proxy.reset()
        tagdir = model.path(m, proxy.host).parent
        subprocess.run(["ls", "-l", str(tagdir)], check=True, capture_output=True)
        ls_bytes = proxy.blob_bytes()
        with open(tagdir / "model.gguf", "rb") as f:

            def read(offset: int, size: int) -> bytes:
                return os.pread(f.fileno(), size, offset)

            info = read_gguf_header(read)
        header_fetched = proxy.blob_bytes() - ls_bytes
    finally:
        m.stop()
    shutil.rmtree(work / "header")
    return {"ls_bytes": ls_bytes, "header_fetched": header_fetched, "tensors": len(info.tensors)}


# -- 5: a llama.cpp-style mmap load --------------------------------------------------------------


def mmap_load(path: Path) -> float:
    """mmap the GGUF and touch every page of tensor data, tensor by tensor in file order."""
    with open(path, "rb") as f:
        info = read_gguf_header(lambda o, s: os.pread(f.fileno(), s, o))
        size = os.fstat(f.fileno()).st_size
        starts = [info.header_bytes + t.offset for t in info.tensors]
        ends = [*starts[1:], size]
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            start = time.perf_counter()
            total = 0
            for a, b in zip(starts, ends, strict=True):
                total += len(mm[a:b:4096])
            return time.perf_counter() - start


def mmap_loads(model: Model, work: Path, repeat: int) -> dict[str, float]:
    cold, local = [], []
    for i in range(repeat):
        root = work / f"mmap{i}"
        m = Mount(root).start()
        try:
            path = model.path(m)
            os.stat(path)
            drop_caches()
            cold.append(mmap_load(path))
        finally:
            m.stop()
        wait_for(model.blob(m.cache).exists)
        drop_caches()
        local.append(mmap_load(model.blob(m.cache)))
        shutil.rmtree(root)
    return {"cold": median(cold), "local": median(local)}


# -- 9: memory ----------------------------------------------------------------------------------


def streaming_rss(model: Model, work: Path) -> dict[str, float]:
    m = Mount(work / "rss").start()
    try:
        path = model.path(m)
        os.stat(path)
        drop_caches()
        seconds = timed(["cat", str(path)])
        pid = m.pid()
        hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    finally:
        m.stop()
    shutil.rmtree(work / "rss")
    return {"rss_peak": hwm, "cold_seconds": seconds}


# -- 8: peers -----------------------------------------------------------------------------------


NGINX_CONF = """
daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        autoindex on;
    }}
}}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peers(model: Model, blob: Path, work: Path, repeat: int) -> dict[str, float]:
    nginx = shutil.which("nginx")
    if nginx is None:
        return {}
    root = work / "nginx"
    (root / "www").mkdir(parents=True)
    os.link(blob, root / "www" / "model.gguf")
    port = free_port()
    (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port))
    proc = subprocess.Popen([nginx, "-c", str(root / "nginx.conf")], stderr=subprocess.DEVNULL)
    out: dict[str, float] = {}
    try:
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/"
        times = []
        for _ in range(repeat):
            drop_caches()
            times.append(timed(["curl", "-sf", "-o", "/dev/null", url + "model.gguf"]))
        out["nginx_curl"] = median(times)
        for label, cmd in (("rclone", _rclone_cmd), ("httpdirfs", _httpdirfs_cmd)):
            if shutil.which(label):
                try:
                    out.update(_peer(work, label, cmd, url, repeat))
                except (subprocess.CalledProcessError, TimeoutError) as e:
                    log(f"{label} failed: {e}")
                    out[f"{label}_failed"] = 1.0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def _rclone_cmd(url: str, mnt: Path, cache: Path) -> list[str]:
    return [
        "rclone", "mount", ":http:", str(mnt), "--http-url", url, "--vfs-cache-mode", "full",
        "--cache-dir", str(cache), "--read-only",
    ]  # fmt: skip


def _httpdirfs_cmd(url: str, mnt: Path, cache: Path) -> list[str]:
    # nginx answers ranges; httpdirfs's probe for them fails on it without --no-range-check.
    return [
        "httpdirfs", "-f", "--no-range-check", "--cache", "--cache-location", str(cache), url,
        str(mnt),
    ]  # fmt: skip


def _peer(work: Path, label: str, cmd, url: str, repeat: int) -> dict[str, float]:
    cold, warm = [], []
    for i in range(repeat):
        mnt, cache = work / f"{label}{i}-mnt", work / f"{label}{i}-cache"
        mnt.mkdir()
        cache.mkdir()
        proc = subprocess.Popen(
            cmd(url, mnt, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda mnt=mnt: (mnt / "model.gguf").exists(), 60)
            drop_caches()
            cold.append(timed(["cat", str(mnt / "model.gguf")]))
            drop_caches()
            warm.append(timed(["cat", str(mnt / "model.gguf")]))
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(mnt, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return {f"{label}_cold": median(cold), f"{label}_warm": median(warm)}


# -- main ---------------------------------------------------------------------------------------


def synthetic(mib: int) -> Path:
    path = REPO / ".cache" / "bench" / f"synthetic-{mib}m.gguf"
    if not path.exists() or path.stat().st_size != mib << 20:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_gguf(path, mib << 20, seed=11)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024, help="the synthetic model for 1-5, 7, 8")
    parser.add_argument("--big-mib", type=int, default=4096, help="the big model for 6 and 9")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument(
        "--render", action="store_true", help="rewrite --out from its .json without measuring"
    )
    parser.add_argument(
        "--only", choices=["lazy", "engine"], help="measure one section, keep the rest"
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        write_results(args.out, saved["results"], saved["repeat"])
        return
    if os.geteuid() != 0:
        sys.exit("bench: needs root (mounts and drop_caches)")
    if args.only == "lazy":
        saved = json.loads(args.out.with_suffix(".json").read_text())
        saved["results"]["lazy"] = measure_lazy(synthetic(args.big_mib))
        saved["results"]["lazy"]["date"] = time.strftime("%Y-%m-%d")
        args.out.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
        write_results(args.out, saved["results"], saved["repeat"])
        print("\n".join(lazy.render(saved["results"]["lazy"])))
        return
    if args.only == "engine":
        saved = json.loads(args.out.with_suffix(".json").read_text())
        saved["results"]["engine"] = measure_engine(args.repeat)
        args.out.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
        write_results(args.out, saved["results"], saved["repeat"])
        print("\n".join(engine.render(saved["results"]["engine"])))
        return

    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-"))
    reg = RegistryProcess(work / "registry").start()
    proxy = Proxy(reg.host).start()
    r: dict[str, object] = {}
    try:
        smol = Model("SmolLM2-135M Q4_1", reg, "library/smollm2", "135m", smollm2_gguf_path())
        mid = Model(
            f"synthetic {args.mib} MiB", reg, "library/synthetic", "mid", synthetic(args.mib)
        )
        big = Model(
            f"synthetic {args.big_mib} MiB",
            reg,
            "library/synthetic",
            "big",
            synthetic(args.big_mib),
        )
        for model in (smol, mid, big):
            log(f"pushing {model.label}")
            model.push(work)
        r["throughput"] = {}
        for model in (smol, mid):
            log(f"1-3 throughput: {model.label}")
            r["throughput"][model.label] = (model.size, throughput(model, work, args.repeat))  # type: ignore[index]
        log("profile of a cold read")
        extra: dict[str, float] = {}
        r["profile"] = profile_cold(mid, work, extra)
        log("10 the read path without FUSE")
        import read_path

        r["read_path"] = [read_path.measure(mid.name()) for _ in range(args.repeat)]
        log("4, 7 access patterns")
        r["access"] = access_patterns(mid, proxy, work)
        log("5 mmap load")
        r["mmap"] = {m.label: (m.size, mmap_loads(m, work, args.repeat)) for m in (smol, mid)}
        log("6 header of the big model")
        r["header"] = header_and_listing(big, proxy, work)
        log("9 RSS streaming the big model")
        r["rss"] = streaming_rss(big, work)
        log("8 peers")
        cache = work / "peer-src"
        run_modelfs("pull", mid.name(), "--cache", str(cache))
        r["peers"] = peers(mid, mid.blob(cache), work, args.repeat)
        r["sizes"] = {"mid": mid.size, "big": big.size}
        r["date"] = time.strftime("%Y-%m-%d")
        log("11 models modelfs did not create")
        r["lazy"] = lazy.measure(work, reg, proxy, big.gguf)
        log("12 llama.cpp load + first token")
        r["engine"] = engine.measure(work, reg, smol.gguf, args.repeat)
    finally:
        proxy.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"repeat": args.repeat, "results": r}, indent=1) + "\n"
    )
    write_results(args.out, r, args.repeat)
    print(args.out.read_text())


def measure_lazy(gguf: Path) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-"))
    reg = RegistryProcess(work / "registry").start()
    proxy = Proxy(reg.host).start()
    try:
        return lazy.measure(work, reg, proxy, gguf)
    finally:
        proxy.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


def measure_engine(repeat: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-"))
    reg = RegistryProcess(work / "registry").start()
    try:
        return engine.measure(work, reg, smollm2_gguf_path(), repeat)
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


def log(msg: str) -> None:
    print(f"bench: {msg} …", file=sys.stderr, flush=True)


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / GB:.2f} GB/s"


def write_results(path: Path, r: dict, repeat: int) -> None:
    L = [
        "# modelfs benchmark: against the ceilings and peers, same machine, same run",
        "",
        f"Generated by `bash scripts/bench.sh` on {r.get('date', time.strftime('%Y-%m-%d'))}: "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, docker-registry on "
        f"loopback; medians of {repeat} runs; page cache dropped before every cold, warm and "
        f"local run. Chunk {CHUNK_BYTES >> 20} MiB.",
        "",
        "## 1-3. Sequential reads (`cat`)",
        "",
        "| model | size | curl → /dev/null | curl CPU-s/GiB | curl → disk + sync | cold mount "
        "| daemon CPU-s/GiB, cold, to published | cold / curl "
        "| `modelfs pull` | pull / curl | pull / curl→disk |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, (size, t) in r["throughput"].items():
        gib = size / (1 << 30)
        cpu = [f"{t[k] / gib:.2f}" if k in t else "" for k in ("curl_cpu", "cold_cpu")]
        L.append(
            f"| {label} | {size / 1e6:.0f} MB | {rate(size, t['curl'])} | {cpu[0]} "
            f"| {rate(size, t['curl_disk'])} | {rate(size, t['cold'])} | {cpu[1]} "
            f"| {t['curl'] / t['cold']:.2f}× | {rate(size, t['pull'])} "
            f"| {t['curl'] / t['pull']:.2f}× | {t['curl_disk'] / t['pull']:.2f}× |"
        )
    L += [
        "",
        "| model | warm mount (link) | warm, `-o links=no` | pyfuse3 passthrough | local file "
        "| warm / local | links=no / passthrough | hot mount | hot, links=no | local, hot | hot / local |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, (size, t) in r["throughput"].items():
        L.append(
            f"| {label} | {rate(size, t['warm'])} | {rate(size, t['warm_daemon'])} "
            f"| {rate(size, t['passthrough'])} | {rate(size, t['local'])} "
            f"| {t['local'] / t['warm']:.2f}× | {t['passthrough'] / t['warm_daemon']:.2f}× "
            f"| {rate(size, t['hot'])} | {rate(size, t['hot_daemon'])} "
            f"| {rate(size, t['local_hot'])} | {t['local_hot'] / t['hot']:.2f}× |"
        )
    a = r["access"]
    mid = r["sizes"]["mid"]
    L += [
        "",
        f"## 4, 7. Random reads and concurrent readers ({mid >> 20} MiB model, cold mount)",
        "",
        "| pattern | reads | bytes read | bytes fetched | fetched / read | chunks fetched per read "
        "| requests | cold reads/s | again (cached) reads/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ("random_4k", "random_1m"):
        x = a[key]
        L.append(
            f"| {key.replace('_', ' ')} | {x['reads']} | {x['bytes_read']} | {x['fetched']} "
            f"| {x['fetched'] / x['bytes_read']:.1f} "
            f"| {x['fetched'] / x['reads'] / CHUNK_BYTES:.2f} | {x['requests']} "
            f"| {x['cold_reads_per_s']:.0f} | {x['again_reads_per_s']:.0f} |"
        )
    s = a["sixteen"]
    L += [
        "",
        f"16 concurrent readers of the whole cold blob: all got the right bytes: {s['ok']}; "
        f"{s['requests']} range requests, {s['fetched']} bytes fetched = "
        f"{s['fetched'] / mid:.3f}× the blob.",
        "",
        "## 5. llama.cpp-style load: mmap, touch every tensor page in file order",
        "",
        "| model | cold mount | local file (page cache dropped) | cold / local "
        "| `curl -o` + the local load | cold / (curl -o + local) |",
        "|---|---|---|---|---|---|",
    ]
    for label, (_size, t) in r["mmap"].items():
        download = r["throughput"][label][1]["curl_disk"] + t["local"]
        L.append(
            f"| {label} | {t['cold']:.2f} s | {t['local']:.2f} s | {t['cold'] / t['local']:.1f}× "
            f"| {download:.2f} s | {t['cold'] / download:.2f}× |"
        )
    h = r["header"]
    big = r["sizes"]["big"]
    rss = r["rss"]
    L += [
        "",
        f"## 6, 9. The big model ({big >> 20} MiB, cold)",
        "",
        f"- `ls -l` of its tag directory: {h['ls_bytes']} blob bytes fetched.",
        f"- GGUF header and metadata ({h['tensors']} tensors): {h['header_fetched']} bytes "
        f"fetched = {h['header_fetched'] / CHUNK_BYTES:.2f} chunks.",
        f"- daemon peak RSS (VmHWM) after streaming it: {rss['rss_peak'] / (1 << 20):.0f} MiB; "
        f"the stream ran at {rate(big, rss['cold_seconds'])}.",
        "",
        f"## 8. Peers, same {mid >> 20} MiB blob served by nginx on loopback",
        "",
    ]
    p = r["peers"]
    if not p:
        L.append("nginx not installed: peers not measured (scripts/bench.sh installs them).")
    else:
        cold_mid = r["throughput"][next(iter(k for k in r["throughput"] if "synthetic" in k))][1]
        L += [
            "| reader | cold | warm | modelfs cold / peer cold |",
            "|---|---|---|---|",
            f"| curl from nginx | {rate(mid, p['nginx_curl'])} | | |",
            f"| modelfs (registry) | {rate(mid, cold_mid['cold'])} | {rate(mid, cold_mid['warm'])} | |",
        ]
        for peer in ("rclone", "httpdirfs"):
            if f"{peer}_failed" in p:
                L.append(f"| {peer} | failed to read the blob in this run | | |")
            if f"{peer}_cold" in p:
                L.append(
                    f"| {peer} | {rate(mid, p[f'{peer}_cold'])} | {rate(mid, p[f'{peer}_warm'])} "
                    f"| {p[f'{peer}_cold'] / cold_mid['cold']:.2f}× |"
                )
    rp = r["read_path"]
    rp_read = median([x["read_seconds"] for x in rp])
    rp_pub = median([x["published_seconds"] for x in rp])
    cold_mid = r["throughput"][next(k for k in r["throughput"] if "synthetic" in k)][1]
    L += [
        "",
        f"## 10. The read path without FUSE ({mid >> 20} MiB, cold, in one process)",
        "",
        f"Registry + the blob door reading the blob in 1 MiB pieces as `cat` would "
        f"(bench/read_path.py): {rate(mid, rp_read)} ({rp_read / cold_mid['curl']:.2f}× the "
        f"time of curl), published after {rp_pub:.2f} s. Through the mount the same read runs at "
        f"{rate(mid, cold_mid['cold'])}: the difference is what serving READs through the daemon costs (not FUSE itself: see the pyfuse3 passthrough above).",
        "",
    ]
    if r["profile"]:
        L += [
            "## Where a cold read's daemon time goes (py-spy, leaf functions, idle waits excluded)",
            "",
            "| function | share of busy samples |",
            "|---|---|",
        ]
        L += [f"| `{fn}` | {share * 100:.0f}% |" for fn, share in r["profile"]]
        L += [
            "",
            "`_PrefixHash._feed` is the whole-blob sha256 (and, on the same bytes, the BLAKE3 "
            "digests of the local chunk index kept once the blob is published) in its thread at "
            "nice +10: py-spy counts a thread that waits for a core as busy, so its share is "
            "overstated; it runs on the CPU readers leave.",
            "",
        ]
    if "lazy" in r:
        L += lazy.render(r["lazy"])
    if "engine" in r:
        L += ["", *engine.render(r["engine"]), ""]
    L += targets(r)
    path.write_text("\n".join(L))


def targets(r: dict) -> list[str]:
    mid_label = next(k for k in r["throughput"] if "synthetic" in k)
    mid, t = r["throughput"][mid_label]
    a, h, p = r["access"], r["header"], r["peers"]
    rows = [
        ("cold sequential ≥ 0.6× curl", t["curl"] / t["cold"], 0.6, True),
        ("`modelfs pull` ≥ 1.0× curl", t["curl"] / t["pull"], 1.0, True),
        ("warm ≥ 0.9× the cache file read directly", t["local"] / t["warm"], 0.9, True),
        ("hot ≥ 0.9× the local file (hot)", t["local_hot"] / t["hot"], 0.9, True),
        ("`ls -l`: 0 blob bytes", h["ls_bytes"], 0, False),
        ("GGUF header of the big model: ≤ 2 chunks", h["header_fetched"] / CHUNK_BYTES, 2, False),
        (
            "random 4 KiB cold reads: ≤ 1 chunk fetched each",
            a["random_4k"]["fetched"] / a["random_4k"]["reads"] / CHUNK_BYTES,
            1,
            False,
        ),
        (
            "16 concurrent cold readers: each chunk fetched once",
            a["sixteen"]["fetched"] / mid,
            1.0,
            False,
        ),
        (
            "mmap load through a cold mount ≤ 1.5× (`curl -o` + the same load)",
            r["mmap"][mid_label][1]["cold"] / (t["curl_disk"] + r["mmap"][mid_label][1]["local"]),
            1.5,
            False,
        ),
        (
            "daemon RSS streaming the big model ≤ 150 MiB",
            r["rss"]["rss_peak"] / (1 << 20),
            150,
            False,
        ),
    ]
    for peer, want in (("rclone", 2.0), ("httpdirfs", 5.0)):
        if f"{peer}_cold" in p:
            rows.append((f"cold ≥ {want:.0f}× {peer}", p[f"{peer}_cold"] / t["cold"], want, True))
    out = [
        f"## Targets ({mid_label} unless named)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for label, value, bound, at_least in rows:
        met = value >= bound if at_least else value <= bound
        shown = f"{value:.2f}×" if at_least else f"{value:.2f}"
        out.append(f"| {label} | {shown} | {'yes' if met else '**no**'} |")
    out += [
        "",
        "Why the missed ones are missed, from the figures above:",
        "",
        f"- **cold ≥ 0.6× curl** ({t['curl'] / t['cold']:.2f}×): FUSE is not the wall: a minimal "
        f"pyfuse3 passthrough with its source in the page cache serves {rate(mid, t['passthrough'])} "
        f"here ({t['curl'] / t['passthrough']:.2f}× curl). The wall is CPU on 2 cores shared with "
        "the registry (docker-registry spends 0.55–1.0 CPU-s per GiB it serves) and `cat`. The "
        "cheapest lazily fetched FUSE files, timed in one run with modelfs (`bench/cold.py "
        "--ceilings`, section 13): netsim.py (4 streams of 4 MiB ranges pushed into the page "
        "cache) checking nothing, and bench/lazycurl.py (curl receives, no Python touches a byte "
        "on the way in) reach ~0.4–0.5× curl unverified; modelfs checks every chunk (BLAKE3) and "
        "the whole blob (sha256) on the same cores, which alone cost ~0.83 CPU-s per GiB. Per GiB "
        "here, receiving into fresh page-cache pages costs ~1.0 CPU-s (`curl -o FILE`: the "
        "guest's first touch of pages), more than curl's whole cost to /dev/null.",
        f"- **pull ≥ 1.0× curl** ({t['curl'] / t['pull']:.2f}×): curl writes to /dev/null; a pull "
        "writes the blob and fsyncs it before publishing. Against curl writing the same file and "
        f"syncing it, pull is at {t['curl_disk'] / t['pull']:.2f}×: the disk's durable write "
        "speed is the ceiling. A pull also starts a Python process: ~0.35–0.4 s before its first "
        "request (section 13), a fixed cost that weighs on small models.",
        "- **peers**: rclone's cold read is a Go FUSE daemon streaming one file without verifying "
        "it; modelfs verifies every chunk and the whole blob on the same 2 cores. Warm, modelfs "
        "serves a link to the cache file and is several times faster than both.",
        "- **mmap load** (a miss when marked so above): each page fault of a cold mapping is a "
        "READ that waits for its chunk; readahead keeps the network ahead of a streaming reader, "
        "and the cold-read costs above apply to every byte.",
        "",
    ]
    return out


if __name__ == "__main__":
    main()
