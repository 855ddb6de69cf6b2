"""Keeping the cache within its bounds: evict models the mount fetched, least recently used first.

Bounds: ``cache_max`` (bytes of blobs and partial blobs) and ``min_free`` (bytes, or a share of
the cache's filesystem, to leave free). Only models the mount fetched are candidates
(``BlobCache.lazy_models``); models created or pulled on purpose are pinned. A model is evicted
whole — its manifest first, then the blobs no other model uses, with their partial files — and
never while any of its blobs is open or being fetched. Models used in the same instant go by
name. What no model needs any more (partial blobs no manifest names, their model removed
while the mount read it; blobs this daemon published that no manifest names) is freed first,
at each check, once nothing uses it (``orphans.collect``: the rules a cache's start uses too;
its bytes count as evicted). Checks run after each publish, when a file is
closed, and every ``CHECK_SECONDS``; ``run`` runs under ``tasks.supervise``, so an unexpected
error ends one pass, never eviction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from modelfs.blobs import orphans
from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import ModelfsError, UsageError
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name
from modelfs.tasks import Failures

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0
MIN_CHECK_INTERVAL_SECONDS = 1.0
# While bytes no model names are still read (their file open after modelfs rm), the next
# look comes this soon: a blob's fetch ends a little after its last file closes.
ORPHAN_RECHECK_SECONDS = 2.0
# Refresh a model's last-used time at most this often (it is a file's mtime).
TOUCH_SECONDS = 30.0
DEFAULT_MIN_FREE_PERCENT = 10.0

# What a size's unit means: ``500MB`` is 500,000,000 bytes, as docker and ollama print
# sizes (and as modelfs does); ``500MiB`` and the bare letter ``500M`` are 500 * 2**20, as
# ``docker run --memory 500m`` and dd read them.
_DECIMAL = {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
_BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_UNITS = {"": 1, "B": 1, **_DECIMAL, **_BINARY, **{f"{k}IB": v for k, v in _BINARY.items()}}
SIZE_UNITS_HELP = "500MB = 500,000,000 bytes; 500MiB or 500M = 500 * 2^20"


def parse_size(text: str, *, percent: bool = False) -> tuple[int, float | None]:
    """``500MB`` (decimal), ``500MiB`` or ``500M`` (binary), ``1234`` → (bytes, None); with
    ``percent``, ``10%`` → (0, 10.0)."""
    t = text.strip().upper()
    try:
        if t.endswith("%"):
            if not percent:
                raise ValueError
            share = float(t[:-1])
            if not 0 <= share < 100:
                raise ValueError
            return 0, share
        number = t.rstrip("KMGTIB")
        unit = t[len(number) :]
        if unit not in _UNITS or not number.strip():
            raise ValueError
        value = float(number)
        if not value >= 0:  # also NaN
            raise ValueError
        return int(value * _UNITS[unit]), None
    except (ValueError, IndexError, OverflowError):
        what = "a size (500MB, 500MiB, 10G)" + (" or a percentage (10%)" if percent else "")
        raise UsageError(f"{text!r} is not {what}") from None


@dataclass(frozen=True)
class CacheBounds:
    max_bytes: int | None = None
    min_free_bytes: int = 0
    min_free_percent: float | None = DEFAULT_MIN_FREE_PERCENT

    def need_free(self, total: int) -> int:
        """Bytes to keep free on a filesystem of ``total`` bytes."""
        need_free = self.min_free_bytes
        if self.min_free_percent is not None:
            need_free = max(need_free, int(total * self.min_free_percent / 100))
        return need_free

    def over(self, usage: int, free: int, total: int) -> bool:
        too_big = self.max_bytes is not None and usage > self.max_bytes
        return too_big or free < self.need_free(total)


class Evictor:
    def __init__(
        self,
        cache: BlobCache,
        bounds: CacheBounds,
        in_use: Callable[[], set[Digest]],
        in_thread: Callable[..., Awaitable[object]],
        lock: trio.Lock | None = None,
        failures: Failures | None = None,
    ) -> None:
        self.cache = cache
        # Unexpected failures (a bug, a disk that misbehaves): counted for status, logged once.
        self.failures = failures or Failures()
        # Shared with Completion: a manifest is never written while its blobs are evicted.
        self.lock = lock or trio.Lock()
        self.bounds = bounds
        self.in_use = in_use
        self.in_thread = in_thread
        # A latch, not a ``flight.Pulse``: a kick while ``check`` runs (or during the pause
        # after it) must start the next check at once, and a Pulse wakes only tasks waiting
        # when it is notified, so that kick would be lost until ``CHECK_SECONDS`` pass. Only
        # ``run`` waits on it and re-arms it.
        self._kick = trio.Event()
        self._touched: dict[Name, float] = {}
        self._stuck = False
        self._blind = False  # warned that an unreadable manifest stops eviction
        self.evicted: list[Name] = []
        # Bytes freed by evictions and by ``orphans.collect``. Added to from the worker thread
        # ``_evict`` runs in (one at a time, under ``lock``): a plain int add, which the GIL
        # keeps whole enough for a counter that only ever grows and is only read for status
        # and metrics.
        self.evicted_bytes = 0
        # Blobs this daemon published: freed if no model names them (``orphans``).
        self.published_here: set[Digest] = set()
        self._orphans_waiting = False

    def kick(self) -> None:
        """Check soon (a blob was published, a file closed)."""
        self._kick.set()

    async def used(self, name: Name) -> None:
        """The mount used ``name``: it is now the most recently used (and evictable) model."""
        now = trio.current_time()
        if now - self._touched.get(name, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        self._touched[name] = now
        try:
            await self.in_thread(self._mark_if_not_pinned, name)
        except ModelfsError as e:
            log.debug("cannot record the use of %s: %s", name, e)
        except Exception as e:
            # Only the order of eviction depends on it: never the lookup that called.
            self.failures.record("recording the use of a model", e)

    def _mark_if_not_pinned(self, name: Name) -> None:
        # Complete in the cache without a mark: created or pulled on purpose, so pinned.
        loaded = self.cache.load_manifest(name)
        if loaded is not None and loaded[1] and not self._is_lazy(name):
            return
        self.cache.mark_lazy(name)

    def _is_lazy(self, name: Name) -> bool:
        return any(n.equal_fold(name) for _t, n in self.cache.lazy_models())

    async def run(self) -> None:
        """Check at each kick, and every ``CHECK_SECONDS``. Run under ``tasks.supervise``: an
        unexpected error ends this pass, and the run started again checks at once."""
        while True:
            with trio.move_on_after(
                ORPHAN_RECHECK_SECONDS if self._orphans_waiting else CHECK_SECONDS
            ):
                await self._kick.wait()
            self._kick = trio.Event()
            try:
                await self.check()
            except ModelfsError as e:
                log.warning("cache eviction: %s", e)
            except OSError as e:
                # statvfs or a scan of the cache failed: try again at the next check.
                log.warning("cache eviction: %s", e)
            except Exception:
                self.kick()
                raise
            # Kicks come with every close: one scan of the cache per interval is enough.
            await trio.sleep(MIN_CHECK_INTERVAL_SECONDS)

    async def check(self) -> None:
        async with self.lock:
            busy = self.in_use()
            # Bytes of models removed while this mount read them, first: they count against
            # the bounds, and no eviction would ever free them.
            # Read and trimmed in a worker thread while blobs are published (added on the trio
            # thread): the thread gets a copy, and only the digests it dropped leave the set.
            before = set(self.published_here)
            here = set(before)
            collected: orphans.Collected = await self.in_thread(  # type: ignore[assignment]
                orphans.collect, self.cache, busy, here
            )
            self.published_here -= before - here
            self._orphans_waiting = collected.waiting
            self.evicted_bytes += collected.freed_bytes
            evicted: list[Name] = await self.in_thread(self._evict, busy)  # type: ignore[assignment]
        self.evicted += evicted

    def _state(self) -> tuple[int, int, int]:
        st = os.statvfs(self.cache.root)
        return self.cache.usage_bytes(), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def _evict(self, busy: set[Digest]) -> list[Name]:
        evicted: list[Name] = []
        usage, free, total = self._state()
        if not self.bounds.over(usage, free, total):
            self._stuck = False
            return evicted
        # A manifest we cannot read may name any blob: unlink would keep every blob, so
        # evicting would only drop models' manifests without freeing a byte.
        blind = [u for u in self.cache.referenced_blobs().unreadable if u.mentions is None]
        if blind:
            if not self._blind:
                self._blind = True
                log.warning(
                    "the cache is over its bound, but nothing is evicted while %s cannot be "
                    "read (%s): it may name any blob",
                    blind[0].path,
                    blind[0].reason,
                )
            return evicted
        self._blind = False
        for _last_used, name in self.cache.lazy_models():
            loaded = self.cache.load_manifest(name)
            if loaded is None:
                # Removed outside modelfs, or its manifest about to be written by a mount that
                # just marked it: ``orphans.collect`` removes the mark once that is known.
                continue
            if any(layer.digest in busy for layer in loaded[0].blobs):
                continue
            result = self.cache.unlink(name)
            evicted.append(name)
            self.evicted_bytes += result.freed_bytes
            log.info(
                "evicted %s from the cache (least recently used; %d bytes freed)",
                name,
                result.freed_bytes,
            )
            for kept in result.kept:
                log.warning("evicting %s: %s", name, kept)
            usage, free, total = self._state()
            if not self.bounds.over(usage, free, total):
                self._stuck = False
                return evicted
        if not self._stuck:
            self._stuck = True
            log.info(
                "the cache uses %d bytes (%d free) and is over its bound; every model left is "
                "pinned (created or pulled) or in use",
                usage,
                free,
            )
        return evicted
