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
# A model directory's listing asks the registry for its tags: at most this many pages, for at
# most this long (then the listing shows what the cache knows).
TAG_LIST_PAGES = 10
TAG_LIST_SECONDS = 10.0
# What the registry said of a repository's tags: the list, "no such repository", or None
# (it could not say).
TagAnswer = tuple[str, ...] | ModelNotFound | None
# Past this many remembered tag answers, the stale ones are dropped (a shell probing names).
MAX_TAG_ANSWERS = 1024


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
        # ("tags", anonymous, repository key) -> (when, the tags listed, None: no list, or
        # the registry's "no such repository").
        self._tag_lists: dict[tuple[object, ...], tuple[float, TagAnswer]] = {}

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

    async def repository_tags(
        self, name: Name, *, anonymous: bool = False
    ) -> tuple[str, ...] | None:
        """The tags the registry lists for ``name``'s repository; None when it cannot say (it
        has no listing, cannot be reached, refuses us): the caller shows what the cache knows.
        ``ModelNotFound`` when the registry says there is no such repository. A list is kept
        for ``lookup_ttl_seconds``, any other answer for ``negative_ttl_seconds``."""
        key = ("tags", anonymous, *name.repository_key)
        hit = self._fresh_tags(key)
        if hit is not None:
            return _answer(hit)
        async with self._resolving.hold(key):
            hit = self._fresh_tags(key)
            if hit is not None:
                return _answer(hit)
            answer: TagAnswer
            try:
                with trio.fail_after(TAG_LIST_SECONDS):
                    listed = await self._registry(anonymous).repository_tags(name, TAG_LIST_PAGES)
                answer = None if listed is None else tuple(listed)
            except ModelNotFound as e:
                answer = e
            except trio.TooSlowError:
                log.info("tags of %s: no answer in %.0fs", name.repository, TAG_LIST_SECONDS)
                answer = None
            except ModelfsError as e:
                log.info("cannot list the tags of %s: %s", name.repository, e)
                answer = None
            if len(self._tag_lists) >= MAX_TAG_ANSWERS:
                for stale in [k for k in self._tag_lists if self._fresh_tags(k) is None]:
                    del self._tag_lists[stale]
            self._tag_lists[key] = (trio.current_time(), answer)
            return _answer((answer,))

    def _fresh_tags(self, key: tuple[object, ...]) -> tuple[TagAnswer] | None:
        known = self._tag_lists.get(key)
        if known is None:
            return None
        at, answer = known
        ttl = self.lookup_ttl_seconds if isinstance(answer, tuple) else self.negative_ttl_seconds
        return (answer,) if trio.current_time() - at < ttl else None

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


def _answer(hit: tuple[TagAnswer]) -> tuple[str, ...] | None:
    (answer,) = hit
    if isinstance(answer, ModelNotFound):
        raise ModelNotFound(answer.message)
    return answer
