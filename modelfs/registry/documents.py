"""Documents of a registry: manifests (by tag through the mirrors, by digest, their digest by
HEAD), Ollama's chunksums, referrers (the API, or the tag schema on a host without it) and tag
lists.

Each is read whole within the control deadline and a size bound, through the one bounded
reader (``sender.read_body``), and retried on ``Transient``.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import trio

from modelfs.errors import (
    DigestInvalid,
    ManifestInvalid,
    ModelNotFound,
    RegistryError,
    Transient,
)
from modelfs.formats.chunksums import MAX_CHUNKSUMS_BYTES
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES
from modelfs.formats.names import Name
from modelfs.formats.referrers import (
    MAX_INDEX_DOCUMENT_BYTES,
    MEDIA_TYPE_OCI_INDEX,
    Referrer,
    parse_referrers,
    referrers_tag,
)
from modelfs.registry.mirrors import Endpoints
from modelfs.registry.origins import base_of, netloc, origin_of, same_origin
from modelfs.registry.retry import retrying
from modelfs.registry.sender import ERROR_BODY_BYTES, Sender, pull_scopes, read_body
from modelfs.registry.settings import RegistryConfig
from modelfs.registry.translate import status_error, translate

log = logging.getLogger(__name__)

T = TypeVar("T")

MANIFEST_ATTEMPTS = 3
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
# A tag list: each page read up to this size, and at most this many pages followed.
MAX_TAGS_BYTES = 4 << 20
MAX_TAG_PAGES = 100
_NEXT_REL = re.compile(r'rel\s*=\s*"?next"?', re.IGNORECASE)


@dataclass(frozen=True)
class Chunksums:
    """A registry's chunksums answer (``Registry.chunksums``)."""

    body: bytes
    location: str | None  # where the blob's bytes are, absolute


def _parse_tags(body: bytes, what: str) -> list[str]:
    """The tags of a ``tags/list`` answer (``{"name": ..., "tags": [...] or null}``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError(f"{what}: the answer is not JSON") from None
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if tags is None and isinstance(doc, dict):
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryError(f"{what}: the answer is not a list of tags")
    return tags


async def _says_name_unknown(r: httpx.Response) -> bool:
    """Whether an error answer's body carries Docker's ``NAME_UNKNOWN`` (read boundedly)."""
    try:
        doc = json.loads(await read_body(r, ERROR_BODY_BYTES))
    except (httpx.HTTPError, OSError, ValueError):
        return False
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return isinstance(errors, list) and any(
        isinstance(e, dict) and e.get("code") == "NAME_UNKNOWN" for e in errors
    )


def _next_page(url: str, link: str | None) -> str | None:
    """The next page of a paged list from its ``Link`` header (RFC 8288), None if last."""
    for part in (link or "").split(","):
        target, _, params = part.partition(";")
        target = target.strip()
        if target.startswith("<") and target.endswith(">") and _NEXT_REL.search(params):
            return urllib.parse.urljoin(url, target[1:-1])
    return None


def _page_elsewhere(url: str, next_url: str, name: Name) -> str | None:
    """Why the next page ``next_url`` of a list at ``url`` is not fetched (None: it is): a
    page is the registry's own, on its scheme, host and port (the default port spelled out
    or not). Elsewhere its credentials would not follow (another host or port) or would
    follow in clear (http on its own host)."""
    if same_origin(next_url, url):
        return None
    if origin_of(next_url)[1:] != origin_of(url)[1:]:
        return f"{name.host} sent the next page to another host or port"
    return f"{name.host} sent the next page over {origin_of(next_url)[0]}, not {origin_of(url)[0]}"


class Documents:
    def __init__(self, config: RegistryConfig, sender: Sender, endpoints: Endpoints) -> None:
        self.config = config
        self.sender = sender
        self.endpoints = endpoints
        # Hosts that answered 404 to the referrers API: the referrers tag schema is used.
        self._no_referrers_api: set[str] = set()

    def reconfigure(self, config: RegistryConfig) -> None:
        """New deadlines; hosts are asked for the referrers API again."""
        self.config = config
        self._no_referrers_api.clear()

    async def _within_deadline(self, what: str, fetch: Callable[[], Awaitable[T]]) -> T:
        # httpx's timeouts are per socket operation: a trickle never trips them.
        with self.sender.abortable(what), trio.move_on_after(self.config.control_seconds):
            return await fetch()
        raise Transient(f"{what}: no whole answer in {self.config.control_seconds:.0f}s")

    # -- manifests ------------------------------------------------------------------------------

    async def get_manifest(self, name: Name) -> bytes:
        """The manifest bytes exactly as the registry (or one of its mirrors) sent them."""
        return await self.endpoints.first_answer(
            name,
            lambda base, at_origin: self._get_manifest(
                name, base, attempts=MANIFEST_ATTEMPTS if at_origin else 1
            ),
        )

    async def _get_manifest(self, name: Name, base: str, attempts: int) -> bytes:
        url = self.endpoints.manifest_url(name, base=base)
        what = f"manifest of {name}"

        async def fetch() -> bytes:
            r = await self.sender.send(
                "GET",
                url,
                pull_scopes(name),
                what,
                headers={"Accept": MANIFEST_ACCEPT},
                given_for=self.endpoints.given_for(base, name),
            )
            try:
                if r.status_code == 404:
                    raise ModelNotFound(f"model {name} not found on {netloc(url)}")
                await self.sender.raise_for(r, what)
                body = await read_body(r, MAX_MANIFEST_BYTES + 1, raw=True)
                if len(body) > MAX_MANIFEST_BYTES:
                    raise ManifestInvalid(
                        f"invalid manifest: {name} is over {MAX_MANIFEST_BYTES} bytes"
                    )
                return body
            except (httpx.HTTPError, OSError) as e:
                raise translate(e, what, netloc(url)) from None
            finally:
                await r.aclose()

        return await retrying(what, lambda: self._within_deadline(what, fetch), attempts=attempts)

    async def manifest_by_digest(self, name: Name, digest: Digest) -> bytes:
        """The manifest ``digest`` of ``name``'s repository, checked against its digest."""
        what = f"manifest {digest.short} of {name}"
        raw = await self._get_document(
            name,
            self.endpoints.manifest_url(name, str(digest)),
            what,
            MANIFEST_ACCEPT,
            MAX_MANIFEST_BYTES,
        )
        if raw is None:
            raise ModelNotFound(f"{what}: not found on {name.host}")
        if Digest.of_bytes(raw) != digest:
            raise ManifestInvalid(f"{what}: the registry sent other bytes than its digest")
        return raw

    async def manifest_digest(self, name: Name) -> str | None:
        """The digest the registry gives for ``name``'s manifest (HEAD), None if it has none."""
        headers = await self._head_manifest(name, self.endpoints.manifest_url(name))
        return None if headers is None else headers.get("Docker-Content-Digest")

    async def _head_manifest(self, name: Name, url: str) -> httpx.Headers | None:
        """HEAD of the manifest at ``url``: its headers, None on 404."""
        what = f"manifest of {name}"

        async def once() -> httpx.Headers | None:
            with self.sender.abortable(what):
                r = await self.sender.closed(
                    await self.sender.send(
                        "HEAD", url, pull_scopes(name), what, headers={"Accept": MANIFEST_ACCEPT}
                    )
                )
            if r.status_code == 404:
                return None
            if r.status_code >= 400:
                raise status_error(r.status_code, what, b"", r.headers.get("Retry-After"))
            return r.headers

        return await retrying(what, once)

    async def tag_digest(self, name: Name, tag: str) -> Digest | None:
        """The manifest ``tag`` of ``name``'s repository names at the registry itself (not a
        mirror), None if there is no such tag: from HEAD's ``Docker-Content-Digest``, or
        from the manifest's own bytes when the registry gives no digest."""
        url = self.endpoints.manifest_url(name, urllib.parse.quote(tag, safe=""))
        headers = await self._head_manifest(name, url)
        if headers is None:
            return None
        given = headers.get("Docker-Content-Digest")
        if given is None:
            what = f"manifest of {name.repository}:{tag}"
            raw = await self._get_document(name, url, what, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES)
            return None if raw is None else Digest.of_bytes(raw)
        try:
            return Digest.parse(given)
        except DigestInvalid:
            raise RegistryError(
                f"{name.host} gave an invalid manifest digest {given[:100]!r} for tag {tag}"
            ) from None

    # -- small documents ----------------------------------------------------------------------

    async def chunksums(self, name: Name, digest: Digest) -> Chunksums | None:
        """Ollama's chunksums of a blob (``formats.chunksums``): the body as sent, and where
        the blob's bytes are (``Content-Location``); None when the registry has none (404,
        or no such endpoint). The body is read up to ``MAX_CHUNKSUMS_BYTES``."""
        url = f"{self.endpoints.base_url(name)}/v2/{name.repository}/chunksums/{digest}"
        what = f"chunksums of blob {digest.short} of {name}"
        answer = await self._get_small(
            name, url, what, "*/*", MAX_CHUNKSUMS_BYTES, absent=(404, 405, 501)
        )
        if answer is None:
            return None
        body, headers = answer
        location = headers.get("Content-Location")
        return Chunksums(body, urllib.parse.urljoin(url, location) if location else None)

    async def _get_document(
        self, name: Name, url: str, what: str, accept: str, limit: int
    ) -> bytes | None:
        """A small JSON document (a manifest, an index) of ``name``'s repository; None on 404."""
        answer = await self._get_small(name, url, what, accept, limit)
        return None if answer is None else answer[0]

    async def _get_small(
        self,
        name: Name,
        url: str,
        what: str,
        accept: str,
        limit: int,
        *,
        absent: tuple[int, ...] = (404,),
        unknown_repository: bool = False,
    ) -> tuple[bytes, httpx.Headers] | None:
        """A small answer of ``name``'s repository, read whole within the control deadline and
        ``limit`` bytes, with its headers; None when the status is one of ``absent``. With
        ``unknown_repository``, a 404 that says ``NAME_UNKNOWN`` is ``ModelNotFound``."""

        async def fetch() -> tuple[bytes, httpx.Headers] | None:
            r = await self.sender.send(
                "GET",
                url,
                pull_scopes(name),
                what,
                headers={"Accept": accept},
                given_for=base_of(self.endpoints.base_url(name)),
            )
            try:
                if r.status_code in absent:
                    if unknown_repository and r.status_code == 404 and await _says_name_unknown(r):
                        raise ModelNotFound(f"{name.host} has no repository {name.repository}")
                    return None
                await self.sender.raise_for(r, what)
                body = await read_body(r, limit + 1)
                if len(body) > limit:
                    raise ManifestInvalid(f"invalid {what}: more than {limit} bytes")
                return body, r.headers
            except (httpx.HTTPError, OSError) as e:
                raise translate(e, what, netloc(url)) from None
            finally:
                await r.aclose()

        return await retrying(
            what, lambda: self._within_deadline(what, fetch), attempts=MANIFEST_ATTEMPTS
        )

    # -- referrers ------------------------------------------------------------------------------

    async def referrers(self, name: Name, subject: Digest, artifact_type: str) -> list[Referrer]:
        """The manifests of ``artifact_type`` whose subject is ``subject``: from the referrers
        API, or, on a registry without it (remembered per host, so that looking costs one
        request), from the referrers tag schema."""
        host = name.host.lower()
        what = f"referrers of {name}@{subject.short}"
        if host not in self._no_referrers_api:
            query = urllib.parse.urlencode({"artifactType": artifact_type})
            base = self.endpoints.base_url(name)
            url = f"{base}/v2/{name.repository}/referrers/{subject}?{query}"
            raw = await self._get_document(
                name, url, what, MEDIA_TYPE_OCI_INDEX, MAX_INDEX_DOCUMENT_BYTES
            )
            if raw is not None:
                return parse_referrers(raw, artifact_type)
            log.info("%s has no referrers API; using the referrers tag schema", host)
            self._no_referrers_api.add(host)
        raw = await self.referrers_index(name, subject)
        return [] if raw is None else parse_referrers(raw, artifact_type)

    async def referrers_index(self, name: Name, subject: Digest) -> bytes | None:
        """The image index the referrers tag of ``subject`` holds (None: there is none)."""
        url = self.endpoints.manifest_url(name, referrers_tag(subject))
        what = f"referrers tag of {name}@{subject.short}"
        return await self._get_document(
            name, url, what, MEDIA_TYPE_OCI_INDEX, MAX_INDEX_DOCUMENT_BYTES
        )

    # -- tag lists ------------------------------------------------------------------------------

    async def tags(self, name: Name) -> list[str]:
        """Every tag of ``name``'s repository at the registry itself (``tags/list``), following
        the pages a registry may split it into (``Link: <...>; rel="next"``, on the same
        scheme, host and port only); [] for a repository the registry does not know."""
        url = f"{self.endpoints.base_url(name)}/v2/{name.repository}/tags/list"
        what = f"tags of {name.repository}"
        found: list[str] = []
        for _ in range(MAX_TAG_PAGES):
            answer = await self._get_small(name, url, what, "application/json", MAX_TAGS_BYTES)
            if answer is None:
                return found
            body, headers = answer
            found += _parse_tags(body, f"{what} on {name.host}")
            next_url = _next_page(url, headers.get("Link"))
            if next_url is None:
                return found
            elsewhere = _page_elsewhere(url, next_url, name)
            if elsewhere:
                raise RegistryError(f"{what}: {elsewhere}")
            url = next_url
        raise RegistryError(f"{what}: {name.host} sent more than {MAX_TAG_PAGES} pages")

    async def repository_tags(self, name: Name, max_pages: int = MAX_TAG_PAGES) -> list[str] | None:
        """The tags the registry lists for ``name``'s repository, from at most ``max_pages``
        pages (a listing, not an inventory: what lies beyond is left out); None when it lists
        none (no ``tags/list``). ``ModelNotFound`` when the registry says the repository does
        not exist (404 ``NAME_UNKNOWN``)."""
        url = f"{self.endpoints.base_url(name)}/v2/{name.repository}/tags/list"
        what = f"tags of {name.repository}"
        found: list[str] = []
        for page in range(max_pages):
            answer = await self._get_small(
                name,
                url,
                what,
                "application/json",
                MAX_TAGS_BYTES,
                absent=(404, 405, 501),
                unknown_repository=page == 0,
            )
            if answer is None:
                return found if page else None
            body, headers = answer
            found += _parse_tags(body, f"{what} on {name.host}")
            next_url = _next_page(url, headers.get("Link"))
            if next_url is None:
                break
            elsewhere = _page_elsewhere(url, next_url, name)
            if elsewhere:
                log.warning("%s: listing the first %d page(s) only: %s", what, page + 1, elsewhere)
                break
            url = next_url
        return found
