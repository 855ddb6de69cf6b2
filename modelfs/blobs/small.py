"""Small blobs (at most one chunk): fetched whole, in one request shared by everyone asking,
and checked against their digest before anyone gets a byte.

One ``Flight`` per blob and repository and credentials (``SmallKey``), run in the
fetch context's nursery so that a reader that goes away does not cancel it for the
others; each reader waits with its own deadline. Other modelfs processes of the cache
are told through a lock file (``sharing.claim_small``): while one fetches the blob the
others wait for it to be published, at most ``claim_wait_seconds``, then fetch it too.
"""

from __future__ import annotations

import hashlib
import logging
from typing import NamedTuple

import trio

from modelfs.blobs.fetchcontext import FetchContext, RangeRequest
from modelfs.blobs.sharing import claim_small, release_small
from modelfs.errors import CacheError, CacheFull, DigestMismatch, ModelfsError, ShuttingDown
from modelfs.flight import Flight, poll
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name
from modelfs.registry.retry import retrying
from modelfs.tasks import spawn

log = logging.getLogger(__name__)


class SmallKey(NamedTuple):
    digest: Digest
    repository: tuple[str, str, str]
    anonymous: bool


class SmallBlobs:
    """The small blobs being fetched in this process."""

    def __init__(self, ctx: FetchContext) -> None:
        self.ctx = ctx
        self._flights: dict[SmallKey, Flight] = {}

    def is_small(self, layer: Layer) -> bool:
        """Whether a blob is fetched whole, in one request, checked against its digest."""
        return layer.size <= self.ctx.settings.chunk_bytes

    def busy_digests(self) -> set[Digest]:
        """Small blobs being fetched."""
        return {key.digest for key in self._flights}

    async def fetch(
        self, name: Name, layer: Layer, *, anonymous: bool = False, wait: bool = True
    ) -> bytes:
        """Fetch a blob of at most one chunk whole, check its digest, publish it; return its bytes.

        The fetch runs in the nursery, shared by everyone asking for the same blob
        from the same repository with the same credentials; a reader waits for it
        at most ``read_wait_seconds`` (a pull, ``wait=False``: as long as it takes).
        The bytes are returned so that a reader is served even if the cache cannot
        be written. They were checked against the digest, so any name may use them.
        """
        key = SmallKey(layer.digest, name.repository_key, anonymous)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = Flight()
            spawn(
                self.ctx.nursery,
                f"fetch blob {layer.digest.short}",
                self._flight,
                key,
                flight,
                name,
                layer,
                anonymous,
            )
        seconds = self.ctx.settings.read_wait_seconds if wait else None
        await flight.wait(seconds, f"blob {layer.digest.short}")
        assert flight.value is not None
        return flight.value

    async def _flight(
        self,
        key: SmallKey,
        flight: Flight,
        name: Name,
        layer: Layer,
        anonymous: bool,
    ) -> None:
        try:

            async def attempt() -> int | bytes | None:
                self.ctx.check_stopping(f"blob {layer.digest.short}")
                claim = await self._claim(layer)
                if claim is not None:
                    return claim
                # Another process of this cache is fetching it: wait for it to publish it.
                return await self.ctx.in_thread(self._published, layer)  # type: ignore[return-value]

            got = await poll(attempt, self.ctx.settings.claim_wait_seconds)
            if isinstance(got, bytes):
                flight.finish(value=got)
                return
            claim = -1 if got is None else got
            if got is None:
                # Stopped, or never letting go: this process fetches it too (checked, and
                # published by rename, so neither can spoil the other's).
                log.info(
                    "blob %s: another modelfs process has been fetching it for %.0fs; "
                    "fetching it here too",
                    layer.digest.short,
                    self.ctx.settings.claim_wait_seconds,
                )
            try:
                data = await self.ctx.in_thread(self._published, layer)
                if data is None:
                    data = await self._fetch_whole(name, layer, anonymous)
                    try:
                        await self.ctx.in_thread(self.ctx.cache.store_bytes, data, layer.digest)
                    except (CacheFull, CacheError) as e:
                        self.ctx.stats.cache_write_failures += 1
                        log.warning(
                            "blob %s: not cached (%s); served from memory", layer.digest.short, e
                        )
                    else:
                        self.ctx.stats.published += 1
                        await self.ctx.published(layer.digest)
            finally:
                if claim >= 0:
                    # Published or failed: the lock file goes, unless another process uses it.
                    release_small(claim, self.ctx.cache.lock_path(layer.digest), remove=True)
            flight.finish(value=data)
        except ModelfsError as e:
            flight.finish(e)
        except trio.Cancelled:
            # The fetch context's nursery ends only when modelfs does.
            flight.finish(
                ShuttingDown(f"fetch of blob {layer.digest.short} ended: modelfs is shutting down")
            )
            raise
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):
                log.exception("fetch of blob %s failed unexpectedly", layer.digest.short)
            flight.finish(ModelfsError(f"fetch of blob {layer.digest.short} was interrupted"))
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def _claim(self, layer: Layer) -> int | None:
        """The small blob's claim across processes (``sharing.claim_small``): an fd to close
        when done, -1 if the cache cannot hold one (fetched here anyway), None while another
        process of this cache is fetching it."""
        try:
            return await self.ctx.in_thread(claim_small, self.ctx.cache.lock_path(layer.digest))  # type: ignore[return-value]
        except OSError:
            return -1

    def _published(self, layer: Layer) -> bytes | None:
        """Worker thread: the small blob's bytes if it is in ``blobs/`` (published, so checked)."""
        if not self.ctx.cache.has_blob(layer.digest, layer.size):
            return None
        try:
            data = self.ctx.cache.blob_path(layer.digest).read_bytes()
        except OSError:
            return None
        return data if len(data) == layer.size else None

    async def _fetch_whole(self, name: Name, layer: Layer, anonymous: bool) -> bytes:
        buf = bytearray(layer.size)

        def on_piece(offset: int, view: memoryview) -> None:
            buf[offset : offset + len(view)] = view

        registry = self.ctx.registry_for(anonymous)

        async def once() -> None:
            await self.ctx.request(
                registry, RangeRequest(name, layer.digest, 0, layer.size, layer.size, on_piece)
            )

        if layer.size:
            await retrying(f"blob {layer.digest.short}", once, self.ctx.settings.attempts)
            self.ctx.stats.fetched(name.host, layer.size)
        data = bytes(buf)
        # Hashing up to a chunk is a few ms of CPU: off the event loop.
        actual = await self.ctx.in_thread(_sha256_hex, data)
        if actual != layer.digest.hex:
            self.ctx.stats.blob_mismatches += 1
            registry.distrust_mirrors(name, f"blob {layer.digest.short}")
            log.warning(
                "blob %s from %s does not match its digest; discarded", layer.digest, name.host
            )
            raise DigestMismatch(f"blob {layer.digest} from {name.host} does not match its digest")
        return data


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
