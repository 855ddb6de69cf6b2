"""The ``-o`` options of a mount: one table (``MOUNT_OPTIONS``) that reads and checks each
option and that ``mount --help`` lists, so the two cannot drift apart.

A value out of its range is one line naming the option (``UsageError``), before anything
mounts: out of range, a daemon would start and then misbehave. Kept light (no HTTP, no
FUSE): the CLI builds its help from it on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from modelfs.errors import NameInvalid, UsageError
from modelfs.formats.chunks import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from modelfs.formats.names import PartKind, check_part

# Options mount(8) and mount.fuse3 pass on their own: accepted, and meaningless for a
# read-only network filesystem.
IGNORED_MOUNT_OPTIONS = frozenset(
    {
        "rw",
        "ro",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "_netdev",
        "nofail",
        "defaults",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "sync",
        "async",
        "owner",
        "group",
        "comment",
        "default_permissions",  # added with allow_other anyway
    }
)


# What each number may be: out of range, a daemon starts but misbehaves (chunk_kb=0 makes
# every large read EIO, streams=10**6 a million threads, stall_seconds=nan no stall ever).
MAX_STALL_SECONDS = 3600.0
MAX_LOOKUP_TTL_SECONDS = 86400.0
MAX_STREAMS_PER_HOST = 32
MAX_READ_AHEAD_KB = 1 << 20
MAX_BACKGROUND_REQUESTS = 65535  # the kernel's field is 16 bits
MAX_RATE_BYTES = 1 << 30  # per second
MAX_SIZE_BYTES = 1 << 60


def _seconds(key: str, val: str, lowest: float, highest: float, *, zero: bool) -> float:
    """A finite number of seconds in range (above ``lowest``, or equal to it with ``zero``)."""
    try:
        n = float(val)
    except ValueError:
        n = math.nan
    if not (math.isfinite(n) and (lowest <= n if zero else lowest < n) and n <= highest):
        at_least = f"from {lowest:g}" if zero else f"above {lowest:g}"
        raise UsageError(f"-o {key} takes seconds {at_least} to {highest:g}, not {val!r}")
    return n


def _whole(key: str, val: str, lowest: int, highest: int) -> int:
    try:
        n = int(val)
    except ValueError:
        n = lowest - 1
    if not lowest <= n <= highest:
        raise UsageError(f"-o {key} takes a whole number from {lowest} to {highest}, not {val!r}")
    return n


def _chunk_kb(val: str) -> int:
    low, high = MIN_CHUNK_BYTES >> 10, MAX_CHUNK_BYTES >> 10
    try:
        kb = int(val)
    except ValueError:
        kb = 0
    if not low <= kb <= high or kb & (kb - 1):
        raise UsageError(f"-o chunk_kb takes a power of two from {low} to {high}, not {val!r}")
    return kb


def size_option(
    label: str, val: str, *, lowest: int = 0, percent: bool = False
) -> tuple[int, float | None]:
    from modelfs.blobs.eviction import parse_size  # eviction's trio: only to read a size

    try:
        n, share = parse_size(val, percent=percent)
    except (UsageError, OverflowError):
        n, share = -1, None
    if share is None and not lowest <= n <= MAX_SIZE_BYTES:
        what = "a size (500MB, 500MiB, 10G)" + (" or a percentage (10%)" if percent else "")
        raise UsageError(f"{label} takes {what}, not {val!r}")
    return n, share


def _hosts(key: str, val: str) -> tuple[str, ...]:
    # fstab's -o takes commas itself: hosts are separated by '+' there.
    hosts = tuple(h.strip().lower() for h in val.replace("+", " ").split())
    if not hosts:
        raise UsageError(f"-o {key} needs at least one HOST[:PORT]")
    return tuple(_host(key, h) for h in hosts)


def _host(key: str, text: str) -> str:
    try:
        return check_part(PartKind.HOST, text)
    except NameInvalid:
        raise UsageError(f"-o {key} takes HOST[:PORT], not {text!r}") from None


def _choice(key: str, val: str, choices: tuple[str, ...]) -> str:
    if val not in choices:
        raise UsageError(f"-o {key} takes {' or '.join(choices)}, not {val!r}")
    return val


def _min_rate(val: str) -> int:
    # 0 would make a silent registry never a stall.
    n = size_option("-o min_rate", val, lowest=1)[0]
    if n > MAX_RATE_BYTES:
        raise UsageError(f"-o min_rate takes at most 1G (a second), not {val!r}")
    return n


def _address(val: str) -> tuple[str, int]:
    from modelfs.fs.status import parse_address  # the HTTP stack: only for this option

    return parse_address(val)


def _min_free(val: str) -> dict[str, object]:
    n, share = size_option("-o min_free", val, percent=True)
    return {"min_free": n, "min_free_percent": share}


# What an option's value sets in MountOptions, given what the options before it set
# (``registries`` and ``insecure_registry`` add up).
OptionParse = Callable[[str, dict[str, object]], dict[str, object]]


@dataclass(frozen=True)
class MountOption:
    """One ``-o`` option: how ``mount --help`` shows it, what it does, how its value is read."""

    usage: str  # ``key=VALUE`` or ``key`` (a flag: no value)
    help: str
    parse: OptionParse

    @property
    def key(self) -> str:
        return self.usage.partition("=")[0]

    @property
    def flag(self) -> bool:
        return "=" not in self.usage


# Every -o option, the one place each is checked; ``mount --help`` and the README list them
# from here.
MOUNT_OPTIONS: tuple[MountOption, ...] = (
    MountOption(
        "verify=strict|deferred",
        "strict (default): reads answer only checked bytes; deferred: served as they arrive, "
        "the whole blob checked once in",
        lambda v, _: {"deferred": _choice("verify", v, ("strict", "deferred")) == "deferred"},
    ),
    MountOption(
        "allow_other",
        "other users may read the mount (with default_permissions)",
        lambda v, _: {"allow_other": True},
    ),
    MountOption(
        "share_credentials",
        "with allow_other: other users' lookups use the owner's credentials too",
        lambda v, _: {"share_credentials": True},
    ),
    MountOption(
        "registries=HOST[+HOST...]",
        "the only registries any lookup may reach",
        lambda v, out: {"registries": (*out.get("registries", ()), *_hosts("registries", v))},  # type: ignore[misc]
    ),
    MountOption(
        "insecure_registry=HOST[:PORT]",
        "use plain http for this registry (as --insecure-registry)",
        lambda v, out: {
            "insecure_hosts": (
                *out.get("insecure_hosts", ()),
                _host("insecure_registry", v.strip()),
            )  # type: ignore[misc]
        },
    ),
    MountOption(
        "stall_seconds=S",
        "a blob request slower than min_rate over S seconds is retried (default 30)",
        lambda v, _: {
            "stall_seconds": _seconds("stall_seconds", v, 0, MAX_STALL_SECONDS, zero=False)
        },
    ),
    MountOption(
        "min_rate=SIZE",
        "bytes per second below which a request stalls (default 64K)",
        lambda v, _: {"min_bytes_per_second": _min_rate(v)},
    ),
    MountOption(
        "lookup_ttl=S",
        "seconds a resolved tag is reused before the registry is asked again (default 30)",
        lambda v, _: {
            "lookup_ttl_seconds": _seconds("lookup_ttl", v, 0, MAX_LOOKUP_TTL_SECONDS, zero=True)
        },
    ),
    MountOption(
        "streams=N",
        "concurrent range requests per registry (default 4)",
        lambda v, _: {"max_streams": _whole("streams", v, 1, MAX_STREAMS_PER_HOST)},
    ),
    MountOption(
        "chunk_kb=N",
        "chunk size for blobs without a chunk index, a power of two",
        lambda v, _: {"chunk_bytes": _chunk_kb(v) << 10},
    ),
    MountOption(
        "read_ahead_kb=N",
        "kernel readahead of the mount (root; empty: the kernel's)",
        lambda v, _: {
            "read_ahead_kb": _whole("read_ahead_kb", v, 0, MAX_READ_AHEAD_KB) if v else None
        },
    ),
    MountOption(
        "max_background=N",
        "FUSE requests the kernel keeps in flight (root; empty: the kernel's)",
        lambda v, _: {
            "max_background": (
                _whole("max_background", v, 0, MAX_BACKGROUND_REQUESTS) if v else None
            )
        },
    ),
    MountOption(
        "links=yes|no",
        "a file whose blob is complete in the cache is a symlink to it (default yes)",
        lambda v, _: {"links": _choice("links", v, ("yes", "no")) == "yes"},
    ),
    MountOption(
        "blobs_view=yes|no",
        "links point into /run/modelfs-blobs/<key>, a read-only bind mount of blobs/ (default yes as root)",
        lambda v, _: {"blobs_view": _choice("blobs_view", v, ("yes", "no")) == "yes"},
    ),
    MountOption(
        "push=yes|no",
        "push checked chunks into the page cache as they land (default no)",
        lambda v, _: {"push_pages": _choice("push", v, ("yes", "no")) == "yes"},
    ),
    MountOption(
        "cache_max=SIZE",
        "evict models fetched through the mount to keep blobs under SIZE (as --cache-max)",
        lambda v, _: {"cache_max": size_option("-o cache_max", v)[0]},
    ),
    MountOption(
        "min_free=SIZE|PCT",
        "evict to keep this much of the filesystem free (as --min-free; default 10%)",
        lambda v, _: _min_free(v),
    ),
    MountOption(
        "metrics=HOST:PORT",
        "serve Prometheus metrics at http://HOST:PORT/metrics (as --metrics)",
        lambda v, _: {"metrics": _address(v)},
    ),
    MountOption(
        "fuse_debug",
        "log every FUSE request (with --debug)",
        lambda v, _: {"fuse_debug": True},
    ),
)
_BY_KEY = {o.key: o for o in MOUNT_OPTIONS}


def mount_options_help() -> str:
    """The ``-o`` options, one per line: the epilog of ``mount --help``."""
    width = max(len(o.usage) for o in MOUNT_OPTIONS)
    return "\n".join(f"{o.usage:<{width}}  {o.help}" for o in MOUNT_OPTIONS)


def parse_mount_options(values: list[str]) -> dict[str, object]:
    """``-o a,b=c`` values → keyword arguments for MountOptions. An unknown option, or a value
    out of its range, is a ``UsageError`` naming the option."""
    out: dict[str, object] = {}
    for value in values:
        for opt in value.split(","):
            opt = opt.strip()
            if not opt:
                continue
            key, eq, val = opt.partition("=")
            if key in IGNORED_MOUNT_OPTIONS or key.startswith("x-"):
                continue
            option = _BY_KEY.get(key)
            if option is None or (option.flag and eq):
                raise UsageError(f"unknown mount option {opt!r}")
            out.update(option.parse(val, out))
    return out
