"""12. An inference engine on a mounted model: llama.cpp (llama-cpp-python) loads SmolLM2 and
generates its first token, the page cache dropped before each run:

- from the local file (the ceiling: the model already on disk);
- through a cold mount (a fresh cache: every byte fetched as llama.cpp maps it);
- `modelfs pull` into a fresh cache, then from the pulled blob (what Ollama users do today);
- `curl -o /dev/null` of the blob: the network alone.

Times are from the runner (tests/support/llama_run.py): `Llama()` until the first streamed
token, so Python's import of llama_cpp is left out; pull is timed as the whole command.

Run alone (it merges into bench/RESULTS.json and rewrites RESULTS.md):
    .venv/bin/python bench/bench.py --only engine [--repeat 3]
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from support.mount import Mount, drop_caches, run_modelfs
from support.registry import RegistryProcess

RUNNER = Path(__file__).resolve().parents[1] / "tests" / "support" / "llama_run.py"


def _first_token(path: Path) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, str(RUNNER), str(path), "--tokens", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    doc = json.loads(out.stdout)
    return doc["first_token_seconds"], doc["text"]


def measure(work: Path, reg: RegistryProcess, gguf: Path, repeat: int) -> dict[str, object]:
    name = f"{reg.host}/library/smollm2:engine"
    src = work / "engine-src"
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(src))
    run_modelfs("push", name, "--cache", str(src))
    shutil.rmtree(src)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    url = f"http://{reg.host}/v2/library/smollm2/blobs/sha256:{digest}"
    runs: dict[str, list[float]] = {"local": [], "mount": [], "pull": [], "curl": []}
    texts = set()
    for i in range(repeat):
        drop_caches()
        seconds, text = _first_token(gguf)
        runs["local"].append(seconds)
        texts.add(text)

        root = work / f"engine{i}"
        m = Mount(root).start()
        try:
            path = m.mountpoint / reg.host / "library/smollm2/engine/model.gguf"
            drop_caches()
            seconds, text = _first_token(path)
            runs["mount"].append(seconds)
            texts.add(text)
        finally:
            m.stop()
        shutil.rmtree(root)

        cache = work / f"pull{i}"
        drop_caches()
        start = time.perf_counter()
        run_modelfs("pull", name, "--cache", str(cache))
        pulled = time.perf_counter() - start
        drop_caches()
        seconds, text = _first_token(cache / "blobs" / f"sha256-{digest}")
        runs["pull"].append(pulled + seconds)
        texts.add(text)
        shutil.rmtree(cache)

        start = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
        runs["curl"].append(time.perf_counter() - start)
    return {
        "model": gguf.name,
        "bytes": gguf.stat().st_size,
        "same_first_token": len(texts) == 1,
        "seconds": {k: statistics.median(v) for k, v in runs.items()},
        "runs": runs,
        "date": time.strftime("%Y-%m-%d"),
    }


def render(r: dict) -> list[str]:
    s = r["seconds"]
    local = s["local"]
    rows = [
        ("from the local file", s["local"]),
        ("through a cold mount", s["mount"]),
        ("`modelfs pull`, then from the blob", s["pull"]),
        ("(network alone: curl of the blob)", s["curl"]),
    ]
    out = [
        "## 12. llama.cpp load + first token",
        "",
        f"{r['model']} ({r['bytes'] / 1e6:.1f} MB), llama-cpp-python, mmap on, page cache "
        f"dropped before each run; medians ({r['date']}). Same first token every way: "
        f"{'yes' if r['same_first_token'] else 'NO'}. The mount is started before the clock; "
        "`modelfs pull` is timed as the whole command, its Python start-up included.",
        "",
        "| how | seconds | vs local file |",
        "|---|---|---|",
    ]
    out += [f"| {label} | {sec:.2f} | {sec / local:.1f}x |" for label, sec in rows]
    return out
