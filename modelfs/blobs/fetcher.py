"""Every blob this process fetches: the blob table, small blobs, and what they share.

Large blobs are fetched chunk by chunk by a ``BlobFetch`` (blobs/blobfetch.py), one
per blob *and* what vouches for its bytes (``FetchKey``): the repository they are
fetched from, whose credentials fetch them, the verification policy and the chunk
index. Two manifests naming the same digest share bytes only once the whole
blob's sha256 has matched and it is in ``blobs/`` (docs/verification.md). Each
``BlobFetch`` lives as a task of the nursery given at construction, so a reader
that goes away does not cancel a fetch other readers share; readers only wait,
each wait with a deadline. Small blobs (at most one chunk) are fetched whole, in
one request shared by everyone asking, and checked against their digest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.blobfetch import ELSEWHERE_POLL_SECONDS, BlobFetch, FetchKey, fetch_key
from modelfs.blobs.fetchcontext import BlobSource, FetchContext, FetchSettings, Verify
from modelfs.blobs.sharing import claim_small, release_small
from modelfs.errors import CacheError, CacheFull, DigestMismatch, ModelfsError
from modelfs.flight import Flight, poll
from modelfs.formats.chunks import BlobChunks
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer
from modelfs.formats.names import Name
from modelfs.registry.retry import retrying
from modelfs.tasks import spawn

log = logging.getLogger(__name__)

# At shutdown, a blob whose every chunk has arrived gets this long to be checked and published.
PUBLISH_WAIT_SECONDS = 30.0


class Fetcher(FetchContext):
    """Every fetch of this process: the blob table and small blobs, over the shared context."""

    def __init__(
        self,
        cache: BlobCache,
        registry: BlobSource,
        nursery: trio.Nursery,
        settings: FetchSettings | None = None,
        on_published: Callable[[Digest], Awaitable[None]] | None = None,
        on_discarded: Callable[[Digest], None] | None = None,
        *,
        anonymous_registry: BlobSource | None = None,
    ) -> None:
        super().__init__(
            cache,
            registry,
            nursery,
            settings,
            on_published,
            on_discarded,
            anonymous_registry=anonymous_registry,
        )
        self.blobs: dict[FetchKey, BlobFetch] = {}
        self._small: dict[tuple[Digest, tuple[str, str, str], bool], Flight] = {}

    def spawn(self, what: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn`` in the nursery; it may fail, but never takes the nursery down with it."""
        spawn(self.nursery, what, fn, *args)

    def is_small(self, layer: Layer) -> bool:
        """Whether a blob is fetched whole, in one request, checked against its digest
        (``fetch_small``); a larger one is fetched in chunks (``acquire``)."""
        return layer.size <= self.settings.chunk_bytes

    async def acquire(
        self,
        name: Name,
        layer: Layer,
        chunks: BlobChunks | None,
        verify: Verify,
        *,
        anonymous: bool = False,
    ) -> BlobFetch:
        """The fetch state of ``layer``'s blob as ``name`` vouches for it, open, with one more
        handle (``release`` it)."""
        key = fetch_key(name, layer, chunks, verify, anonymous)
        while True:
            bf = self.blobs.get(key)
            if bf is None:
                bf = self.blobs[key] = BlobFetch(self, name, layer, chunks, verify, key, anonymous)
                bf.handles += 1
                try:
                    await self.nursery.start(self._keep, bf)
                except BaseException:
                    bf.handles -= 1
                    raise
                return bf
            if bf.closing:
                await bf.closed.wait()
                continue
            if bf.failure is not None and bf.handles == 0:
                # A blob discarded after a whole-blob mismatch is fetched afresh on a new open.
                bf.failure = None
            bf.handles += 1
            try:
                await bf.ready()
            except BaseException:
                bf.release()
                raise
            return bf

    async def _keep(self, bf: BlobFetch, task_status: trio.TaskStatus[None]) -> None:
        """A blob's life in the table: from its opening to its closing."""
        try:
            await bf.live(task_status)
        except ModelfsError as e:
            log.debug("%s: %s", bf.what, e)
            raise
        finally:
            if self.blobs.get(bf.key) is bf:
                del self.blobs[bf.key]
            bf.closed.set()

    def busy_digests(self) -> set[Digest]:
        """Blobs open for reading or with fetches in flight."""
        busy = {bf.digest for bf in self.blobs.values() if bf.handles > 0 or bf.flights}
        return busy | {key[0] for key in self._small}

    async def save_all(self, publish_wait_seconds: float = PUBLISH_WAIT_SECONDS) -> None:
        """At shutdown: let publishes in progress finish, persist every blob's progress."""
        deadline = trio.current_time() + publish_wait_seconds
        for bf in list(self.blobs.values()):
            finalizing = bf.finalizing
            if finalizing is not None:
                await finalizing.settled(max(0.0, deadline - trio.current_time()))
        for bf in list(self.blobs.values()):
            try:
                await bf.progress.save()
            except ModelfsError as e:
                log.warning("%s: could not save fetch progress: %s", bf.what, e)

    async def fetch_small(
        self, name: Name, layer: Layer, *, anonymous: bool = False, wait: bool = True
    ) -> bytes:
        """Fetch a blob of at most one chunk whole, check its digest, publish it; return its bytes.

        The fetch runs in the nursery, shared by everyone asking for the same blob
        from the same repository with the same credentials; a reader waits for it
        at most ``read_wait_seconds`` (a pull, ``wait=False``: as long as it takes).
        The bytes are returned so that a reader is served even if the cache cannot
        be written. They were checked against the digest, so any name may use them.
        """
        key = (layer.digest, name.repository_key, anonymous)
        flight = self._small.get(key)
        if flight is None:
            flight = self._small[key] = Flight()
            spawn(
                self.nursery,
                f"fetch blob {layer.digest.short}",
                self._small_flight,
                key,
                flight,
                name,
                layer,
                anonymous,
            )
        seconds = self.settings.read_wait_seconds if wait else None
        await flight.wait(seconds, f"blob {layer.digest.short}")
        assert flight.value is not None
        return flight.value

    async def _small_flight(
        self,
        key: tuple[Digest, tuple[str, str, str], bool],
        flight: Flight,
        name: Name,
        layer: Layer,
        anonymous: bool,
    ) -> None:
        try:

            async def attempt() -> int | bytes | None:
                self.check_stopping(f"blob {layer.digest.short}")
                claim = await self._claim_small(layer)
                if claim is not None:
                    return claim
                # Another process of this cache is fetching it: wait for it to publish it.
                return await self.in_thread(self._published_small, layer)  # type: ignore[return-value]

            got = await poll(attempt, self.settings.claim_wait_seconds, ELSEWHERE_POLL_SECONDS)
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
                    self.settings.claim_wait_seconds,
                )
            try:
                data = await self.in_thread(self._published_small, layer)
                if data is None:
                    data = await self._fetch_whole_small(name, layer, anonymous)
                    try:
                        await self.in_thread(self.cache.store_bytes, data, layer.digest)
                    except (CacheFull, CacheError) as e:
                        self.stats.cache_write_failures += 1
                        log.warning(
                            "blob %s: not cached (%s); served from memory", layer.digest.short, e
                        )
                    else:
                        self.stats.published += 1
                        await self.published(layer.digest)
            finally:
                if claim >= 0:
                    # Published or failed: the lock file goes, unless another process uses it.
                    release_small(claim, self.cache.lock_path(layer.digest), remove=True)
            flight.finish(value=data)
        except ModelfsError as e:
            flight.finish(e)
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                log.exception("fetch of blob %s failed unexpectedly", layer.digest.short)
            flight.finish(ModelfsError(f"fetch of blob {layer.digest.short} was interrupted"))
            if isinstance(e, trio.Cancelled | KeyboardInterrupt):
                raise
        finally:
            if self._small.get(key) is flight:
                del self._small[key]

    async def _claim_small(self, layer: Layer) -> int | None:
        """The small blob's claim across processes (``sharing.claim_small``): an fd to close
        when done, -1 if the cache cannot hold one (fetched here anyway), None while another
        process of this cache is fetching it."""
        try:
            return await self.in_thread(claim_small, self.cache.lock_path(layer.digest))  # type: ignore[return-value]
        except OSError:
            return -1

    def _published_small(self, layer: Layer) -> bytes | None:
        """Worker thread: the small blob's bytes if it is in ``blobs/`` (published, so checked)."""
        if not self.cache.has_blob(layer.digest, layer.size):
            return None
        try:
            data = self.cache.blob_path(layer.digest).read_bytes()
        except OSError:
            return None
        return data if len(data) == layer.size else None

    async def _fetch_whole_small(self, name: Name, layer: Layer, anonymous: bool) -> bytes:
        buf = bytearray(layer.size)

        def on_piece(offset: int, view: memoryview) -> None:
            buf[offset : offset + len(view)] = view

        registry = self.registry_for(anonymous)

        async def once() -> None:
            await self.read_range(registry, name, layer.digest, 0, layer.size, layer.size, on_piece)

        if layer.size:
            await retrying(f"blob {layer.digest.short}", once, self.settings.attempts)
            self.stats.fetched(name.host, layer.size)
        data = bytes(buf)
        # Hashing up to a chunk is a few ms of CPU: off the event loop.
        actual = await self.in_thread(_sha256_hex, data)
        if actual != layer.digest.hex:
            self.stats.blob_mismatches += 1
            registry.distrust_mirrors(name, f"blob {layer.digest.short}")
            log.warning(
                "blob %s from %s does not match its digest; discarded", layer.digest, name.host
            )
            raise DigestMismatch(f"blob {layer.digest} from {name.host} does not match its digest")
        return data


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
