"""The registry client: one object the rest of modelfs holds for a registry configuration.

``Registry`` composes the pieces, each of one idea, and offers their operations:
- ``sender.Sender``: control requests (httpx) with auth, one answer per 401;
- ``mirrors.Endpoints``: URLs, mirrors (reads go to them first, in order, then the host) and
  whose credentials a read at each carries;
- ``documents.Documents``: manifests, chunksums, referrers, tag lists, each read boundedly;
- ``blobreads.BlobReads``: blob ranges through the bulk path (``bulk``);
- ``pushes.Pushes``: uploads, cross-repository mounts, deletes.
What HTTP libraries raise becomes the modelfs error tree in one place, ``translate``. Two HTTP
paths, chosen by measurement (docs/architecture.md): httpx's async client for control
requests, and ``http.client`` in worker threads for blob bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from modelfs.errors import ModelfsError, Unauthorized
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name
from modelfs.formats.referrers import Referrer
from modelfs.registry.auth import Authenticator
from modelfs.registry.blobreads import BlobReads
from modelfs.registry.documents import MAX_TAG_PAGES, Chunksums, Documents
from modelfs.registry.mirrors import Endpoints
from modelfs.registry.pushes import Pushes
from modelfs.registry.ranges import ArrivalSink, BlobRange, PieceSink, WholeSink
from modelfs.registry.sender import Sender, delete_scopes, pull_scopes, push_scopes
from modelfs.registry.settings import RegistryConfig
from modelfs.registry.translate import status_error

__all__ = [
    "ArrivalSink",
    "BlobRange",
    "Chunksums",
    "PieceSink",
    "Registry",
    "RegistryConfig",
    "WholeSink",
    "client_for",
    "delete_scopes",
    "pull_scopes",
    "push_scopes",
]

C = TypeVar("C")


def client_for(owner: C, anonymous_client: C | None, anonymous: bool) -> C:
    """The client a request may use: the owner's, or (for another user of an allow_other
    mount) the one without credentials. Fails closed when there is none."""
    if not anonymous:
        return owner
    if anonymous_client is None:
        raise ModelfsError("no anonymous registry client: refusing to lend credentials")
    return anonymous_client


class Registry:
    """One client per process; ``aclose`` it (the daemon's exit stack does)."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self.sender = Sender(self.config)
        self.endpoints = Endpoints(self.config)
        self.documents = Documents(self.config, self.sender, self.endpoints)
        self.blobs = BlobReads(self.sender, self.endpoints)
        self.pushes = Pushes(self.sender, self.endpoints)

    async def aclose(self) -> None:
        self.blobs.close()
        await self.sender.aclose()

    def reconfigure(self, config: RegistryConfig) -> None:
        """Use ``config`` from now on (the daemon's SIGHUP): hosts, TLS, mirrors, the key and
        stored credentials. Requests in flight finish on the old settings; cached tokens are
        dropped, so credentials are read again at the next challenge."""
        self.config = config
        self.sender.reconfigure(config)  # the bulk pool takes its TLS for its next connections
        self.endpoints.reconfigure(config)
        self.documents.reconfigure(config)

    @property
    def auth(self) -> Authenticator:
        return self.sender.auth

    def abort_transfers(self) -> None:
        """End every blob transfer and control request in progress, and refuse new ones
        (shutdown): their threads return at once, their callers get ``ShuttingDown``."""
        self.blobs.abort_transfers()
        self.sender.abort()

    def auth_host(self, base: str, name: Name) -> str:
        return self.endpoints.auth_host(base, name)

    def distrust_mirrors(self, name: Name, what: str) -> None:
        self.endpoints.distrust_mirrors(name, what)

    async def check_login(self, host: str, user: str, password: str) -> None:
        """Raise Unauthorized unless ``user``/``password`` open the registry at ``host``."""
        base = f"{self.endpoints.host_url(host)}/v2/"
        self.auth.credentials[host.lower()] = (user, password)
        try:
            r = await self.sender.closed(
                await self.sender.send("GET", base, (), f"login to {host}")
            )
        except Unauthorized:
            raise Unauthorized(
                f"login to {host} failed: the registry refused {user!r}", 401
            ) from None
        if r.status_code in (401, 403):
            raise Unauthorized(f"login to {host} failed: the registry refused {user!r}", 401)
        if r.status_code >= 400:
            raise status_error(r.status_code, f"login to {host}", b"", None)

    # -- documents ------------------------------------------------------------------------------

    async def get_manifest(self, name: Name) -> bytes:
        return await self.documents.get_manifest(name)

    async def manifest_by_digest(self, name: Name, digest: Digest) -> bytes:
        return await self.documents.manifest_by_digest(name, digest)

    async def manifest_digest(self, name: Name) -> str | None:
        return await self.documents.manifest_digest(name)

    async def tag_digest(self, name: Name, tag: str) -> Digest | None:
        return await self.documents.tag_digest(name, tag)

    async def chunksums(self, name: Name, digest: Digest) -> Chunksums | None:
        return await self.documents.chunksums(name, digest)

    async def referrers(self, name: Name, subject: Digest, artifact_type: str) -> list[Referrer]:
        return await self.documents.referrers(name, subject, artifact_type)

    async def referrers_index(self, name: Name, subject: Digest) -> bytes | None:
        return await self.documents.referrers_index(name, subject)

    async def tags(self, name: Name) -> list[str]:
        return await self.documents.tags(name)

    async def repository_tags(self, name: Name, max_pages: int = MAX_TAG_PAGES) -> list[str] | None:
        return await self.documents.repository_tags(name, max_pages)

    # -- blob reads -----------------------------------------------------------------------------

    def use_blob_location(self, name: Name, digest: Digest, url: str) -> None:
        self.blobs.use_blob_location(name, digest, url)

    async def fetch_range(self, rng: BlobRange, *, limiter: trio.CapacityLimiter) -> None:
        """Stream ``rng``'s bytes to its callbacks (``BlobReads.fetch_with_failover``)."""
        await self.blobs.fetch_with_failover(rng, limiter=limiter)

    # -- pushes ---------------------------------------------------------------------------------

    async def has_blob(self, name: Name, digest: Digest) -> bool:
        return await self.pushes.has_blob(name, digest)

    async def mount_blob(self, name: Name, digest: Digest, source: Name) -> bool:
        return await self.pushes.mount_blob(name, digest, source)

    async def offer_mount(self, name: Name, digest: Digest, source: Name) -> str | None:
        return await self.pushes.offer_mount(name, digest, source)

    async def cancel_upload(self, name: Name, session: str, what: str) -> None:
        await self.pushes.cancel_upload(name, session, what)

    async def upload_blob(
        self,
        name: Name,
        digest: Digest,
        path: Path,
        size: int,
        on_progress: Callable[[int], None] | None = None,
        *,
        session: str | None = None,
    ) -> None:
        await self.pushes.upload_blob(name, digest, path, size, on_progress, session=session)

    async def put_manifest(
        self,
        name: Name,
        raw: bytes,
        media_type: str | None = None,
        *,
        reference: str | None = None,
    ) -> httpx.Headers:
        return await self.pushes.put_manifest(name, raw, media_type, reference=reference)

    async def delete_tag(self, name: Name) -> bool:
        return await self.pushes.delete_tag(name)

    async def delete_manifest(self, name: Name, digest: Digest) -> None:
        await self.pushes.delete_manifest(name, digest)
