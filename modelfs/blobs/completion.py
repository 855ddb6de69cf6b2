"""Models becoming complete: once every blob of a model is in ``blobs/``, write its manifest.

A model seen through the mount is tracked from the moment its tag is looked up:
its manifest waits in ``.modelfs/manifests/`` (so a partial model survives a
restart and works offline). Each time a blob is published, every tracked model
containing it is checked; when only small blobs are missing (template, params,
config, chunk index — a few KiB) they are fetched in the background, and when
nothing is missing the manifest is written where Ollama looks. From then on
``ollama`` itself can use the model.
"""

from __future__ import annotations

import logging

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.reader import Blobs
from modelfs.errors import ModelfsError
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import Layer, Manifest
from modelfs.formats.names import Name
from modelfs.tasks import spawn

log = logging.getLogger(__name__)


class Completion:
    def __init__(self, cache: BlobCache, blobs: Blobs, nursery: trio.Nursery) -> None:
        self.cache = cache
        self.blobs = blobs
        # Missing small blobs are fetched here, in the background, for the mount's life.
        self.nursery = nursery
        # manifest digest -> (name, manifest) for models not yet complete in the cache
        self.tracked: dict[Digest, tuple[Name, Manifest]] = {}
        # Tracked models only other users of an allow_other mount have looked up: their
        # remaining blobs are fetched without the owner's credentials.
        self.anonymous: set[Digest] = set()
        # Held while deciding a model is complete and writing its manifest; eviction holds it
        # too, so a manifest is never written for blobs being removed.
        self.lock = trio.Lock()

    async def track(self, name: Name, manifest: Manifest, *, anonymous: bool = False) -> None:
        """Remember a model the mount has shown; record its manifest as pending if it is new."""
        if manifest.digest in self.tracked:
            if not anonymous:
                self.anonymous.discard(manifest.digest)
            return

        def record() -> bool:
            complete = self.cache.read_manifest(name)
            if complete == manifest.raw:
                return True
            if self.cache.read_manifest(name, pending=True) != manifest.raw:
                self.cache.write_manifest(name, manifest.raw, pending=True)
            return False

        try:
            # Under the lock eviction holds: a model shown while it is being evicted is
            # recorded before or after the unlink, never between its manifest's removal and
            # the check of which blobs are still named (that blob would stay, uncounted).
            async with self.lock:
                done = await self.blobs.in_thread(record)
        except ModelfsError as e:
            log.warning("cannot record the manifest of %s: %s", name, e)
            return
        if not done:
            self.tracked[manifest.digest] = (name, manifest)
            if anonymous:
                self.anonymous.add(manifest.digest)
            # Only look: a lookup must not fetch blob bytes, even small ones.
            await self._check(manifest.digest, fetch_missing=False)

    async def ensure_recorded(
        self, name: Name, manifest: Manifest, *, anonymous: bool = False
    ) -> None:
        """Before a file of ``name`` is opened: if its manifest left the cache meanwhile
        (``modelfs rm``), record it again, so that what the reads fetch belongs to a model
        again (listed, counted, evictable) rather than to none."""

        def recorded() -> bool:
            # Any manifest of the name: another version pulled meanwhile is not a removal.
            return (
                self.cache.find_manifest(name) is not None
                or self.cache.find_manifest(name, pending=True) is not None
            )

        try:
            if await self.blobs.in_thread(recorded):
                return
        except ModelfsError as e:
            log.warning("cannot read the manifest of %s: %s", name, e)
            return
        log.info("%s was removed from the cache: recording it again for this read", name)
        self.tracked.pop(manifest.digest, None)
        await self.track(name, manifest, anonymous=anonymous)

    async def blob_published(self, digest: Digest) -> None:
        for mdigest, (_name, manifest) in list(self.tracked.items()):
            if any(layer.digest == digest for layer in manifest.blobs):
                await self._check(mdigest, fetch_missing=True)

    async def _check(self, mdigest: Digest, *, fetch_missing: bool) -> None:
        async with self.lock:
            await self._check_locked(mdigest, fetch_missing=fetch_missing)

    async def _check_locked(self, mdigest: Digest, *, fetch_missing: bool) -> None:
        entry = self.tracked.get(mdigest)
        if entry is None:
            return
        name, manifest = entry

        def missing() -> list:
            return [b for b in manifest.blobs if not self.cache.has_blob(b.digest, b.size)]

        absent = await self.blobs.in_thread(missing)
        if not absent:
            await self._write(name, manifest)
            return
        if fetch_missing and all(self.blobs.is_small(b) for b in absent):  # type: ignore[attr-defined]
            for layer in absent:  # type: ignore[attr-defined]
                spawn(
                    self.nursery,
                    f"complete {name}: fetch {layer.digest.short}",
                    self._fetch_small,
                    name,
                    manifest,
                    layer,
                    mdigest in self.anonymous,
                )

    async def _fetch_small(
        self, name: Name, manifest: Manifest, layer: Layer, anonymous: bool
    ) -> None:
        await self.blobs.fetch(name, manifest, layer, anonymous=anonymous)

    async def _write(self, name: Name, manifest: Manifest) -> None:
        if self.tracked.pop(manifest.digest, None) is None:
            return
        self.anonymous.discard(manifest.digest)

        def write() -> None:
            if self.cache.read_manifest(name) == manifest.raw:
                return  # completed meanwhile by someone else (modelfs pull): theirs to pin
            # Fetched by the mount, so evictable, even if it was removed (which unmarks it)
            # while its blobs were being fetched. Marked first: whoever sees the manifest
            # sees the mark (eviction, which drops marks without a manifest, waits for the
            # lock held here).
            self.cache.mark_lazy(name)
            self.cache.write_manifest(name, manifest.raw)

        try:
            await self.blobs.in_thread(write)
        except ModelfsError as e:
            log.warning("cannot write the manifest of %s: %s", name, e)
            self.tracked[manifest.digest] = (name, manifest)
            return
        log.info("model %s is complete in the cache", name)
