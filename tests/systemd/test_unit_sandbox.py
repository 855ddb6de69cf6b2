"""systemd/modelfs@.service is sandboxed as far as FUSE allows, and the mount is still the
system's: the daemon runs under a system-call filter, may not make namespaces, set the clock
or the hostname, and is bounded in tasks and memory — but shares PID 1's mount namespace, so
what it mounts everyone sees (a service with a mount namespace of its own would mount inside
it, out of everyone's sight). ``systemd-analyze security`` scored the unit 6.5 before."""

from __future__ import annotations

import re

from support.registry import RegistryProcess
from systemd.test_units import (
    PARAMS,
    UNIT,
    Boot,
    assert_no_daemon_problems,
    booted,
    cat,
    start,
    tag_file,
)

# systemd-analyze security's figure for the unit as it ships (lower is better; 6.5 before the
# filter, the namespace, clock and hostname settings, and CAP_CHOWN gone).
EXPOSURE_AT_MOST = 4.0
SECCOMP_FILTER = "2"  # /proc/<pid>/status Seccomp: 2 is a filter in force


def proc_status(c, pid: str) -> dict[str, str]:
    lines = c.run("cat", f"/proc/{pid}/status").stdout.splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_the_daemon_is_sandboxed_and_its_mount_is_everyones(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    c = booted(container_factory)
    start(c)
    # Read from PID 1's namespaces, not the service's: the mount is the system's.
    assert cat(c, tag_file(registry.host, "params.json")) == PARAMS
    pid = c.show(UNIT, "MainPID")
    ns = {
        kind: (
            c.run("readlink", f"/proc/{pid}/ns/{kind}").stdout,
            c.run("readlink", f"/proc/1/ns/{kind}").stdout,
        )
        for kind in ("mnt", "uts")
    }
    assert ns["mnt"][0] == ns["mnt"][1], "the daemon has a mount namespace of its own"
    assert ns["uts"][0] != ns["uts"][1], "ProtectHostname= gave the daemon no UTS namespace"
    status = proc_status(c, pid)
    assert status["Seccomp"] == SECCOMP_FILTER, f"no system-call filter on the daemon: {status}"
    assert status["NoNewPrivs"] == "1"

    settings = {
        prop: c.show(UNIT, prop)
        for prop in (
            "RestrictNamespaces",
            "ProtectClock",
            "ProtectHostname",
            "TasksMax",
            "MemoryMax",
            "MemoryDenyWriteExecute",
            "SystemCallErrorNumber",
        )
    }
    assert settings["RestrictNamespaces"] == "yes", settings
    assert settings["ProtectClock"] == "yes" and settings["ProtectHostname"] == "yes", settings
    assert settings["MemoryDenyWriteExecute"] == "yes", settings
    assert settings["TasksMax"].isdigit() and int(settings["TasksMax"]) <= 1024, settings
    assert settings["MemoryMax"].isdigit(), settings
    # The filter answers EPERM, it does not kill: a call it refuses is an error the daemon
    # reports, not a crash.
    assert settings["SystemCallErrorNumber"] in ("1", "EPERM"), settings

    analyzed = c.run("systemd-analyze", "security", "--no-pager", UNIT, check=False).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", analyzed)
    assert found, analyzed[-2000:]
    assert float(found.group(1)) <= EXPOSURE_AT_MOST, (
        f"systemd-analyze security scores the unit {found.group(1)}:\n{analyzed}"
    )
    assert_no_daemon_problems(c)
