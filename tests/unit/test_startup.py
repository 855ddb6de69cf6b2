"""What a command costs before it does anything: the modules it imports.

A command imports what it needs when it runs: ``modelfs --help``, ``ls`` or ``completion``
load no HTTP client, no trio and no FUSE (importing them all took a third of a second before
anything happened). The pull's own imports are checked against a real registry in
tests/component/test_startup_pull.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# What a command that speaks to no registry and mounts nothing must not load.
HEAVY = ("httpx", "trio", "pyfuse3", "cryptography", "modelfs.registry.client", "modelfs.fs.daemon")


def imported_by(*argv: str, cache: Path) -> set[str]:
    """The modules ``modelfs ARGV`` imported, as ``python -X importtime`` lists them."""
    env = {**os.environ, "OLLAMA_MODELS": str(cache)}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelfs", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("import time:")]
    assert lines, result.stderr
    # "import time:  self [us] | cumulative | imported package", nested ones indented.
    return {ln.rsplit("|", 1)[1].strip() for ln in lines}


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("pull", "--help"),
        ("mount", "--help"),
        ("help", "push"),
        ("ls",),
        ("ls", "--json"),
        ("du",),
        ("completion", "bash"),
        ("manpage",),
    ],
    ids=" ".join,
)
def test_a_command_that_needs_no_registry_imports_no_http_trio_or_fuse(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    modules = imported_by(*argv, cache=tmp_path)
    assert "modelfs.commands.parser" in modules  # the check itself sees modelfs's imports
    loaded = sorted(m for m in HEAVY if m in modules)
    assert not loaded, f"modelfs {' '.join(argv)} imported {loaded}: its start-up is slower"
