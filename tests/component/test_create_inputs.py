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
import time
from pathlib import Path

import pytest
from support.mount import modelfs_cmd

DEADLINE_SECONDS = 30.0
# What `modelfs create` may take to refuse an input: the interpreter and its imports.
RSS_BOUND_KIB = 200 << 10
# A ceiling on the child's address space, so a regression fails the test, not the machine.
ADDRESS_SPACE_BYTES = 2 << 30
SPARSE_BYTES = 1 << 30


def run_bounded(*args: str, cwd: Path) -> tuple[int, str, int]:
    """Run modelfs with a deadline; its exit code, stderr and peak RSS (KiB)."""
    err_path = cwd / f"stderr-{time.monotonic_ns()}"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))

    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            modelfs_cmd(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
            preexec_fn=limit,  # setrlimit only, in the child
        )
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        # wait4: this child's own resource usage (RUSAGE_CHILDREN would mix in every child).
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise AssertionError(f"modelfs {' '.join(args)} hung for {DEADLINE_SECONDS:.0f} s")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_path.read_text(errors="replace"), usage.ru_maxrss


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
