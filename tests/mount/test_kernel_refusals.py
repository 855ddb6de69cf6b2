"""The kernel refusing an invalidation is normal operation: a debug line, never an ERROR.

The daemon asks the kernel to forget an entry when the blob behind it is published or
removed. The kernel may have forgotten it already (memory pressure, ``drop_caches``): it
answers ENOENT, and the daemon's log stays clean.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mount.test_mount import wait_for
from support.mount import Mount, run_modelfs, sha256_path
from support.registry import RegistryProcess


def test_invalidating_an_entry_the_kernel_forgot_logs_no_error(
    registry: RegistryProcess, small_gguf: Path, tmp_path: Path
) -> None:
    name = f"{registry.host}/library/forgotten:8m"
    src = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", str(src))
    run_modelfs("push", name, "--cache", str(src))
    # Debug level: the refusal must be seen to have happened, not only be quiet.
    m = Mount(tmp_path / "m", debug=True)
    try:
        m.start()
        tag = m.mountpoint / registry.host / "library" / "forgotten" / "8m"
        model = tag / "model.gguf"
        assert sha256_path(model) == hashlib.sha256(small_gguf.read_bytes()).hexdigest()
        wait_for(model.is_symlink, "model.gguf to become a link once its blob is complete")
        # The directory stays held (open), its unused entries go: the kernel forgets
        # model.gguf while the daemon still lists it in a directory the kernel knows.
        held = os.open(tag, os.O_RDONLY | os.O_DIRECTORY)
        try:
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
            # Removing the blob makes the daemon invalidate the link's entry.
            run_modelfs("rm", name, "--cache", str(m.cache))
            wait_for(
                lambda: "kernel did not invalidate entry b'model.gguf'" in m.log_text(),
                "the daemon to meet the kernel's refusal of the forgotten entry",
            )
        finally:
            os.close(held)
    finally:
        m.stop()
    problems = m.unexpected_log_lines()
    assert not problems, "a refused invalidation was logged as a problem:\n" + "\n".join(problems)
