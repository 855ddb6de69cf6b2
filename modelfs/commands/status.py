"""``modelfs status``: ask running mounts for their live figures and print them.

Each mount's daemon answers on its control socket (``fs.status``: next to its pid
file, under ``$XDG_RUNTIME_DIR/modelfs`` or ``/run/modelfs``) with one JSON
document. Without a mountpoint every socket there is asked; one nobody answers on
(its daemon was killed) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from modelfs.commands.progress import human_bytes, human_seconds
from modelfs.errors import MountError
from modelfs.fs.mountctl import control_socket, runtime_dir, unix_address

log = logging.getLogger(__name__)

ANSWER_SECONDS = 10.0
MAX_ANSWER_BYTES = 16 << 20
LABEL_WIDTH = 10


def query(path: Path, timeout: float = ANSWER_SECONDS) -> dict[str, Any]:
    """The figures of the daemon listening at ``path`` (OSError if none does)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        with unix_address(path) as address:
            s.connect(address)
        s.sendall(b"status\n")
        data = b""
        while len(data) < MAX_ANSWER_BYTES and (piece := s.recv(1 << 16)):
            data += piece
    reply = json.loads(data)
    if not isinstance(reply, dict) or "error" in reply:
        raise ValueError(f"unexpected answer {data[:80]!r}")
    return reply


def mount_status(mountpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The figures of the mount at ``mountpoint``; a ``MountError`` if no daemon serves it."""
    shown = os.path.abspath(mountpoint)
    try:
        reply = query(control_socket(mountpoint))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        raise MountError(f"no modelfs daemon serves {shown}") from None
    except TimeoutError:
        raise MountError(
            f"the modelfs daemon of {shown} did not answer in {ANSWER_SECONDS:.0f}s"
        ) from None
    except OSError as e:
        raise MountError(f"cannot ask the modelfs daemon of {shown}: {e.strerror or e}") from None
    except ValueError as e:
        raise MountError(f"the modelfs daemon of {shown} answered oddly: {e}") from None
    if os.path.abspath(str(reply.get("mountpoint"))) != shown:
        raise MountError(f"no modelfs daemon serves {shown}")
    return reply


def every_mount() -> list[dict[str, Any]]:
    """The figures of every mount of this user whose daemon answers, by mountpoint."""
    try:
        sockets = sorted(runtime_dir(create=False).glob("*.sock"))
    except OSError:
        return []
    found = []
    for path in sockets:
        try:
            found.append(query(path))
        except (OSError, ValueError) as e:
            log.debug("%s: no answer (%s)", path, e)
    return sorted(found, key=lambda r: str(r.get("mountpoint")))


def render(r: dict[str, Any]) -> str:
    """A few aligned lines for one mount."""
    lines: list[tuple[str, str]] = []
    lines.append(
        (
            "daemon",
            f"pid {r['pid']}, modelfs {r['version']}, up {human_seconds(r['uptime_seconds'])}",
        )
    )
    cache = r["cache"]
    lines.append(
        (
            "cache",
            f"{r['cache_root']}: {human_bytes(cache['bytes'])} used, "
            f"{human_bytes(cache['free_bytes'])} free",
        )
    )
    bound = "none" if cache["max_bytes"] is None else human_bytes(cache["max_bytes"])
    keep = f"keep {human_bytes(cache['min_free_bytes'])} free"
    if cache["min_free_percent"] is not None:
        keep += f" ({cache['min_free_percent']:g}% of {human_bytes(cache['filesystem_bytes'])})"
    lines.append(("bounds", f"max {bound}, {keep}"))
    fetched = [f"{human_bytes(n)} from {host}" for host, n in sorted(r["fetched_bytes"].items())]
    if r.get("from_processes_bytes"):
        # Chunks another process sharing the cache fetched, taken from the partial file.
        shared = human_bytes(r["from_processes_bytes"])
        fetched.append(f"{shared} by other modelfs processes of the cache")
    for i, text in enumerate(fetched or ["nothing yet"]):
        lines.append(("fetched" if i == 0 else "", text))
    reads = r["reads"]
    lines.append(("reads", f"{reads['hit']} hits, {reads['miss']} misses (waited for a fetch)"))
    if not r["in_flight"]:
        lines.append(("in flight", "none"))
    for i, b in enumerate(r["in_flight"]):
        done = f"{human_bytes(b['present_bytes'])}/{human_bytes(b['size_bytes'])}"
        lines.append(("in flight" if i == 0 else "", f"{b['digest']}  {b['name']}  {done}"))
    lines.append(("errors", ", ".join(f"{name} {n}" for name, n in r["errors"].items())))
    # Newest first: the cause of what the user just met leads.
    for i, e in enumerate(reversed(r.get("recent_errors", []))):
        when = time.strftime("%H:%M:%S", time.localtime(e["at"]))
        times = f" (x{e['count']})" if e["count"] > 1 else ""
        lines.append(
            (
                "last error" if i == 0 else "",
                f"{when} {e['operation']} {e['errno']}: {e['message']}{times}",
            )
        )
    failures = r["digest_failures"]
    lines.append(
        ("mismatches", f"{failures['chunk']} chunks, {failures['blob']} whole blobs (discarded)")
    )
    evictions = r["evictions"]
    lines.append(
        ("evictions", f"{evictions['count']} models, {human_bytes(evictions['bytes'])} freed")
    )
    # Loops of the daemon that failed unexpectedly and were started again.
    for i, (what, f) in enumerate(sorted(r.get("failures", {}).items())):
        times = "once" if f["count"] == 1 else f"{f['count']} times"
        lines.append(("failures" if i == 0 else "", f"{what}: {times}, last {f['last']}"))
    if r.get("metrics"):
        lines.append(("metrics", f"http://{r['metrics']}/metrics"))
    body = "\n".join(f"  {label:<{LABEL_WIDTH}} {text}".rstrip() for label, text in lines)
    return f"{r['mountpoint']}\n{body}"


def table(reports: list[dict[str, Any]]) -> str:
    """``modelfs ps``: one line per running mount."""
    header = ("MOUNTPOINT", "PID", "UP", "CACHE", "FETCHED", "IN FLIGHT")
    rows = [
        (
            str(r["mountpoint"]),
            str(r["pid"]),
            human_seconds(r["uptime_seconds"]),
            f"{r['cache_root']} ({human_bytes(r['cache']['bytes'])})",
            human_bytes(sum(r["fetched_bytes"].values())),
            str(len(r["in_flight"])),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
