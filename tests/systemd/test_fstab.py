"""An /etc/fstab line of type ``fuse.modelfs``, under a real systemd 252: ``mount -a`` and
``umount`` from a shell, and the fstab generator's ``.mount`` unit at boot.

mount(8) runs mount.fuse3, which runs ``modelfs modelfs /mnt/fstab -o <options>`` through
``/bin/sh`` with no PATH of mount(8)'s (util-linux drops it), so the program is found in dash's
default PATH: the image has it at /usr/local/bin/modelfs, where the unit looks too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from support.nspawn import Container
from support.registry import RegistryProcess

from modelfs.fs.mountctl import BLOBS_VIEWS_DIR

POINT = "/mnt/fstab"
CACHE = "/var/cache/modelfs"
FSTAB = f"modelfs {POINT} fuse.modelfs ro,_netdev,nofail,allow_other,cache={CACHE} 0 0\n"
MOUNT_UNIT = "mnt-fstab.mount"
TAG_DIR = "library/smollm2/135m"
PARAMS = '{"temperature":0.2}'
LOG = f"{CACHE}/.modelfs/modelfs.log"
PROBLEM_RE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback \(most recent call last\)")
EXIT_SECONDS = 30

Boot = Callable[..., Container]


def params(container: Container, host: str) -> str:
    return container.run("cat", f"{POINT}/{host}/{TAG_DIR}/params.json").stdout


def daemons(container: Container) -> list[int]:
    """modelfs processes in the container."""
    found = []
    for proc in container.path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            # python3 /usr/local/bin/modelfs …, or the daemon it starts: python3 -m modelfs …
            if any(a == b"modelfs" or a.endswith(b"/modelfs") for a in argv[:3]):
                found.append(int(proc.name))
    return found


def assert_log_clean(container: Container) -> None:
    log = container.path(LOG).read_text()
    problems = [line for line in log.splitlines() if PROBLEM_RE.search(line)]
    assert not problems, "the daemon logged problems:\n" + "\n".join(problems)


def test_mount_a_mounts_the_fstab_line_and_umount_unmounts_it(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    c = container_factory()
    c.write("/etc/fstab", FSTAB)
    c.run("mkdir", "-p", POINT)
    c.run("mount", "-a")
    mount = c.mount_at(POINT)
    assert mount is not None and mount.fstype == "fuse.modelfs", c.mounts()
    assert "ro" in mount.options.split(","), mount
    assert params(c, registry.host) == PARAMS
    assert any(c.path(f"{CACHE}/blobs").iterdir()), f"cache={CACHE} was not used"
    # Links lead into the read-only view of blobs/, bound outside the mount: umount still works.
    link = f"{POINT}/{registry.host}/{TAG_DIR}/params.json"
    c.wait_for(
        "params.json to become a link into the read-only view",
        lambda: c.run("readlink", link, check=False).stdout.startswith(f"{BLOBS_VIEWS_DIR}/"),
        EXIT_SECONDS,
    )
    assert c.sh(f"echo x >> {link}", check=False).returncode != 0, "a write through a link"
    assert params(c, registry.host) == PARAMS
    c.run("umount", POINT)
    assert c.mount_at(POINT) is None, c.mounts()
    c.wait_for("the daemon exited after umount", lambda: not daemons(c), EXIT_SECONDS)
    views = [m for m in c.mounts() if m.point.startswith(f"{BLOBS_VIEWS_DIR}/")]
    assert not views, f"the read-only view of blobs/ outlived the mount: {views}"
    assert_log_clean(c)


def test_the_fstab_generator_mounts_the_line_at_boot(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    c = container_factory(files={"/etc/fstab": FSTAB})
    assert c.state == "running", c.run("systemctl", "--failed", "--no-pager").stdout
    assert c.show(MOUNT_UNIT, "ActiveState") == "active"
    mount = c.mount_at(POINT)
    assert mount is not None and mount.fstype == "fuse.modelfs", c.mounts()
    assert params(c, registry.host) == PARAMS
    # _netdev: ordered with the remote filesystems.
    assert MOUNT_UNIT in c.show("remote-fs.target", "After").split() or MOUNT_UNIT in (
        c.show("remote-fs.target", "Wants").split()
    )
    c.run("systemctl", "stop", MOUNT_UNIT)
    assert c.mount_at(POINT) is None, c.mounts()
    c.wait_for("the daemon exited after the unit stopped", lambda: not daemons(c), EXIT_SECONDS)
    assert_log_clean(c)
