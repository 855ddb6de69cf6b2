"""A randomized workload over a real mount: concurrent readers (whole, random, mmap) of several
models under a small cache bound, with ``modelfs rm`` and ``pull`` on the same cache and a
kill -9 and remount; the invariants are in ``support/workload.py``.

Seeded: a failure prints the seed and how to replay it (MODELFS_SOAK_SEED=<seed>). The long
run of the same workload is bench/soak.py.
"""

from __future__ import annotations

import pytest
from gguf_synth import write_synthetic_gguf
from support.mount import run_modelfs
from support.workload import Model, Plan, Workload, seed_from_env

# Different sizes, 44 MiB in all, under a bound that holds the largest and little else.
MODEL_MIB = {"a": 4, "b": 8, "c": 12, "d": 20}
CACHE_MAX = "24M"
WORKLOAD_SECONDS = 40.0


@pytest.fixture(scope="module")
def workload_models(registry, tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    """Tags of library/workload: tag → (path under the registry's host, the GGUF's bytes)."""
    work = tmp_path_factory.mktemp("workload-src")
    out = {}
    for i, (tag, mib) in enumerate(MODEL_MIB.items()):
        gguf = work / f"{tag}.gguf"
        write_synthetic_gguf(gguf, mib << 20, seed=70 + i)
        name = f"{registry.host}/library/workload:{tag}"
        run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(work / "cache"))
        run_modelfs("push", name, "--cache", str(work / "cache"))
        out[tag] = (f"library/workload:{tag}", gguf.read_bytes())
    return out


def test_a_randomized_workload_keeps_every_promise(proxy, mount_factory, workload_models):
    seed = seed_from_env()
    plan = Plan(seed=seed, seconds=WORKLOAD_SECONDS, readers=4, kills=1, action_seconds=4.0)
    print(plan.replay("pytest tests/mount/test_workload.py"))
    m = mount_factory(f"cache_max={CACHE_MAX},min_free=0")
    models = [
        Model(
            f"{proxy.host}/{path}",
            m.mountpoint / proxy.host / "library" / "workload" / tag / "model.gguf",
            data,
        )
        for tag, (path, data) in workload_models.items()
    ]
    report = Workload(m, models, plan, "pytest tests/mount/test_workload.py").run()
    print(
        f"reads {dict(report.reads)}, errors {dict(report.errors)}, actions {dict(report.actions)}"
    )
    assert sum(report.reads.values()) > 0
    assert report.actions["kill"] == 1, plan.replay("pytest tests/mount/test_workload.py")
