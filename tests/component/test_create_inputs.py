"""`modelfs create`'s small inputs (Modelfile, template, params, license) must be regular files
of a bounded size, checked before they are read (issue: security).

A 1 GiB sparse file, /dev/zero or a FIFO given by mistake (or by a script someone else
wrote) is one line naming the file, exit 2 as other usage errors: never gigabytes of memory,
a MemoryError or a hang.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

DEADLINE_SECONDS = 30.0
# What `modelfs create` may take to refuse an input: the interpreter and its imports.
RSS_BOUND_KIB = 200 << 10
# A ceiling on the child's address space, so a regression fails the test, not the machine.
ADDRESS_SPACE_BYTES = 2 << 30
SPARSE_BYTES = 1 << 30


# Runs modelfs and, as it exits, writes its peak RSS (VmHWM, KiB) to $PEAK_FILE. VmHWM is the
# peak of the process's own memory since exec; ru_maxrss would also count the pages of the
# (large) test process it was forked from.
REPORT_PEAK = """
import atexit, os, runpy, sys

def report_peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(kib)

atexit.register(report_peak)
runpy.run_module("modelfs", run_name="__main__")
"""


def run_bounded(*args: str, cwd: Path) -> tuple[int, str, int]:
    """Run modelfs with a deadline; its exit code, stderr and peak RSS (KiB)."""
    err_path = cwd / "stderr"
    peak_path = cwd / "peak"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))

    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", REPORT_PEAK, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
            env={**os.environ, "PEAK_FILE": str(peak_path)},
            preexec_fn=limit,  # setrlimit only, in the child
        )
        try:
            code = proc.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"modelfs {' '.join(args)} hung for {DEADLINE_SECONDS:.0f} s"
            ) from None
    return code, err_path.read_text(errors="replace"), int(peak_path.read_text())


@pytest.fixture
def inputs(tmp_path: Path, small_gguf: Path) -> dict[str, Path]:
    (tmp_path / "small.gguf").symlink_to(small_gguf)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(SPARSE_BYTES)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {"sparse": sparse, "zero": Path("/dev/zero"), "fifo": fifo}


@pytest.mark.parametrize(
    ("flag", "kind", "says"),
    [
        ("-f", "sparse", "Modelfile {path} is 1024.0 MiB, over the 16 MiB limit"),
        ("-f", "zero", "Modelfile {path} is not a regular file"),
        ("-f", "fifo", "Modelfile {path} is not a regular file"),
        ("--template", "sparse", "template {path} is 1024.0 MiB, over the 16 MiB limit"),
        ("--template", "zero", "template {path} is not a regular file"),
        ("--template", "fifo", "template {path} is not a regular file"),
        ("--params", "zero", "params file {path} is not a regular file"),
        ("--params", "fifo", "params file {path} is not a regular file"),
        ("--license", "sparse", "license {path} is 1024.0 MiB, over the 16 MiB limit"),
        ("--license", "fifo", "license {path} is not a regular file"),
    ],
)
def test_an_input_that_is_not_a_small_regular_file_is_one_line_at_once(
    tmp_path: Path, inputs: dict[str, Path], flag: str, kind: str, says: str
) -> None:
    path = inputs[kind]
    source = [] if flag == "-f" else ["--gguf", str(tmp_path / "small.gguf")]
    cache = tmp_path / "cache"
    code, stderr, rss_kib = run_bounded(
        "create", "local/x:y", *source, flag, str(path), "--cache", str(cache), cwd=tmp_path
    )
    assert rss_kib < RSS_BOUND_KIB, (
        f"create {flag} {kind} took {rss_kib >> 10} MiB: it read the input before checking it"
    )
    assert stderr == f"modelfs: {says.format(path=path)}\n", stderr
    assert code == 2, stderr
    assert not (cache / "manifests").exists() or not list((cache / "manifests").rglob("y"))
