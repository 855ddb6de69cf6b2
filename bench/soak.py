"""Soak: the randomized workload of tests/mount/test_workload.py, full size, for N minutes.

Starts a docker-registry and the tests' fault-injecting proxy, pushes three 96 MiB synthetic
models, SmolLM2 (98 MB) and an 8 MiB one, and mounts with ``--cache-max 200M``. First the
reported scenario at full size: two readers read two 96 MiB models whole at the same moment,
then a third is read; the cache must be back within 200 MB with a clean log. Then, with the
proxy injecting faults (every 7th blob request a 503, every 11th cut short, every 17th stalled
15 s), the workload (``tests/support/workload.py``): reader threads read whole, at random
offsets and through mmap, checking every byte; ``modelfs rm`` and ``pull`` on the same cache;
a kill -9 and remount every few minutes; the invariants checked throughout and at the end.
Writes bench/SOAK.md. Not part of the test run. Needs root.
Run: bash scripts/soak.sh [--minutes 10] [--readers 8] [--seed N] (or MODELFS_SOAK_SEED=N).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from gguf_synth import smollm2_gguf_path, write_synthetic_gguf  # noqa: E402
from support.mount import Mount, run_modelfs, sha256_path  # noqa: E402
from support.proxy import Proxy  # noqa: E402
from support.registry import RegistryProcess  # noqa: E402
from support.workload import (  # noqa: E402
    Model,
    Plan,
    Report,
    Violation,
    Workload,
    seed_from_env,
    status_of,
)

FAULTS = [
    {"path": "/blobs/", "method": "GET", "every": 7, "status": 503},
    {"path": "/blobs/", "method": "GET", "every": 11, "cut_after": 300_000},
    {"path": "/blobs/", "method": "GET", "every": 17, "stall_after": 100_000, "stall_seconds": 15},
]
CACHE_MAX = "200M"
CACHE_MAX_BYTES = 200 << 20
BIG_MIB = 96
# Warnings a faulty registry explains (a fetch a reader waited for failed and was retried).
FAULT_WARNINGS = ("WARNING modelfs.blobs", "WARNING modelfs.registry")
SCENARIO_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SOAK.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak: needs root")
    seed = args.seed if args.seed is not None else seed_from_env()
    minutes = args.minutes
    plan = Plan(
        seed=seed,
        seconds=minutes * 60,
        readers=args.readers,
        kills=max(1, int(minutes // 3)),
        action_seconds=10.0,
        faults=True,
    )
    replay = f"python bench/soak.py --minutes {minutes:g} --readers {args.readers}"
    print(plan.replay(replay), flush=True)
    work = Path(tempfile.mkdtemp(prefix="modelfs-soak-"))
    reg = RegistryProcess(work / "registry").start()
    proxy = Proxy(reg.host).start()
    m: Mount | None = None
    scenario: dict[str, object] = {}
    report: Report | None = None
    failure: str | None = None
    log: list[str] = []
    statuses: dict[int, int] = {}  # blob responses at the proxy
    try:
        sources = {f"moment:m{i}": work / f"m{i}.gguf" for i in range(3)}
        for i, path in enumerate(sources.values()):
            write_synthetic_gguf(path, BIG_MIB << 20, seed=60 + i)
        sources["smollm2:135m"] = smollm2_gguf_path()
        sources["small:8m"] = work / "small.gguf"
        write_synthetic_gguf(sources["small:8m"], 8 << 20, seed=11)
        for model, path in sources.items():
            name = f"{reg.host}/library/{model}"
            run_modelfs("create", name, "--gguf", str(path), "--cache", str(work / "src"))
            run_modelfs("push", name, "--cache", str(work / "src"))
        shutil.rmtree(work / "src")

        m = Mount(work / "m", options=(f"cache_max={CACHE_MAX}", "min_free=0")).start()
        root = m.mountpoint / proxy.host / "library"
        scenario = same_moment(m, root, sources)
        proxy.set_faults(FAULTS)
        models = [
            Model(
                f"{proxy.host}/library/{model}",
                root / model.replace(":", "/") / "model.gguf",
                path.read_bytes(),
            )
            for model, path in sources.items()
        ]
        try:
            report = Workload(m, models, plan, replay).run()
        except Violation as e:
            failure = str(e)
            print(failure, file=sys.stderr)
        log = m.log_text().splitlines()
        for rec in proxy.blob_records():
            statuses[rec.status] = statuses.get(rec.status, 0) + 1
    finally:
        if m is not None:
            m.stop()
        proxy.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    write(args, plan, scenario, report, failure, log, statuses)
    print(args.out.read_text())
    if failure:
        sys.exit(1)


def same_moment(m: Mount, root: Path, sources: dict[str, Path]) -> dict[str, object]:
    """Two 96 MiB models read whole at the same moment, closed, then a third: back within the
    200M bound, evictions counted, nothing failed."""
    began = time.monotonic()
    digests = {model: sha256_path(sources[model]) for model in ("moment:m0", "moment:m1")}
    got: dict[str, str] = {}
    start = threading.Barrier(2)

    def read(model: str) -> None:
        start.wait(timeout=60)
        got[model] = sha256_path(root / model.replace(":", "/") / "model.gguf")

    readers = [threading.Thread(target=read, args=(model,)) for model in digests]
    for t in readers:
        t.start()
    for t in readers:
        t.join(SCENARIO_SECONDS)
    assert got == digests, "wrong bytes in the same-moment scenario"
    assert sha256_path(root / "moment/m2/model.gguf") == sha256_path(sources["moment:m2"])
    deadline = time.monotonic() + SCENARIO_SECONDS
    while True:
        s = status_of(m)
        if s["cache"]["bytes"] <= CACHE_MAX_BYTES and not s["in_flight"]:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the cache stayed at {s['cache']['bytes']} bytes")
        time.sleep(0.5)
    problems = [ln for ln in m.log_text().splitlines() if " ERROR " in ln or "Traceback" in ln]
    return {
        "seconds": time.monotonic() - began,
        "cache_bytes": s["cache"]["bytes"],
        "evictions": s["evictions"],
        "failures": s["failures"],
        "problems": problems,
    }


def write(
    args, plan: Plan, scenario, report: Report | None, failure, log: list[str], statuses
) -> None:
    command = "python bench/soak.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Soak: the randomized workload at full size, through injected faults",
        "",
        f"Run as `{command.strip()}` (seed {plan.seed}; replay: `MODELFS_SOAK_SEED={plan.seed} "
        f"{command.strip()}`) on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}. `bash scripts/soak.sh` runs the same after "
        "setup.",
        "",
        f"Models: three of {BIG_MIB} MiB, SmolLM2 (98 MB), one of 8 MiB; `--cache-max {CACHE_MAX}`.",
        "",
        "## Two models at the same moment, then a third",
        "",
        f"Two readers read two {BIG_MIB} MiB models whole at once, then a third is read: the cache "
        f"settled at {scenario.get('cache_bytes', '?')} bytes against the {CACHE_MAX_BYTES} byte "
        f"bound in {scenario.get('seconds', 0):.0f} s; evictions {scenario.get('evictions')}; "
        f"loops failed: {scenario.get('failures') or 'none'}; ERROR or traceback lines: "
        f"{len(scenario.get('problems', [])) if scenario else '?'}.",
        "",
        "## The randomized workload",
        "",
        f"{plan.readers} readers (whole, random ranges, mmap) for {plan.seconds / 60:g} minutes; "
        f"`modelfs rm` or `pull` about every {plan.action_seconds:g} s; {plan.kills} kill -9 and "
        "remount. Faults: every 7th blob request a 503, every 11th cut short, every 17th stalled "
        "15 s.",
        "",
    ]
    if failure:
        lines += ["**FAILED**:", "", "```", failure, "```", ""]
    if report is not None:
        final = report.final_status
        cache = final.get("cache", {})
        over_bound = ""
        if not failure and (cache.get("bytes") or 0) > (cache.get("max_bytes") or 0):
            # The workload's end check passed: every model left is one `modelfs pull` pinned.
            over_bound = "; above it only by models `modelfs pull` pinned, none left to evict"
        lines += [
            "- reads checked against the source, all right: "
            + ", ".join(f"{k} {v}" for k, v in sorted(report.reads.items()))
            + f"; {report.read_bytes / 1e9:.2f} GB; errors: "
            + (", ".join(f"{k} {v}" for k, v in sorted(report.errors.items())) or "none"),
            "- actions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items())),
            "- blob responses at the proxy by status (all of the run): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
            f"- after quiescence: cache {final.get('cache', {}).get('bytes')} bytes (bound "
            f"{final.get('cache', {}).get('max_bytes')}{over_bound}), evictions since the last "
            "(re)mount "
            f"{final.get('evictions')}, errors answered {final.get('errors')}, loops failed "
            f"{final.get('failures') or 'none'}; `ls`, `du` and `status` agree",
            "",
        ]
        samples = report.samples
        if samples:
            first, last = samples[0][1], samples[-1][1]
            mid = samples[len(samples) // 2][1]
            lines += [
                "| daemon | start | middle | end (idle) | peak |",
                "|---|---|---|---|---|",
            ]
            for key, label, scale in (
                ("rss", "RSS MiB", 1 << 20),
                ("fds", "open fds", 1),
                ("threads", "threads", 1),
            ):
                peak = max(s[key] for _, s in samples)
                lines.append(
                    f"| {label} | {first[key] // scale} | {mid[key] // scale} | "
                    f"{last[key] // scale} | {peak // scale} |"
                )
            lines += [
                "",
                "(RSS, fds and threads are sampled every few seconds; a kill -9 starts a new "
                "daemon, so the columns after it are the new daemon's.)",
                "",
            ]
    problems = [ln for ln in log if " ERROR " in ln or "Traceback" in ln]
    warnings = [ln for ln in log if " WARNING " in ln]
    explained = sum(any(w in ln for w in FAULT_WARNINGS) for ln in warnings)
    lines += [
        f"Daemon log: {len(warnings)} WARNING lines ({explained} from the blob layer and registry "
        f"client: fetches the injected faults failed and were retried), {len(problems)} ERROR or "
        "traceback lines" + ("" if not problems else "; first: `" + problems[0][:200] + "`"),
        "",
    ]
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
