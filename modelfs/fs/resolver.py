"""Name → manifest: from the registry, falling back to the cache; short positive and negative caches.

A lookup asks the registry (one request however many lookups of the same name
arrive together), keeps the answer for ``lookup_ttl_seconds``, and remembers a
"not found" for ``NEGATIVE_TTL_SECONDS`` so a shell probing names does not
hammer the registry. When the registry cannot be reached (or refuses us, or no
longer has the model) a manifest in the cache is used instead, so cached
models — complete or partial — work offline.

A lookup made for another user of an ``allow_other`` mount (``anonymous``) goes
through a registry client without the owner's credentials, and shares neither
flights nor answers with the owner's lookups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.errors import (
    ManifestInvalid,
    ModelfsError,
    ModelNotFound,
    RegistryError,
    Transient,
)
from modelfs.flight import KeyedLock
from modelfs.formats.manifest import Manifest, parse_manifest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry, client_for

log = logging.getLogger(__name__)

LOOKUP_TTL_SECONDS = 30.0
NEGATIVE_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class Resolved:
    name: Name
    manifest: Manifest
    at: float  # trio.current_time() when resolved


class Resolver:
    def __init__(
        self,
        registry: Registry,
        cache: BlobCache,
        *,
        lookup_ttl_seconds: float = LOOKUP_TTL_SECONDS,
        negative_ttl_seconds: float = NEGATIVE_TTL_SECONDS,
        in_thread: Callable[..., object] | None = None,
        anonymous_registry: Registry | None = None,
    ) -> None:
        self.registry = registry
        self.anonymous_registry = anonymous_registry
        self.cache = cache
        self.lookup_ttl_seconds = lookup_ttl_seconds
        self.negative_ttl_seconds = negative_ttl_seconds
        self._in_thread = in_thread
        # Keyed by (anonymous, name key).
        self._positive: dict[tuple[object, ...], Resolved] = {}
        self._negative: dict[tuple[object, ...], tuple[float, ModelNotFound]] = {}
        self._resolving: KeyedLock[tuple[object, ...]] = KeyedLock()

    async def _thread(self, fn: Callable[..., object], *args: object) -> object:
        if self._in_thread is not None:
            return await self._in_thread(fn, *args)  # type: ignore[misc]
        return await trio.to_thread.run_sync(fn, *args)

    def forget(self, name: Name) -> None:
        for anonymous in (False, True):
            self._positive.pop((anonymous, *name.key), None)
            self._negative.pop((anonymous, *name.key), None)

    async def resolve(self, name: Name, *, anonymous: bool = False) -> Resolved:
        key = (anonymous, *name.key)
        hit = self._fresh(key)
        if hit is not None:
            return hit
        async with self._resolving.hold(key):
            # Whoever held the key before may have resolved it meanwhile; if it failed for a
            # reason that is not cached, this task tries itself.
            hit = self._fresh(key)
            if hit is not None:
                return hit
            try:
                resolved = await self._resolve_uncached(name, self._registry(anonymous))
            except ModelNotFound as e:
                self._negative[key] = (trio.current_time(), e)
                self._positive.pop(key, None)
                raise
            self._positive[key] = resolved
            self._negative.pop(key, None)
            return resolved

    def _fresh(self, key: tuple[object, ...]) -> Resolved | None:
        """A fresh answer for ``key``, raising a fresh negative one; None if there is none."""
        now = trio.current_time()
        hit = self._positive.get(key)
        if hit is not None and now - hit.at < self.lookup_ttl_seconds:
            return hit
        miss = self._negative.get(key)
        if miss is not None and now - miss[0] < self.negative_ttl_seconds:
            raise ModelNotFound(miss[1].message)
        return None

    def _registry(self, anonymous: bool) -> Registry:
        return client_for(self.registry, self.anonymous_registry, anonymous)

    async def _resolve_uncached(self, name: Name, registry: Registry) -> Resolved:
        try:
            try:
                raw = await registry.get_manifest(name)
            except ModelNotFound:
                # Names compare case-insensitively, but a Docker registry's tags do not;
                # tags are pushed lowercase by Ollama and modelfs, so try that spelling.
                if name.digest is not None or name.tag == name.tag.lower():
                    raise
                raw = await registry.get_manifest(name.with_tag(name.tag.lower()))
            manifest = parse_manifest(raw)
            if name.digest is not None and manifest.digest != name.digest:
                raise ManifestInvalid(
                    f"invalid manifest: {name} resolved to {manifest.digest}, not the pinned digest"
                )
            return Resolved(name, manifest, trio.current_time())
        except ModelNotFound as e:
            cached = await self._cached(name, f"the registry says: {e}")
            if cached is None:
                raise
            return cached
        except (Transient, RegistryError, ManifestInvalid) as e:
            # Unauthorized is a RegistryError: a cached model stays usable without credentials.
            cached = await self._cached(name, str(e))
            if cached is None:
                raise
            return cached

    async def _cached(self, name: Name, why: str) -> Resolved | None:
        try:
            loaded = await self._thread(self.cache.load_manifest, name)
        except ModelfsError as e:
            log.warning("cannot read the cached manifest of %s: %s", name, e)
            return None
        if loaded is None:
            return None
        manifest, _complete = loaded  # type: ignore[misc]
        if name.digest is not None and manifest.digest != name.digest:
            return None
        log.info("using the cached manifest of %s (%s)", name, why)
        return Resolved(name, manifest, trio.current_time())
