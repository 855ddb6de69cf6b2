"""modelfs as a mount helper: the argv mount.fuse3 (an fstab line of type ``fuse.modelfs``) or
mount(8) (``-t modelfs``, through a ``mount.modelfs`` link) runs it with, as the ``mount``
command it means.
"""

from __future__ import annotations

from pathlib import Path

from modelfs.errors import UsageError

# mount(8) options that become modelfs flags when mount.fuse3 runs us (an fstab line).
HELPER_FLAG_OPTIONS = {
    "cache": "--cache",
    "config": "--config",
    "key": "--key",
    "ca_file": "--ca-file",
    "log": "--log",
}


# The names mount(8) runs a helper by for ``-t modelfs`` / ``-t fuse.modelfs`` (a link to modelfs).
HELPER_PROGRAMS = {"mount.modelfs", "mount.fuse.modelfs"}


def mount_helper_argv(
    argv: list[str], commands: set[str], program: str = "modelfs"
) -> list[str] | None:
    """``modelfs SOURCE MOUNTPOINT -o OPTS`` (how mount.fuse3 runs the program of an fstab
    line of type ``fuse.modelfs``) as the ``mount`` command it means; None for other argv.

    Only that exact shape is a helper call, with ``-o`` present (mount.fuse3 always passes it:
    it adds ``dev``/``suid`` or their ``no`` forms), or any ``SOURCE MOUNTPOINT [-o OPTS]``
    when run as ``mount.modelfs``/``mount.fuse.modelfs``: a mistyped command
    (``modelfs unmount DIR``) must not mount anything.

    ``cache=``, ``config=``, ``key=``, ``ca_file=`` and ``log=`` become their flags, ``debug``
    ``--debug``; every other option goes to ``mount -o`` (which ignores mount(8)'s standard
    ones). SOURCE is only a label. As mount(8) does, the mount goes over whatever the
    directory holds.
    """
    as_helper = Path(program).name in HELPER_PROGRAMS
    if len(argv) < 2 or argv[0] in commands or argv[0].startswith("-"):
        return None
    _source, mountpoint, *rest = argv
    if not as_helper and not any(a == "-o" or (a.startswith("-o") and len(a) > 2) for a in rest):
        return None
    options: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "-o" and i + 1 < len(rest):
            options += rest[i + 1].split(",")
            i += 2
        elif arg.startswith("-o") and len(arg) > 2:
            options += arg[2:].split(",")
            i += 1
        elif arg in ("-n", "-s", "-v", "-f"):  # no mtab, sloppy, verbose, fake: mount(8)'s
            i += 1
        else:
            raise UsageError(f"as a mount helper: unexpected argument {arg!r}")
    flags: list[str] = []
    kept: list[str] = []
    debug = False
    for opt in (o.strip() for o in options):
        key, eq, value = opt.partition("=")
        if key in HELPER_FLAG_OPTIONS and eq:
            flags += [HELPER_FLAG_OPTIONS[key], value]
        elif key == "debug" and not eq:
            debug = True
        elif opt:
            kept.append(opt)
    out = ["--debug"] if debug else []
    out += ["mount", mountpoint, *flags, "--allow-non-empty"]
    if kept:
        out += ["-o", ",".join(kept)]
    return out
