"""Live figures of a mount (fs/status.py, commands/status.py): the snapshot, its JSON, its text,
its Prometheus metrics, the control socket, and the counters the blob layer and FUSE keep."""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyfuse3
import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.sources import FakeSource

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.blobs.fetchcontext import BlobEvents, FetchSettings
from modelfs.blobs.fetcher import Fetcher
from modelfs.blobs.reader import Blobs, BlobsSettings
from modelfs.commands.status import query, render
from modelfs.errors import CacheFull, MountError, Transient, UsageError
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer
from modelfs.formats.names import parse_name
from modelfs.fs import status
from modelfs.fs.daemon import parse_mount_options
from modelfs.fs.errorlog import RecentError, RecentErrors
from modelfs.fs.fuse_ops import boundary
from modelfs.fs.status import DiskUse, InFlight, Live, Metrics, Snapshot
from modelfs.fs.tree import TreeError

CB = 64 << 10
NAME = parse_name("Registry.Example:5000/library/model:tag")


def sample_snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = {
        "version": "0.1.0",
        "pid": 4242,
        "mountpoint": "/mnt/models",
        "cache_root": "/var/cache/models",
        "started": 1_700_000_000.0,
        "uptime_seconds": 125.0,
        "metrics": "127.0.0.1:9464",
        "disk": DiskUse(
            cache_bytes=3_000_000_000, free_bytes=50_000_000_000, filesystem_bytes=10**11
        ),
        "cache_max_bytes": 20_000_000_000,
        "min_free_bytes": 10_000_000_000,
        "min_free_percent": 10.0,
        "fetched_bytes": {"registry.ollama.ai": 2_000_000_000, "127.0.0.1:5000": 1_000_000},
        "from_processes_bytes": 500_000_000,
        "range_requests": 70,
        "read_hits": 900,
        "read_misses": 12,
        "in_flight": (InFlight("b179c9523d0e", "smollm2:135m", 21_000_000, 98_400_000),),
        "errors": {errno.ENOENT: 3, errno.EIO: 1},
        "chunk_mismatches": 2,
        "blob_mismatches": 1,
        "evictions": 4,
        "evicted_bytes": 8_000_000_000,
        "cache_write_failures": 0,
        "published": 9,
        "recent_errors": (
            RecentError(1_700_000_100.0, "lookup", errno.EACCES, "registry r needs a login", 1),
            RecentError(1_700_000_120.0, "read", errno.EIO, "cannot connect to r", 3),
        ),
        "failures": {"cache eviction": (2, "TypeError: '<' not supported")},
    }
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def test_the_json_names_every_figure():
    assert sample_snapshot().as_dict() == {
        "version": "0.1.0",
        "pid": 4242,
        "mountpoint": "/mnt/models",
        "cache_root": "/var/cache/models",
        "started": 1_700_000_000.0,
        "uptime_seconds": 125.0,
        "metrics": "127.0.0.1:9464",
        "cache": {
            "bytes": 3_000_000_000,
            "max_bytes": 20_000_000_000,
            "min_free_bytes": 10_000_000_000,
            "min_free_percent": 10.0,
            "free_bytes": 50_000_000_000,
            "filesystem_bytes": 10**11,
        },
        "fetched_bytes": {"127.0.0.1:5000": 1_000_000, "registry.ollama.ai": 2_000_000_000},
        "from_processes_bytes": 500_000_000,
        "range_requests": 70,
        "reads": {"hit": 900, "miss": 12},
        "in_flight": [
            {
                "digest": "b179c9523d0e",
                "name": "smollm2:135m",
                "present_bytes": 21_000_000,
                "size_bytes": 98_400_000,
            }
        ],
        "errors": {"EIO": 1, "ENOENT": 3},
        "recent_errors": [
            {
                "at": 1_700_000_100.0,
                "operation": "lookup",
                "errno": "EACCES",
                "message": "registry r needs a login",
                "count": 1,
            },
            {
                "at": 1_700_000_120.0,
                "operation": "read",
                "errno": "EIO",
                "message": "cannot connect to r",
                "count": 3,
            },
        ],
        "digest_failures": {"chunk": 2, "blob": 1},
        "evictions": {"count": 4, "bytes": 8_000_000_000},
        "cache_write_failures": 0,
        "published": 9,
        "failures": {"cache eviction": {"count": 2, "last": "TypeError: '<' not supported"}},
    }


def test_eio_is_always_in_the_json_errors():
    assert sample_snapshot(errors={}).as_dict()["errors"] == {"EIO": 0}


def test_text_is_a_few_aligned_lines_per_mount():
    def clock(at: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(at))

    assert render(sample_snapshot().as_dict()) == (
        "/mnt/models\n"
        "  daemon     pid 4242, modelfs 0.1.0, up 2m05s\n"
        "  cache      /var/cache/models: 3.0 GB used, 50.0 GB free\n"
        "  bounds     max 20.0 GB, keep 10.0 GB free (10% of 100.0 GB)\n"
        "  fetched    1.0 MB from 127.0.0.1:5000\n"
        "             2.0 GB from registry.ollama.ai\n"
        "             500.0 MB by other modelfs processes of the cache\n"
        "  reads      900 hits, 12 misses (waited for a fetch)\n"
        "  in flight  b179c9523d0e  smollm2:135m  21.0 MB/98.4 MB\n"
        "  errors     EIO 1, ENOENT 3\n"
        f"  last error {clock(1_700_000_120.0)} read EIO: cannot connect to r (x3)\n"
        f"             {clock(1_700_000_100.0)} lookup EACCES: registry r needs a login\n"
        "  mismatches 2 chunks, 1 whole blobs (discarded)\n"
        "  evictions  4 models, 8.0 GB freed\n"
        "  failures   cache eviction: 2 times, last TypeError: '<' not supported\n"
        "  metrics    http://127.0.0.1:9464/metrics"
    )
    quiet = sample_snapshot(
        fetched_bytes={},
        from_processes_bytes=0,
        in_flight=(),
        cache_max_bytes=None,
        min_free_percent=None,
        metrics=None,
        failures={},
    )
    text = render(quiet.as_dict())
    assert "  fetched    nothing yet\n" in text
    assert "  in flight  none\n" in text
    assert "  bounds     max none, keep 10.0 GB free\n" in text
    assert "metrics" not in text
    assert "failures" not in text, "a line about failures when nothing failed"


def samples_of(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prometheus_metrics_carry_the_snapshot_and_the_fetch_histogram():
    metrics = Metrics()
    metrics.collector.take = sample_snapshot
    metrics.observe_fetch("registry.ollama.ai", 0.02)
    metrics.observe_fetch("registry.ollama.ai", 3.0)
    got = samples_of(metrics)
    assert got[("modelfs_cache_bytes", ())] == 3_000_000_000
    assert got[("modelfs_cache_max_bytes", ())] == 20_000_000_000
    assert got[("modelfs_cache_min_free_bytes", ())] == 10_000_000_000
    assert got[("modelfs_cache_free_bytes", ())] == 50_000_000_000
    host = (("registry", "registry.ollama.ai"),)
    assert got[("modelfs_fetched_bytes_total", host)] == 2_000_000_000
    assert got[("modelfs_fetched_bytes_total", (("registry", "127.0.0.1:5000"),))] == 1_000_000
    assert got[("modelfs_reads_total", (("result", "hit"),))] == 900
    assert got[("modelfs_reads_total", (("result", "miss"),))] == 12
    assert got[("modelfs_blobs_in_flight", ())] == 1
    assert got[("modelfs_in_flight_present_bytes", ())] == 21_000_000
    assert got[("modelfs_digest_failures_total", (("kind", "chunk"),))] == 2
    assert got[("modelfs_digest_failures_total", (("kind", "blob"),))] == 1
    assert got[("modelfs_errors_total", (("errno", "EIO"),))] == 1
    assert got[("modelfs_errors_total", (("errno", "ENOENT"),))] == 3
    assert got[("modelfs_evictions_total", ())] == 4
    assert got[("modelfs_evicted_bytes_total", ())] == 8_000_000_000
    assert got[("modelfs_task_failures_total", (("task", "cache eviction"),))] == 2
    assert got[("modelfs_range_requests_total", ())] == 70
    assert got[("modelfs_from_processes_bytes_total", ())] == 500_000_000
    assert got[("modelfs_start_time_seconds", ())] == 1_700_000_000.0
    assert got[("modelfs_fetch_seconds_count", host)] == 2
    assert got[("modelfs_fetch_seconds_sum", host)] == pytest.approx(3.02)
    assert got[("modelfs_fetch_seconds_bucket", (("le", "0.025"), *host))] == 1
    assert got[("modelfs_fetch_seconds_bucket", (("le", "+Inf"), *host))] == 2
    info = ("modelfs_info", (("cache_root", "/var/cache/models"), ("mountpoint", "/mnt/models")))
    assert got[(info[0], (*info[1], ("version", "0.1.0")))] == 1


def test_no_cache_bound_no_max_metric_and_no_figures_before_attach():
    metrics = Metrics()
    assert not any(name.startswith("modelfs_cache") for name, _ in samples_of(metrics))
    metrics.collector.take = lambda: sample_snapshot(cache_max_bytes=None)
    got = samples_of(metrics)
    assert ("modelfs_cache_bytes", ()) in got
    assert ("modelfs_cache_max_bytes", ()) not in got


def test_metrics_are_served_over_http_and_a_busy_port_is_a_one_line_error():
    metrics = Metrics()
    metrics.collector.take = sample_snapshot
    address = metrics.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
            assert b'\nmodelfs_reads_total{result="hit"} 900.0\n' in resp.read()
        host, port = status.parse_address(address)
        with pytest.raises(MountError, match=rf"^cannot serve metrics at 127\.0\.0\.1:{port}: "):
            Metrics().serve(host, port)
    finally:
        metrics.close()


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:80", ("::1", 80)), ("host:0", ("host", 0))],
)
def test_metrics_addresses(text, address):
    assert status.parse_address(text) == address
    assert parse_mount_options([f"links=no,metrics={text}"]) == {"links": False, "metrics": address}


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:port", "host:70000"])
def test_bad_metrics_addresses_are_usage_errors(text):
    with pytest.raises(UsageError, match="-o metrics takes HOST:PORT"):
        parse_mount_options([f"metrics={text}"])


# -- the control socket ------------------------------------------------------------------------


@pytest.mark.parametrize("deep", [False, True])
async def test_the_control_socket_answers_status_and_is_private_and_removed(tmp_path, deep):
    base = tmp_path / ("d" * 60 if deep else "") / ("e" * 60 if deep else "")
    path = base / "run" / "0123456789abcdef.sock"
    assert (len(os.fsencode(path)) > status.UNIX_PATH_MAX_BYTES) == deep

    async def take() -> Snapshot:
        return sample_snapshot()

    sock = status.open_control(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with trio.open_nursery() as nursery:
        nursery.start_soon(status.serve_control, sock, path, take)
        assert await trio.to_thread.run_sync(query, path) == sample_snapshot().as_dict()

        def ask(request: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as s, status.unix_address(path) as address:
                s.connect(address)
                s.sendall(request)
                s.shutdown(socket.SHUT_WR)
                return s.makefile("rb").read()

        assert b"unknown request" in await trio.to_thread.run_sync(ask, b"stats\n")
        # A client that hangs up at once does not disturb the next one.
        await trio.to_thread.run_sync(ask, b"")
        assert (await trio.to_thread.run_sync(query, path))["pid"] == 4242
        nursery.cancel_scope.cancel()
    assert not path.exists(), "the control socket outlived its server"


async def test_a_socket_left_by_a_dead_daemon_is_replaced(tmp_path):
    path = tmp_path / "m.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    with pytest.raises(ConnectionRefusedError):
        query(path)
    status.open_control(path).close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_something_else_at_the_socket_path_is_left_alone(tmp_path):
    path = tmp_path / "m.sock"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="in use"):
        status.open_control(path)
    assert path.read_text() == "not a socket"


# -- where the counters come from --------------------------------------------------------------


async def test_the_blob_layer_counts_hits_misses_bytes_per_host_and_range_times(tmp_path: Path):
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    data = os.urandom(4 * CB + 100)
    source = FakeSource()
    source.put(NAME, data)
    layer = Layer(Digest.of_bytes(data), MEDIA_TYPE_MODEL, len(data))
    timed: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        events = BlobEvents(range_seconds=lambda host, seconds: timed.append((host, seconds)))
        fetcher = Fetcher(cache, source, nursery, FetchSettings(chunk_bytes=CB), events)
        blobs = Blobs(fetcher, BlobsSettings(deferred=True))
        evictor = Evictor(cache, CacheBounds(1 << 40, 0, None), set, fetcher.in_thread)
        live = Live(Path("/mnt"), cache, blobs, evictor, Counter())
        handle = await blobs.open(NAME, None, layer, readahead=False)
        try:
            assert await handle.read(0, 100) == data[:100]
            assert await handle.read(100, 100) == data[100:200]
            snap = await live.take()
        finally:
            await handle.close()
        await fetcher.save_all()
        nursery.cancel_scope.cancel()
    assert (snap.read_misses, snap.read_hits) == (1, 1)
    assert snap.fetched_bytes == {"registry.example:5000": CB}
    assert [host for host, _ in timed] == ["registry.example:5000"]
    assert snap.in_flight == (
        InFlight(layer.digest.short, "Registry.Example:5000/library/model:tag", CB, len(data)),
    )
    assert snap.disk.cache_bytes >= CB
    assert snap.cache_max_bytes == 1 << 40


class Handlers:
    def __init__(self) -> None:
        self.errors: Counter[int] = Counter()
        self.recent_errors = RecentErrors(keep=2)

    @boundary
    async def raises(self, exc: BaseException) -> None:
        raise exc

    @boundary
    async def works(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("exc", "err"),
    [
        (RuntimeError("bug"), errno.EIO),
        (CacheFull("full"), errno.ENOSPC),
        (pyfuse3.FUSEError(errno.ENOENT), errno.ENOENT),
    ],
)
async def test_the_fuse_boundary_counts_errors_by_errno(exc, err):
    handlers = Handlers()
    assert await handlers.works() == 1
    with pytest.raises(pyfuse3.FUSEError):
        await handlers.raises(exc)
    assert handlers.errors == Counter({err: 1})


async def test_the_fuse_boundary_keeps_causes_and_does_not_count_enodata():
    handlers = Handlers()
    for _ in range(2):
        with pytest.raises(pyfuse3.FUSEError):
            await handlers.raises(Transient("manifest of m: cannot connect to r"))
    with pytest.raises(pyfuse3.FUSEError):
        await handlers.raises(TreeError(errno.ENODATA))
    with pytest.raises(pyfuse3.FUSEError):
        await handlers.raises(TreeError(errno.ENOENT, "not a valid host: 'a b'"))
    assert handlers.errors == Counter({errno.EIO: 2, errno.ENOENT: 1})
    [only] = handlers.recent_errors.entries()
    assert (only.operation, only.errno, only.count) == ("raises", errno.EIO, 2)
    assert only.message == "manifest of m: cannot connect to r"
    for n in range(3):
        handlers.recent_errors.add("read", errno.EIO, f"cause {n}")
    assert [e.message for e in handlers.recent_errors.entries()] == ["cause 1", "cause 2"]
