"""Blob reads: ranges of a blob's bytes streamed to the caller, from the host's mirrors in
turn, then the host.

Bodies go through the bulk path (``bulk``: ``http.client`` in worker threads, keep-alive,
stall watchdog, redirects without the registry's Authorization); a 401 from the registry is
answered through the ``Sender``'s authenticator and the range asked again; every other
failure becomes the modelfs error tree through ``translate.bulk_error``.
"""

from __future__ import annotations

import http.client
import logging
import urllib.parse

import trio

from modelfs.errors import Unauthorized
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name
from modelfs.registry.bulk import (
    BodyError,
    BulkClient,
    BulkSettings,
    NeedsAuth,
    RedirectError,
    StatusError,
)
from modelfs.registry.mirrors import Endpoints
from modelfs.registry.origins import base_of
from modelfs.registry.ranges import BlobRange
from modelfs.registry.sender import Sender, pull_scopes
from modelfs.registry.translate import bulk_error

log = logging.getLogger(__name__)


class BlobReads:
    def __init__(self, sender: Sender, endpoints: Endpoints) -> None:
        self.sender = sender
        self.endpoints = endpoints
        config = sender.config
        self.bulk = BulkClient(
            BulkSettings(
                connect_seconds=config.connect_seconds,
                stall_seconds=config.stall_seconds,
                min_bytes_per_second=config.min_bytes_per_second,
                user_agent=config.user_agent,
                # The sender's TLS context, as a reconfiguration leaves it, for new connections.
                ssl_context_factory=lambda: self.sender.ssl,
            )
        )

    def close(self) -> None:
        self.bulk.close()

    def abort_transfers(self) -> None:
        """End every blob transfer in progress (shutdown): their threads return at once."""
        self.bulk.abort()

    def use_blob_location(self, name: Name, digest: Digest, url: str) -> None:
        """Fetch ``digest``'s bytes from ``url`` (a chunksums ``Content-Location``) as if the
        registry redirected there: no Authorization to another origin, reused until refused,
        then the blob is resolved at the registry again. Only http and https."""
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            log.warning("blob %s: ignoring a Content-Location that is not http(s)", digest.short)
            return
        self.bulk.redirects.put(self.endpoints.blob_url(name, digest), url)

    async def fetch_with_failover(self, rng: BlobRange, *, limiter: trio.CapacityLimiter) -> None:
        """Stream blob bytes ``[rng.start, rng.end)`` to ``rng.on_piece`` in pieces of
        ``rng.piece_bytes``, from the host's mirrors in turn, then the host.

        ``on_piece(offset, view)`` runs in the worker thread; the view is only valid
        during the call. Pieces delivered before a failure stay delivered: a caller
        retries only what is missing. Raises Transient when the body is cut short or
        stalls (less than ``min_bytes_per_second`` over ``stall_seconds``). ``on_whole``: see
        ``BulkClient.get_range`` (a mirror answering with the whole blob); ``on_bytes(n)``, body
        bytes as they arrive (worker thread).
        """
        what = f"blob {rng.digest.short} of {rng.name}"

        async def fetch_at(base: str, at_origin: bool) -> None:
            await self._fetch_at(base, rng, what, limiter)

        await self.endpoints.first_answer(rng.name, fetch_at)

    async def _fetch_at(
        self, base: str, rng: BlobRange, what: str, limiter: trio.CapacityLimiter
    ) -> None:
        """``rng`` from one endpoint (a mirror or the host), answering one 401 there."""
        name = rng.name
        url = self.endpoints.blob_url(name, rng.digest, base)
        host = self.endpoints.auth_host(base, name)
        given_for = self.endpoints.given_for(base, name)
        scopes = pull_scopes(name)
        for attempt in range(2):
            sent = self.sender.auth.header(host, scopes, given_for=given_for, to=base_of(url))
            try:
                await trio.to_thread.run_sync(self.bulk.get_range, url, sent, rng, limiter=limiter)
                return
            except NeedsAuth as e:
                if attempt:
                    said = self.sender.auth.refused(host, sent) or "registry refused access (401)"
                    raise Unauthorized(f"{what}: {said}", 401) from None
                # The bulk path raises NeedsAuth only for a 401 from ``url``'s own origin.
                await self.sender.answer(
                    host, scopes, sent, e.challenge, given_for=given_for, asked_by=base_of(url)
                )
            except (
                StatusError,
                BodyError,
                RedirectError,
                OSError,
                http.client.HTTPException,
            ) as e:
                raise bulk_error(e, what, host) from None
