"""The mount daemon: builds the stack, mounts, serves until unmounted or signalled, cleans up.

Lifetime: the daemon owns its resources through an ``AsyncExitStack`` and one
nursery; every long-lived task (fetches, state flushes, the signal watcher, the
FUSE session) lives in that nursery. ``ready`` is called exactly once: with
None when the mount is live, or with a one-line reason when it could not be.
On SIGTERM/SIGINT, or when the kernel ends the session (``umount``), the
transfers and control requests in flight are ended (``ShuttingDown``: an INFO
line, not a failure), fetch progress is saved and the filesystem unmounted;
SIGHUP reads the configuration again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import trio

from modelfs.blobs import blobwatch
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.completion import Completion
from modelfs.blobs.door import BlobEvents, PagePush, blob_layer
from modelfs.blobs.eviction import DEFAULT_MIN_FREE_PERCENT, CacheBounds, Evictor
from modelfs.blobs.fetchcontext import MAX_STREAMS, FetchSettings
from modelfs.errors import ModelfsError, MountError, UsageError
from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.digest import Digest
from modelfs.fs import fuse_ops, mountctl, status

# parse_mount_options: where callers found it before it had a module of its own.
from modelfs.fs.mount_options import parse_mount_options as parse_mount_options
from modelfs.fs.mount_options import size_option
from modelfs.fs.resolver import LOOKUP_TTL_SECONDS, Resolver
from modelfs.fs.tree import LINK_ENTRY_SECONDS, Access, Tree
from modelfs.registry.client import Registry, RegistryConfig
from modelfs.registry.config import FileConfig
from modelfs.tasks import Failures, keep_running, spawn, supervise

log = logging.getLogger(__name__)

FUSE_MAX_TASKS = 64
# Past a GGUF header read, 4096 made the kernel fetch two more 4 MiB chunks; 2048 none.
READ_AHEAD_KB = 2048
MAX_BACKGROUND = 64
# For the kernel to take the daemon's answer to FUSE INIT (answered by the daemon's own loop).
FUSE_INIT_SECONDS = 30.0


@dataclass(frozen=True)
class MountOptions:
    mountpoint: Path
    cache_root: Path
    insecure_hosts: tuple[str, ...] = ()
    registry: RegistryConfig | None = None  # else one from insecure_hosts alone
    deferred: bool = False
    allow_other: bool = False
    # allow_other: other users' requests carry the owner's credentials too
    share_credentials: bool = False
    registries: tuple[str, ...] | None = None  # -o registries=H1:H2…: the only hosts reached
    stall_seconds: float | None = None  # -o stall_seconds=N (else the registry default)
    min_bytes_per_second: int | None = None  # -o min_rate=SIZE per second
    lookup_ttl_seconds: float = LOOKUP_TTL_SECONDS
    max_streams: int = MAX_STREAMS
    chunk_bytes: int = CHUNK_BYTES
    read_ahead_kb: int | None = READ_AHEAD_KB  # None: the kernel's (128); 0: no readahead
    max_background: int | None = MAX_BACKGROUND  # None or 0: the kernel's (12)
    # Tuning given with -o: not getting it is a warning (modelfs's defaults: info, as a user
    # who is not root cannot write sysfs).
    tuning_asked: frozenset[str] = frozenset()
    fuse_debug: bool = False
    links: bool = True  # complete blobs appear as symlinks into the cache
    # -o blobs_view=no: links point at the cache's blobs/ rather than a read-only bind mount of
    # it at /run/modelfs-blobs/<key>, so that a plain umount(8) works (an fstab mount's default).
    blobs_view: bool = True
    # -o push=yes: checked chunks are pushed into the kernel's page cache as they land. Off by
    # default: no gain measured yet on a 2-core machine (bench/cold.py; bench/RESULTS.md).
    push_pages: bool = False
    cache_max: int | None = None  # bytes of blobs and partial blobs
    min_free: int = 0  # bytes to leave free on the cache's filesystem
    min_free_percent: float | None = DEFAULT_MIN_FREE_PERCENT
    metrics: tuple[str, int] | None = None  # -o metrics=HOST:PORT: Prometheus text at /metrics
    extra: tuple[str, ...] = field(default=())
    # The configuration file and the flags, read again on SIGHUP: the registry settings they
    # make and the file (for its cache bounds). None: nothing to reload.
    settings_loader: Callable[[], tuple[RegistryConfig, FileConfig]] | None = None
    # Cache bounds set with -o (cache_max, min_free): they win over the file's.
    fixed_bounds: frozenset[str] = frozenset()


def _mount_dev(mountpoint: Path) -> str | None:
    """The mount's ``major:minor`` from mountinfo (a stat would wait for our own loop)."""
    entry = mountctl.find_mount(mountpoint)
    return entry.dev if entry is not None else None


def tune_kernel(
    mountpoint: Path,
    read_ahead_kb: int | None,
    max_background: int | None,
    asked: frozenset[str] = frozenset(),
) -> None:
    """Raise the FUSE connection's readahead and background queue (sysfs; root only), then
    read them back.

    pyfuse3 has no API for these; without them the kernel reads a streaming file
    128 KiB at a time with 12 requests in flight. Call once the kernel has taken the
    answer to FUSE INIT (``wait_for_fuse_init``): taking it sets the readahead to at most
    the one INIT offered (the bdi's, 128 KiB), undoing an earlier write. A value that
    cannot be set is logged at WARNING if ``asked`` names it (given with -o), else at INFO.
    """
    dev = _mount_dev(mountpoint)
    if dev is None:
        return
    major, _, minor = dev.partition(":")
    connections = Path("/sys/fs/fuse/connections")
    if (
        max_background
        and os.geteuid() == 0
        and connections.is_dir()
        and not any(connections.iterdir())
    ):
        # fusectl is not mounted on every system (containers, minimal hosts).
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(connections)],
            capture_output=True,
            check=False,
            timeout=10,
        )
    page_kb = os.sysconf("SC_PAGE_SIZE") >> 10
    settings = []
    if read_ahead_kb is not None:
        # The kernel keeps whole pages.
        path = Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb")
        settings.append(("read_ahead_kb", path, read_ahead_kb, read_ahead_kb // page_kb * page_kb))
    if max_background:
        path = Path(f"/sys/fs/fuse/connections/{minor}/max_background")
        settings.append(("max_background", path, max_background, max_background))
    for key, path, value, expected in settings:
        level = logging.WARNING if key in asked else logging.INFO
        try:
            path.write_text(f"{value}\n")
            now = path.read_text().strip()
        except OSError as e:
            log.log(
                level,
                "cannot set %s to %s (%s); the kernel's default applies",
                path,
                value,
                e.strerror or e,
            )
            continue
        if now != str(expected):
            log.log(level, "%s reads %s after setting it to %s", path, now, value)
        else:
            log.debug("set %s to %s", path, value)


async def wait_for_fuse_init(mountpoint: Path) -> None:
    """Return once the kernel has taken this daemon's answer to FUSE INIT.

    The kernel holds every request on a new connection until then, so a statfs of the
    mountpoint returns only after it; it runs in a thread, as the loop must answer it. Any
    answer will do (a filesystem without statfs says ENOSYS), but the kernel's own: the
    connection gone (ENOTCONN) or INIT refused (ECONNREFUSED).
    """
    with trio.move_on_after(FUSE_INIT_SECONDS) as scope:
        try:
            await trio.to_thread.run_sync(os.statvfs, mountpoint, abandon_on_cancel=True)
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNREFUSED):
                raise MountError(
                    f"{mountpoint} was mounted but does not answer: {e.strerror}"
                ) from None
    if scope.cancelled_caught:
        raise MountError(
            f"{mountpoint} was mounted but the kernel did not start it in {FUSE_INIT_SECONDS:.0f}s"
        )


async def run(options: MountOptions, ready: Callable[[str | None], None]) -> None:
    """Mount and serve until unmounted or signalled."""
    reported = False

    def report(message: str | None) -> None:
        nonlocal reported
        if not reported:
            reported = True
            ready(message)

    try:
        await _run(options, report)
    except BaseException as e:
        # A failure inside the nursery arrives wrapped in a group: report the error itself.
        cause = sole_error(e)
        if isinstance(cause, ModelfsError):
            report(str(cause))
        else:
            report(f"the daemon failed: {type(cause).__name__}: {cause}")
        raise


def sole_error(error: BaseException) -> BaseException:
    """The error a group stands for (a nursery wraps what fails in it in a group of one):
    its first modelfs error, else its first error; ``error`` itself if not a group."""
    while isinstance(error, BaseExceptionGroup):
        known = error.subgroup(lambda e: isinstance(e, ModelfsError))
        error = (known or error).exceptions[0]
    return error


async def _run(options: MountOptions, ready: Callable[[str | None], None]) -> None:
    cache = BlobCache(options.cache_root)
    await trio.to_thread.run_sync(cache.prepare)
    mountpoint = options.mountpoint
    file = FileConfig()
    if options.settings_loader is not None:
        loaded, file = await trio.to_thread.run_sync(options.settings_loader)
        options = dataclasses.replace(options, registry=loaded)
    config = registry_config(options)
    async with AsyncExitStack() as stack:
        registry = Registry(config)
        stack.push_async_callback(registry.aclose)
        registries = [registry]
        anonymous = None
        if options.allow_other and not options.share_credentials:
            # Other users' requests: the same settings, none of the owner's credentials.
            anonymous = Registry(dataclasses.replace(config, anonymous=True))
            stack.push_async_callback(anonymous.aclose)
            registries.append(anonymous)
        # -o metrics: bound before anything runs, so that a busy port fails the mount plainly.
        metrics = status.serve_metrics(stack, *options.metrics) if options.metrics else None
        nursery = await stack.enter_async_context(trio.open_nursery())

        # What the blob layer tells the mount, given at its construction. The objects these
        # reach (the tree, the FUSE operations, eviction) are built below, before any read.
        async def published(digest: Digest) -> None:
            evictor.published_here.add(digest)
            ops.blob_published(digest)
            await completion.blob_published(digest)
            evictor.kick()

        def discarded(digest: Digest) -> None:
            ops.invalidate(digest)

        def push_targets(blob: object) -> list[int]:
            return tree.inodes_reading(blob)

        def store(inode: int, offset: int, data: memoryview) -> None:
            ops.store(inode, offset, data)

        blobs = blob_layer(
            cache,
            registry,
            nursery,
            FetchSettings(chunk_bytes=options.chunk_bytes, max_streams=options.max_streams),
            deferred=options.deferred,
            events=BlobEvents(
                published=published,
                discarded=discarded,
                pages=PagePush(push_targets, store) if options.push_pages else None,
                range_seconds=metrics.observe_fetch if metrics is not None else None,
            ),
            anonymous_registry=anonymous,
        )
        completion = Completion(cache, blobs, nursery)
        resolver = Resolver(
            registry,
            cache,
            lookup_ttl_seconds=options.lookup_ttl_seconds,
            in_thread=blobs.in_thread,
            anonymous_registry=anonymous,
        )
        bounds = cache_bounds(options, file)
        # Loops for the mount's life that failed and were started again (modelfs status).
        failures = Failures()
        evictor = Evictor(
            cache,
            bounds,
            in_use=lambda: tree.open_digests() | blobs.busy_digests(),
            in_thread=blobs.in_thread,
            lock=completion.lock,
            failures=failures,
        )
        tree = Tree(
            resolver,
            blobs,
            completion,
            cache,
            lookup_ttl_seconds=options.lookup_ttl_seconds,
            in_thread=blobs.in_thread,
            on_used=evictor.used,
            on_closed=evictor.kick,
            access=access_policy(options, lambda: registry.config, cache),
        )
        supervise(nursery, "cache eviction", evictor.run, failures=failures)
        ops = fuse_ops.Operations(tree, nursery, str(cache.root))
        # modelfs status and -o metrics read their figures from these objects.
        live = status.Live(
            mountpoint, cache, blobs, evictor, ops.errors, ops.recent_errors, failures
        )
        if metrics is not None:
            metrics.attach(live)

        fuse_options = {"ro", "fsname=modelfs", "subtype=modelfs", *options.extra}
        if options.allow_other:
            # The kernel checks each caller against the files' modes (0444 files, 0555
            # directories): any local user, an inference service's included, may read.
            fuse_options.update(("allow_other", "default_permissions"))
        if options.fuse_debug:
            fuse_options.add("debug")
        fuse_ops.mount(ops, str(mountpoint), fuse_options)
        unmount_on_exit = True
        signalled = trio.Event()

        async def reload() -> None:
            await _reload(options, registry, anonymous, evictor)

        async def started() -> None:
            # Once the kernel has taken the answer to FUSE INIT, which serve gives: tuning
            # written before is undone by it. Not behind spawn's guard: a mount the kernel
            # never starts is a failed mount.
            await wait_for_fuse_init(mountpoint)
            await trio.to_thread.run_sync(
                tune_kernel,
                mountpoint,
                options.read_ahead_kb,
                options.max_background,
                options.tuning_asked,
            )
            log.info("mounted %s (cache %s)", mountpoint, cache.root)
            # Before ready: status works once mount returns.
            status.start_control(nursery, live, failures)
            ready(None)
            mountctl.notify_systemd(f"STATUS=serving {mountpoint} (cache {cache.root})")
            supervise(
                nursery,
                "watching signals",
                _watch_signals,
                signalled,
                mountpoint,
                registries,
                reload,
                blobs.stop_waiting,
                failures,
                failures=failures,
            )
            spawn(
                nursery,
                "watching the FUSE session",
                _end_with_session,
                signalled,
                mountpoint,
                registries,
                blobs.stop_waiting,
                level=logging.WARNING,
            )
            if options.links:
                spawn(
                    nursery,
                    "links",
                    enable_links,
                    tree,
                    ops,
                    cache,
                    mountpoint,
                    options.blobs_view,
                    failures,
                    level=logging.WARNING,
                )

        try:
            nursery.start_soon(started, name="mount started")
            await fuse_ops.serve(FUSE_MAX_TASKS)
            # serve returns when the kernel ends the session (umount) or on terminate.
            unmount_on_exit = signalled.is_set()
        finally:
            blobs.stop_waiting()
            with trio.CancelScope(shield=True):
                await blobs.save_all()
            # Worker threads blocked on a registry's socket cannot be cancelled: end their
            # transfers, so the daemon exits now whatever the registries are doing.
            for r in registries:
                r.abort_transfers()
            nursery.cancel_scope.cancel()
            ops.close_notifications()
            with contextlib.suppress(Exception):
                fuse_ops.close(unmount=unmount_on_exit)
            if options.links:
                # However the mount ended (umount(8), fusermount3 -u, a signal), its links
                # went with it: the view they pointed into goes too.
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(mountctl.unbind_blobs_view, mountpoint)
                    except MountError as e:
                        log.warning("%s", e)
            log.info("unmounted %s", mountpoint)


def cache_bounds(options: MountOptions, file: FileConfig) -> CacheBounds:
    """The cache's bounds: -o cache_max / min_free, else the configuration file's, else the
    defaults. A bound the file gets wrong is a one-line error (at mount, or kept on reload)."""
    max_bytes = options.cache_max
    min_free, min_free_percent = options.min_free, options.min_free_percent
    try:
        if "cache_max" not in options.fixed_bounds and file.cache_max is not None:
            max_bytes = size_option("cache_max", file.cache_max)[0]
        if "min_free" not in options.fixed_bounds and file.min_free is not None:
            min_free, min_free_percent = size_option("min_free", file.min_free, percent=True)
    except UsageError as e:
        raise UsageError(f"the configuration {file.path}: {e}") from None
    return CacheBounds(max_bytes, min_free, min_free_percent)


async def _reload(
    options: MountOptions, registry: Registry, anonymous: Registry | None, evictor: Evictor
) -> None:
    """SIGHUP: read the configuration file again (registries, mirrors, the key, credentials,
    cache bounds) and use it, without unmounting; a file that does not read keeps the old."""
    mountctl.notify_systemd("RELOADING=1\nSTATUS=reloading the configuration")
    try:
        if options.settings_loader is None:
            log.info("SIGHUP: no configuration to read again")
            return
        try:
            loaded, file = await trio.to_thread.run_sync(options.settings_loader)
            config = registry_config(dataclasses.replace(options, registry=loaded))
            bounds = cache_bounds(options, file)
        except ModelfsError as e:
            log.warning("SIGHUP: keeping the configuration in use: %s", e)
            return
        registry.reconfigure(config)
        if anonymous is not None:
            anonymous.reconfigure(dataclasses.replace(config, anonymous=True))
        evictor.bounds = bounds
        evictor.kick()
        log.info("SIGHUP: reloaded the configuration %s", file.path or "(no file)")
    finally:
        mountctl.notify_systemd(f"READY=1\nSTATUS=serving {options.mountpoint}")


def registry_config(options: MountOptions) -> RegistryConfig:
    config = options.registry or RegistryConfig(insecure_hosts=options.insecure_hosts)
    if options.stall_seconds is not None:
        config = dataclasses.replace(config, stall_seconds=options.stall_seconds)
    if options.min_bytes_per_second is not None:
        config = dataclasses.replace(config, min_bytes_per_second=options.min_bytes_per_second)
    return config


def cached_hosts(cache: BlobCache) -> set[str]:
    """Registry hosts with a model in the cache (``manifests/<host>``, complete or pending)."""
    hosts: set[str] = set()
    for base in (cache.manifests_dir, cache.pending_dir):
        with contextlib.suppress(OSError):
            hosts.update(entry.name.lower() for entry in os.scandir(base) if entry.is_dir())
    return hosts


def access_policy(
    options: MountOptions, current: Callable[[], RegistryConfig], cache: BlobCache
) -> Access:
    """Who may make the daemon reach which registry, with whose credentials; ``current``
    gives the registry settings in use (a reload changes them)."""

    def others_may_reach() -> set[str]:
        # Asked for each lookup by another user: hosts modelfs was told of, and those whose
        # models are already in the cache (complete or pending).
        config = current()
        configured = {
            h.lower() for h in (*config.insecure_hosts, *config.tls_hosts, *config.mirrors)
        }
        return configured | cached_hosts(cache)

    return Access(
        owner_uid=os.getuid(),
        share_credentials=options.share_credentials,
        registries=frozenset(options.registries) if options.registries is not None else None,
        others_may_reach=others_may_reach if options.allow_other else None,
    )


async def enable_links(
    tree: Tree,
    ops: fuse_ops.Operations,
    cache: BlobCache,
    mountpoint: Path,
    view: bool = True,
    failures: Failures | None = None,
) -> None:
    """Serve complete blobs as symlinks, so their bytes never pass through the daemon.

    Every byte read through FUSE costs a round trip through this process, and CPU
    a small machine is short of; a symlink to the
    verified blob in ``blobs/`` reads and mmaps at the disk's speed and keeps
    working if the daemon dies. As root, the links point into a read-only bind
    mount of ``blobs/`` outside the mount (``mountctl.blobs_view_path``), so that
    writing through a link is EROFS like every other write here, and nothing is
    mounted inside the mount (``umount MNT`` works); otherwise they point at the
    cache's own ``blobs/``, whose files are mode 0444. The daemon unbinds the
    view as it exits.
    """
    # Watch before the first link exists, so that no removal goes unseen.
    try:
        watch = blobwatch.open_watch(cache.blobs_dir)
    except blobwatch.WatchUnavailable as e:
        log.warning("cannot watch %s (%s): links to removed blobs linger 1 s", cache.blobs_dir, e)
        watch = None
    try:
        why = (
            await trio.to_thread.run_sync(mountctl.bind_blobs_view, cache.blobs_dir, mountpoint)
            if view
            else "-o blobs_view=no"
        )
    except BaseException:
        if watch is not None:
            os.close(watch)
        raise
    if why is None:
        view = mountctl.blobs_view_path(mountpoint)
        tree.enable_links(f"{view}/")
        log.debug("complete blobs link to %s, a read-only view of %s", view, cache.blobs_dir)
    else:
        tree.enable_links(os.path.abspath(cache.blobs_dir) + "/")
        log.debug("complete blobs link to %s (no read-only view: %s)", cache.blobs_dir, why)
    if watch is None:
        return
    first: list[int] = [watch]

    async def watch_blobs() -> None:
        if first:
            fd = first.pop()
        else:
            # Started again after a failure: removals may have gone unseen meanwhile.
            fd = blobwatch.open_watch(cache.blobs_dir)
            ops.links_lost()
        # Removals are seen as they happen: the kernel may keep links as long as other entries.
        tree.link_entry_seconds = tree.lookup_ttl_seconds
        try:
            await blobwatch.watch_removals(fd, cache.blobs_dir, ops.blob_removed, ops.links_lost)
        finally:
            tree.link_entry_seconds = LINK_ENTRY_SECONDS

    await keep_running(f"watching {cache.blobs_dir}", watch_blobs, failures=failures or Failures())


async def _watch_signals(
    signalled: trio.Event,
    mountpoint: Path,
    registries: list[Registry],
    reload: Callable[[], Awaitable[None]],
    stop_waiting: Callable[[], None],
    failures: Failures,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                try:
                    await reload()
                except Exception as e:
                    # Not a reason to stop listening: SIGTERM must still unmount.
                    failures.record("reloading the configuration", e)
                continue
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            mountctl.notify_systemd(f"STOPPING=1\nSTATUS=unmounting {mountpoint}")
            signalled.set()
            _end_session(registries, stop_waiting)
            return


async def _end_with_session(
    signalled: trio.Event,
    mountpoint: Path,
    registries: list[Registry],
    stop_waiting: Callable[[], None],
) -> None:
    """Once the kernel ends the session (umount, fusermount3 -u, a lazy unmount's last close),
    end what the requests still being handled wait for, as a signal does: pyfuse3 returns only
    once each has its answer, which a read of a slow blob could wait a minute for."""
    await fuse_ops.session_ended()
    if signalled.is_set() or not fuse_ops.serving():
        return  # a signal ended it, or the loop saw the end first and the daemon is closing
    log.info("%s was unmounted: ending the fetches in flight", mountpoint)
    mountctl.notify_systemd(f"STOPPING=1\nSTATUS=unmounted {mountpoint}")
    _end_session(registries, stop_waiting)


def _end_session(registries: list[Registry], stop_waiting: Callable[[], None]) -> None:
    # Handlers waiting on stuck transfers, or on other processes of the cache, must answer
    # before the session can end.
    stop_waiting()
    for r in registries:
        r.abort_transfers()
    fuse_ops.terminate()
