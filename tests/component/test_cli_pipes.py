"""Output piped to a reader that leaves early (``modelfs show NAME | head -2``): the command
ends quietly, as cat or git do when SIGPIPE ends them (status 141), with no traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.mount import modelfs_cmd, run_modelfs

NAME = "local.test/library/piped:x"
SIGPIPE_STATUS = 141


@pytest.fixture(scope="module")
def cache(small_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("piped-cache")
    run_modelfs("create", NAME, "--gguf", str(small_gguf), "--cache", str(root))
    return root


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """``modelfs ARGS`` with stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            modelfs_cmd(*args),
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ("show", NAME),
        ("show", NAME, "--json"),
        ("show", NAME, "--modelfile"),
        ("ls",),
        ("du",),
    ],
    ids=lambda args: " ".join(a for a in args if a != NAME),
)
def test_a_reader_that_left_ends_the_command_quietly(cache: Path, args: tuple[str, ...]) -> None:
    result = run_into_closed_pipe(*args, "--cache", str(cache))
    assert "Traceback" not in result.stderr, f"modelfs {args[0]} | head: {result.stderr}"
    assert result.stderr == "", result.stderr
    assert result.returncode == SIGPIPE_STATUS


def test_help_into_a_closed_pipe_is_quiet() -> None:
    # argparse swallows the failed write of its help itself: quiet, whatever the status.
    result = run_into_closed_pipe("--help")
    assert result.stderr == "", result.stderr


def test_the_same_commands_into_an_open_pipe_still_print(cache: Path) -> None:
    shown = run_modelfs("show", NAME, "--cache", str(cache)).stdout
    assert "synthetic" in shown
    assert NAME.rsplit("/", 1)[1] in run_modelfs("ls", "--cache", str(cache)).stdout
