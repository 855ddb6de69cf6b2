"""Live figures of a running mount: one snapshot, served on a control socket and as metrics.

``Live`` holds the daemon's objects the figures come from (the blob door, whose
``snapshot`` gives its counters and the blobs being filled; the evictor, the FUSE
errors by errno, the cache and its bounds); ``Live.take`` makes a ``Snapshot`` of
them, a plain value that becomes the JSON ``modelfs status`` prints. The counters
are read on the trio thread, where they change; only the disk figures (cache use,
free space) are read in a worker thread.

Two ways out:

- the control socket, ``<pid file's stem>.sock`` next to the daemon's pid file
  (mode 0600, removed on exit): a client sends ``status`` and gets the snapshot
  as one JSON document (``serve_control``, a task of the daemon's nursery);
- with ``-o metrics=HOST:PORT``, Prometheus text at ``/metrics`` (``Metrics``): a
  registry of the daemon's own, a collector that takes a snapshot at each scrape
  (on the trio thread, through the trio token: the HTTP server is a thread, its
  connections bounded in number and time by ``metricsserver``) and a histogram of
  range-request latency, observed as each request ends.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelfs import __version__
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import Evictor
from modelfs.blobs.reader import Blobs
from modelfs.errors import MountError, UsageError
from modelfs.fs import metricsserver, mountctl
from modelfs.fs.errorlog import RecentError, RecentErrors
from modelfs.tasks import Failures, supervise

log = logging.getLogger(__name__)

SOCKET_MODE = 0o600  # the figures name every model its owner reads
REQUEST_SECONDS = 5.0  # a client that sends nothing for this long is dropped
MAX_REQUEST_BYTES = 256
# Range requests carry up to 8 chunks (32 MiB): from a few ms on loopback to a minute when slow.
FETCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Where the control socket is and how to reach it are mountctl's: `modelfs status` and
# `ps` use them without importing the daemon's side (trio, the blob layer, prometheus).
UNIX_PATH_MAX_BYTES = mountctl.UNIX_PATH_MAX_BYTES
control_socket = mountctl.control_socket
unix_address = mountctl.unix_address


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) → (host, port), for ``-o metrics=``."""
    host, colon, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"-o metrics takes HOST:PORT (127.0.0.1:9100), not {text!r}")
    return host, int(port)


# -- the snapshot ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskUse:
    cache_bytes: int  # blobs and partial blobs, allocated blocks
    free_bytes: int  # available to the daemon on the cache's filesystem
    filesystem_bytes: int


@dataclass(frozen=True)
class InFlight:
    """A blob being fetched, not complete yet (the blob door's ``snapshot``)."""

    digest: str  # short
    name: str  # the model it is read for
    present_bytes: int
    size_bytes: int


@dataclass(frozen=True)
class Snapshot:
    version: str
    pid: int
    mountpoint: str
    cache_root: str
    started: float  # seconds since the epoch
    uptime_seconds: float
    metrics: str | None  # HOST:PORT serving /metrics
    disk: DiskUse
    cache_max_bytes: int | None
    min_free_bytes: int  # what eviction keeps free: the bytes or the share, the larger
    min_free_percent: float | None
    fetched_bytes: dict[str, int]  # per registry host
    from_processes_bytes: int  # fetched by another modelfs process of the cache, used here
    range_requests: int
    read_hits: int
    read_misses: int
    in_flight: tuple[InFlight, ...]
    errors: dict[int, int]  # errno → answers to the kernel
    chunk_mismatches: int
    blob_mismatches: int
    evictions: int
    evicted_bytes: int
    cache_write_failures: int
    published: int
    recent_errors: tuple[RecentError, ...] = ()
    # What of the daemon's own work failed unexpectedly and was started again: what →
    # (times, the last error).
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``modelfs status --json`` (errno names as keys, EIO always there)."""
        errors = {"EIO": 0} | {
            errno.errorcode.get(code, str(code)): n for code, n in sorted(self.errors.items())
        }
        return {
            "version": self.version,
            "pid": self.pid,
            "mountpoint": self.mountpoint,
            "cache_root": self.cache_root,
            "started": self.started,
            "uptime_seconds": round(self.uptime_seconds, 3),
            "metrics": self.metrics,
            "cache": {
                "bytes": self.disk.cache_bytes,
                "max_bytes": self.cache_max_bytes,
                "min_free_bytes": self.min_free_bytes,
                "min_free_percent": self.min_free_percent,
                "free_bytes": self.disk.free_bytes,
                "filesystem_bytes": self.disk.filesystem_bytes,
            },
            "fetched_bytes": dict(sorted(self.fetched_bytes.items())),
            "from_processes_bytes": self.from_processes_bytes,
            "range_requests": self.range_requests,
            "reads": {"hit": self.read_hits, "miss": self.read_misses},
            "in_flight": [
                {
                    "digest": b.digest,
                    "name": b.name,
                    "present_bytes": b.present_bytes,
                    "size_bytes": b.size_bytes,
                }
                for b in self.in_flight
            ],
            "errors": errors,
            "recent_errors": [
                {
                    "at": e.at,
                    "operation": e.operation,
                    "errno": errno.errorcode.get(e.errno, str(e.errno)),
                    "message": e.message,
                    "count": e.count,
                }
                for e in self.recent_errors
            ],
            "digest_failures": {"chunk": self.chunk_mismatches, "blob": self.blob_mismatches},
            "evictions": {"count": self.evictions, "bytes": self.evicted_bytes},
            "cache_write_failures": self.cache_write_failures,
            "published": self.published,
            "failures": {
                what: {"count": count, "last": last}
                for what, (count, last) in sorted(self.failures.items())
            },
        }


@dataclass
class Live:
    """The daemon's objects the figures are read from."""

    mountpoint: Path
    cache: BlobCache
    blobs: Blobs
    evictor: Evictor
    errors: Counter[int]
    recent_errors: RecentErrors = field(default_factory=RecentErrors)
    failures: Failures = field(default_factory=Failures)
    started: float = field(default_factory=time.time)
    metrics: str | None = None
    # Uptime by the monotonic clock: a clock step does not change it.
    _began: float = field(default_factory=time.monotonic, repr=False)

    def disk(self) -> DiskUse:
        """Cache use and free space: stats of files, so from a worker thread."""
        st = os.statvfs(self.cache.root)
        return DiskUse(
            self.cache.usage_bytes(), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        )

    def snapshot(self, disk: DiskUse) -> Snapshot:
        """Every figure at this moment. On the trio thread: the counters change there."""
        door = self.blobs.snapshot()
        stats = door.stats
        bounds = self.evictor.bounds  # read each time: a reload may replace them
        in_flight = tuple(
            InFlight(b.digest.short, b.name.display_shortest(), b.present_bytes, b.size)
            for b in door.filling
        )
        return Snapshot(
            version=__version__,
            pid=os.getpid(),
            mountpoint=str(self.mountpoint),
            cache_root=str(self.cache.root),
            started=self.started,
            uptime_seconds=time.monotonic() - self._began,
            metrics=self.metrics,
            disk=disk,
            cache_max_bytes=bounds.max_bytes,
            min_free_bytes=bounds.need_free(disk.filesystem_bytes),
            min_free_percent=bounds.min_free_percent,
            fetched_bytes=dict(stats.bytes_by_host),
            from_processes_bytes=stats.bytes_from_processes,
            range_requests=stats.requests,
            read_hits=stats.read_hits,
            read_misses=stats.read_misses,
            in_flight=tuple(sorted(in_flight, key=lambda b: (b.name, b.digest))),
            errors=dict(self.errors),
            chunk_mismatches=stats.chunk_mismatches,
            blob_mismatches=stats.blob_mismatches,
            evictions=len(self.evictor.evicted),
            evicted_bytes=self.evictor.evicted_bytes,
            cache_write_failures=stats.cache_write_failures,
            published=stats.published,
            recent_errors=self.recent_errors.entries(),
            failures={
                what: (count, self.failures.last[what])
                for what, count in self.failures.counts.items()
            },
        )

    async def take(self) -> Snapshot:
        """A snapshot, from the trio thread."""
        disk = await trio.to_thread.run_sync(self.disk)
        return self.snapshot(disk)

    def take_from_thread(self, token: trio.lowlevel.TrioToken) -> Snapshot:
        """A snapshot, from a thread that is not trio's (the metrics server's)."""
        disk = self.disk()
        return trio.from_thread.run_sync(self.snapshot, disk, trio_token=token)


# -- the control socket ------------------------------------------------------------------------


def open_control(path: Path) -> trio.socket.SocketType:
    """Listen at ``path`` (mode 0600), replacing a socket a dead daemon left there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            # The kernel has just given us this mountpoint: whoever served it before is gone.
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        # Private from its first moment: bind gives the file the socket's own mode (Linux),
        # and never follows a symlink at the path (it fails, "Address already in use").
        os.fchmod(sock.fileno(), SOCKET_MODE)
        with unix_address(path) as address:
            sock.bind(address)
        bound = True
        sock.listen(16)
    except BaseException:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return trio.socket.from_stdlib_socket(sock)


async def serve_control(
    sock: trio.socket.SocketType, path: Path, take: Callable[[], Awaitable[Snapshot]]
) -> None:
    """Answer ``status`` on ``sock`` until cancelled; remove the socket file when done."""
    identity = os.stat(path)

    async def answer(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                request = b""
                with trio.move_on_after(REQUEST_SECONDS):
                    while b"\n" not in request and len(request) < MAX_REQUEST_BYTES:
                        data = await stream.receive_some(MAX_REQUEST_BYTES)
                        if not data:
                            break
                        request += data
                if request.strip() == b"status":
                    reply: dict[str, Any] = (await take()).as_dict()
                else:
                    reply = {"error": f"unknown request {request[:40]!r}; try 'status'"}
                await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("control socket: client gone (%s)", e)
        except Exception:
            # A client must never take the daemon down with it.
            log.exception("control socket: answering a client failed")

    try:
        await trio.serve_listeners(answer, [trio.SocketListener(sock)])
    finally:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == (identity.st_dev, identity.st_ino):
                os.unlink(path)


# -- Prometheus ------------------------------------------------------------------------------


class SnapshotCollector(Collector):
    """The figures of a snapshot taken at scrape time, as Prometheus metrics."""

    def __init__(self) -> None:
        # Set once the daemon's objects exist (``Metrics.attach``); until then, no figures.
        self.take: Callable[[], Snapshot] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.take is None:
            return iter(())
        try:
            snapshot = self.take()
        except trio.RunFinishedError:
            return iter(())  # a scrape racing the daemon's exit
        return iter(metric_families(snapshot))


def metric_families(s: Snapshot) -> list[Metric]:
    """A snapshot as Prometheus metric families (counters get ``_total`` when written)."""

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value)

    def labelled(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=[label])
        for key, n in values.items():
            family.add_metric([key], n)
        return family

    info = GaugeMetricFamily(
        "modelfs_info", "The mount (always 1)", labels=["version", "mountpoint", "cache_root"]
    )
    info.add_metric([s.version, s.mountpoint, s.cache_root], 1)
    as_dict = s.as_dict()
    out: list[Metric] = [
        info,
        gauge("modelfs_start_time_seconds", "When the daemon started (Unix time)", s.started),
        gauge("modelfs_cache_bytes", "Bytes of blobs and partial blobs", s.disk.cache_bytes),
        gauge(
            "modelfs_cache_free_bytes", "Free bytes on the cache's filesystem", s.disk.free_bytes
        ),
        gauge("modelfs_cache_filesystem_bytes", "The cache's filesystem", s.disk.filesystem_bytes),
        gauge("modelfs_cache_min_free_bytes", "Bytes eviction keeps free", s.min_free_bytes),
    ]
    if s.cache_max_bytes is not None:
        out.append(gauge("modelfs_cache_max_bytes", "The bound (--cache-max)", s.cache_max_bytes))
    out += [
        labelled(
            "modelfs_fetched_bytes",
            "Checked blob bytes received, by registry host",
            "registry",
            as_dict["fetched_bytes"],
        ),
        counter("modelfs_range_requests", "Range requests made, tries included", s.range_requests),
        labelled(
            "modelfs_reads",
            "Reads of blob bytes: hit (already present), miss (waited for a fetch)",
            "result",
            as_dict["reads"],
        ),
        gauge("modelfs_blobs_in_flight", "Blobs open or fetched, not complete", len(s.in_flight)),
        gauge(
            "modelfs_in_flight_present_bytes",
            "Bytes present of the blobs in flight",
            sum(b.present_bytes for b in s.in_flight),
        ),
        gauge(
            "modelfs_in_flight_size_bytes",
            "Size of the blobs in flight",
            sum(b.size_bytes for b in s.in_flight),
        ),
        labelled(
            "modelfs_digest_failures",
            "Bytes that did not match their digest: a chunk, or a whole blob",
            "kind",
            as_dict["digest_failures"],
        ),
        labelled(
            "modelfs_errors", "Errors answered to the kernel, by errno", "errno", as_dict["errors"]
        ),
        counter("modelfs_evictions", "Models evicted from the cache", s.evictions),
        counter("modelfs_evicted_bytes", "Bytes freed by evictions", s.evicted_bytes),
        counter(
            "modelfs_cache_write_failures",
            "Writes to the cache that failed (those bytes were served from the network)",
            s.cache_write_failures,
        ),
        counter("modelfs_blobs_published", "Blobs checked whole and published", s.published),
        labelled(
            "modelfs_task_failures",
            "Unexpected failures of the daemon's own work, each followed by a restart",
            "task",
            {what: count for what, (count, _last) in s.failures.items()},
        ),
        counter(
            "modelfs_from_processes_bytes",
            "Blob bytes another modelfs process of this cache fetched, used here",
            s.from_processes_bytes,
        ),
    ]
    return out


def start_control(nursery: trio.Nursery, live: Live, failures: Failures | None = None) -> None:
    """Answer ``modelfs status`` for this mount, in ``nursery``; without a socket (the runtime
    directory cannot be written), say so and mount all the same. Bound here, before the task
    runs, so that status works as soon as the mount is reported ready; bound again if serving
    ever fails."""
    path = None
    try:
        path = control_socket(live.mountpoint)
        first = [open_control(path)]
    except (OSError, MountError) as e:
        where = f" at {path}" if path is not None else ""
        log.warning("no control socket%s (%s): modelfs status cannot see this mount", where, e)
        return

    async def serve() -> None:
        sock = first.pop() if first else open_control(path)
        await serve_control(sock, path, live.take)

    supervise(nursery, "control socket", serve, failures=failures or live.failures)


def serve_metrics(stack: AsyncExitStack, host: str, port: int) -> Metrics:
    """Serve ``/metrics`` at ``host:port`` until ``stack`` closes. Called before the mount
    exists: a port that cannot be bound is a ``MountError``, and there is no mount."""
    metrics = Metrics()
    metrics.serve(host, port)
    stack.push_async_callback(metrics.aclose)
    log.info("serving metrics at http://%s/metrics", metrics.address)
    return metrics


class Metrics:
    """The daemon's own Prometheus registry: the snapshot collector and the fetch histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        self.fetch_seconds = Histogram(
            "modelfs_fetch_seconds",
            "Range requests from holding a stream to the end of the body, by registry host",
            ["registry"],
            registry=self.registry,
            buckets=FETCH_SECONDS_BUCKETS,
        )
        self.address: str | None = None  # HOST:PORT, once serving
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def attach(self, live: Live) -> None:
        """Take the figures from ``live`` from now on. On the trio thread (scrapes take
        their snapshots there, through its token). The blob layer times its range requests
        into ``observe_fetch``, given to it at construction (``blobs.door.BlobEvents``)."""
        token = trio.lowlevel.current_trio_token()
        self.collector.take = functools.partial(live.take_from_thread, token)
        live.metrics = self.address

    def observe_fetch(self, host: str, seconds: float) -> None:
        self.fetch_seconds.labels(registry=host).observe(seconds)

    def serve(self, host: str, port: int) -> str:
        """Serve ``/metrics`` at ``host:port`` from a thread; the address actually bound."""
        try:
            self._server, self._thread = metricsserver.start(
                host, port, make_wsgi_app(self.registry)
            )
        except OSError as e:
            raise MountError(
                f"cannot serve metrics at {_joined(host, port)}: {e.strerror or e}"
            ) from None
        self.address = _joined(host, self._server.server_address[1])
        return self.address

    async def aclose(self) -> None:
        # Shielded: the daemon closes it while its nursery is being cancelled.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Stop serving (blocks until the server's loop notices: call it from a thread)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _joined(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
