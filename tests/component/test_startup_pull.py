"""A pull loads what a pull needs, against a real registry: the HTTP client and the blob
layer, none of the filesystem (FUSE, the daemon, the mount's option table), and no
cryptography where no Ollama key signs a request. The commands that speak to no registry
are checked in tests/unit/test_startup.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.mount import run_modelfs
from support.registry import RegistryProcess


def test_a_pull_imports_nothing_of_the_filesystem(
    tmp_path: Path, registry: RegistryProcess, small_gguf: Path
) -> None:
    name = f"{registry.host}/startup/small:v1"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", str(tmp_path / "src"))
    run_modelfs("push", name, "--cache", str(tmp_path / "src"))
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelfs", "pull", name, "--cache", str(cache)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (cache / "blobs").is_dir() and any((cache / "blobs").iterdir())
    # "import time:  self [us] | cumulative | imported package", nested ones indented.
    modules = {
        ln.rsplit("|", 1)[1].strip()
        for ln in result.stderr.splitlines()
        if ln.startswith("import time:")
    }
    assert "modelfs.commands.pull" in modules  # the check itself sees the pull's imports
    filesystem = sorted(m for m in modules if m == "pyfuse3" or m.startswith("modelfs.fs"))
    assert not filesystem, f"modelfs pull imported {filesystem}: its start-up is slower"
    # The registry asks for no credentials: nothing signs with the Ollama key.
    assert "cryptography" not in modules, "modelfs pull imported cryptography it did not use"
