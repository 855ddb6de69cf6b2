"""Writes to a registry: whether it has a blob, cross-repository mounts, blob uploads (POST,
one streamed PATCH, PUT), manifest uploads, and deletes of tags and manifests.

Always at the registry itself, never a mirror; each operation retried whole on
``Transient``. A 401 that survives the sender's answer names what to log in to
(``Authenticator.push_hint``).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import trio

from modelfs.errors import ModelfsError, ModelNotFound, RegistryError, Unauthorized
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_DOCKER_MANIFEST
from modelfs.formats.names import Name
from modelfs.registry.mirrors import Endpoints
from modelfs.registry.retry import retrying
from modelfs.registry.sender import Sender, delete_scopes, push_scopes
from modelfs.registry.translate import status_error

UPLOAD_PIECE_BYTES = 1 << 20


class Pushes:
    def __init__(self, sender: Sender, endpoints: Endpoints) -> None:
        self.sender = sender
        self.endpoints = endpoints

    def _push_refused(self, name: Name) -> Unauthorized:
        return Unauthorized(self.sender.auth.push_hint(name.host, name.namespace), 401)

    async def has_blob(self, name: Name, digest: Digest) -> bool:
        """Whether the registry itself (not a mirror: this is for pushes) has the blob."""
        what = f"blob {digest.short} of {name}"
        url = self.endpoints.blob_url(name, digest)

        async def once() -> bool:
            r = await self.sender.closed(
                await self.sender.send("HEAD", url, push_scopes(name), what)
            )
            if r.status_code == 404:
                return False
            if r.status_code >= 400:
                raise status_error(r.status_code, what, b"", r.headers.get("Retry-After"))
            return True

        return await retrying(what, once)

    async def mount_blob(self, name: Name, digest: Digest, source: Name) -> bool:
        """Ask the registry to link ``digest`` from ``source``'s repository (cross-repo mount);
        True when it did, False when an upload is needed (the session it opened cancelled)."""
        session = await self.offer_mount(name, digest, source)
        if session is None:
            return True
        if session:
            await self.cancel_upload(name, session, f"mount of {digest.short} to {name}")
        return False

    async def offer_mount(self, name: Name, digest: Digest, source: Name) -> str | None:
        """Ask the registry to link ``digest`` from ``source``'s repository (cross-repo mount,
        ``POST /v2/NAME/blobs/uploads/?mount=&from=``). None when it did (201); otherwise (202)
        the upload session it opened instead, its URL ("" if it gave none), which the caller
        uploads into (``upload_blob(session=...)``) or cancels (``cancel_upload``)."""
        what = f"mount of {digest.short} from {source.repository} to {name}"
        query = urllib.parse.urlencode({"mount": str(digest), "from": source.repository})
        url = f"{self.endpoints.base_url(name)}/v2/{name.repository}/blobs/uploads/?{query}"

        async def once() -> str | None:
            r = await self.sender.send("POST", url, push_scopes(name, source), what)
            if r.status_code == 401:
                await r.aclose()
                raise self._push_refused(name)
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)
            if r.status_code == 201:
                return None
            location = r.headers.get("Location") if r.status_code == 202 else None
            return urllib.parse.urljoin(str(r.url), location) if location else ""

        return await retrying(what, once)

    async def cancel_upload(self, name: Name, session: str, what: str) -> None:
        """Cancel an upload session we will not use (DELETE); a failure only leaves it to
        expire on the registry."""
        with contextlib.suppress(ModelfsError):
            deleted = await self.sender.send(
                "DELETE",
                session,
                push_scopes(name),
                what,
                given_for=self.endpoints.handed_out_given_for(name, session),
            )
            await self.sender.closed(deleted)

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
        """Upload one blob (POST, one streamed PATCH, PUT ?digest=); retried whole on Transient.
        ``session``: an upload session already open (a mount's 202), used instead of the first
        POST; a retry opens its own."""
        what = f"upload of {digest.short} to {name}"
        scopes = push_scopes(name)
        opened = [session] if session else []

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while sent < size:
                    piece = await trio.to_thread.run_sync(
                        f.read, min(UPLOAD_PIECE_BYTES, size - sent)
                    )
                    if not piece:
                        raise ModelfsError(f"{path} ended early while uploading {digest.short}")
                    sent += len(piece)
                    if on_progress:
                        on_progress(sent)
                    yield piece

        async def start() -> str:
            r = await self.sender.send(
                "POST",
                f"{self.endpoints.base_url(name)}/v2/{name.repository}/blobs/uploads/",
                scopes,
                what,
            )
            if r.status_code == 401:
                await r.aclose()
                raise self._push_refused(name)
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)
            if not r.headers.get("Location"):
                raise RegistryError(f"{what}: registry gave no upload location")
            return urllib.parse.urljoin(str(r.url), r.headers["Location"])

        async def once() -> None:
            location = opened.pop() if opened else await start()
            r = await self.sender.send(
                "PATCH",
                location,
                scopes,
                what,
                content=body(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
                given_for=self.endpoints.handed_out_given_for(name, location),
            )
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)
            location = urllib.parse.urljoin(str(r.url), r.headers.get("Location", location))
            url = str(httpx.URL(location).copy_merge_params({"digest": str(digest)}))
            r = await self.sender.send(
                "PUT",
                url,
                scopes,
                what,
                headers={"Content-Length": "0"},
                content=b"",
                given_for=self.endpoints.handed_out_given_for(name, url),
            )
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)

        await retrying(what, once)

    async def put_manifest(
        self,
        name: Name,
        raw: bytes,
        media_type: str | None = None,
        *,
        reference: str | None = None,
    ) -> httpx.Headers:
        """PUT a manifest at ``name``'s tag (or ``reference``); the registry's answer headers."""
        what = f"manifest upload of {name}"

        async def once() -> httpx.Headers:
            r = await self.sender.send(
                "PUT",
                self.endpoints.manifest_url(name, reference or name.tag),
                push_scopes(name),
                what,
                content=raw,
                headers={"Content-Type": media_type or MEDIA_TYPE_DOCKER_MANIFEST},
            )
            if r.status_code == 401:
                await r.aclose()
                raise self._push_refused(name)
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)
            return r.headers

        return await retrying(what, once)

    async def delete_tag(self, name: Name) -> bool:
        """Delete the tag ``name.tag`` alone, leaving its manifest to the tags that still name
        it (OCI distribution spec 1.1: DELETE of ``/manifests/<tag>``). False when the
        registry cannot: the spec lets it answer 400 or 405, and docker-registry 2.8 does
        (400 DIGEST_INVALID with deletes enabled, 405 UNSUPPORTED without)."""
        what = f"delete of tag {name}"

        async def once() -> bool:
            r = await self.sender.send(
                "DELETE",
                self.endpoints.manifest_url(name, urllib.parse.quote(name.tag, safe="")),
                delete_scopes(name),
                what,
            )
            if r.status_code in (400, 405):
                await self.sender.closed(r)
                return False
            if r.status_code == 404:
                await r.aclose()
                raise ModelNotFound(f"model {name} not found on {name.host}")
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)
            return True

        return await retrying(what, once)

    async def delete_manifest(self, name: Name, digest: Digest) -> None:
        what = f"delete of {name}"

        async def once() -> None:
            r = await self.sender.send(
                "DELETE", self.endpoints.manifest_url(name, str(digest)), delete_scopes(name), what
            )
            if r.status_code == 405:
                await r.aclose()
                raise RegistryError(
                    f"{what}: {name.host} does not allow deletes (405; a docker-registry needs "
                    "REGISTRY_STORAGE_DELETE_ENABLED=true)",
                    405,
                )
            if r.status_code == 404:
                await r.aclose()
                raise ModelNotFound(f"model {name} not found on {name.host}")
            await self.sender.raise_for(r, what)
            await self.sender.closed(r)

        await retrying(what, once)
