"""The registry client: manifests, blob existence, blob ranges, uploads, deletes.

This is the only module that sees HTTP-library exceptions; it translates them
once into the modelfs error tree. Two HTTP paths, chosen by measurement
(docs/architecture.md): httpx's async client for control requests (manifests,
HEAD, uploads, tokens), and for bulk blob bodies the lean ``http.client`` reader
of ``bulk`` in worker threads.

Every request carries the Authorization ``auth`` holds for its host and scope; a 401
is answered once (a token, a signature, Basic credentials) and the request sent again.
Reads (manifests, blobs) go to the host's mirrors first, in order, then to the host.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import platform
import re
import ssl
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from modelfs import __version__
from modelfs.errors import (
    DigestInvalid,
    ManifestInvalid,
    ModelfsError,
    ModelNotFound,
    RegistryError,
    Transient,
    Unauthorized,
    registry_words,
)
from modelfs.flight import KeyedLock
from modelfs.formats.chunksums import MAX_CHUNKSUMS_BYTES
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_DOCKER_MANIFEST,
)
from modelfs.formats.names import Name, scheme_for
from modelfs.formats.referrers import (
    MAX_INDEX_DOCUMENT_BYTES,
    MEDIA_TYPE_OCI_INDEX,
    Referrer,
    parse_referrers,
    referrers_tag,
)
from modelfs.registry.auth import AuthConfig, Authenticator, in_clear_on_its_host
from modelfs.registry.bulk import (
    Aborted,
    ArrivalSink,
    BodyError,
    BulkClient,
    BulkSettings,
    NeedsAuth,
    PieceSink,
    RedirectError,
    StatusError,
    WholeSink,
)
from modelfs.registry.origins import same_origin
from modelfs.registry.retry import retrying

__all__ = ["ArrivalSink", "PieceSink", "Registry", "RegistryConfig", "WholeSink"]

log = logging.getLogger(__name__)

CONNECT_SECONDS = 5.0
# A blob request that delivers less than MIN_BYTES_PER_SECOND over STALL_SECONDS is stalled:
# dropped and retried on a fresh connection. Catches silence and a trickle, lets slow links through.
STALL_SECONDS = 30.0
MIN_BYTES_PER_SECOND = 64 << 10
# A control request (manifest, token) that has not answered whole in this long is a failure.
CONTROL_SECONDS = 30.0
MANIFEST_ATTEMPTS = 3
UPLOAD_PIECE_BYTES = 1 << 20
ERROR_BODY_BYTES = 16 << 10
TOKEN_BODY_BYTES = 64 << 10
# A mirror that failed is skipped for this long before it is tried again.
MIRROR_BACKOFF_SECONDS = 30.0
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
# A tag list: each page read up to this size, and at most this many pages followed.
MAX_TAGS_BYTES = 4 << 20
MAX_TAG_PAGES = 100
_NEXT_REL = re.compile(r'rel\s*=\s*"?next"?', re.IGNORECASE)


def _user_agent() -> str:
    # Ollama's form: ollama/<version> (<arch> <os>) Go/<version>.
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    py = ".".join(str(v) for v in sys.version_info[:3])
    return f"modelfs/{__version__} ({arch} {platform.system().lower()}) Python/{py}"


USER_AGENT = _user_agent()


@dataclass(frozen=True)
class Chunksums:
    """A registry's chunksums answer (``Registry.chunksums``)."""

    body: bytes
    location: str | None  # where the blob's bytes are, absolute


@dataclass(frozen=True)
class RegistryConfig:
    insecure_hosts: tuple[str, ...] = ()
    # Hosts spoken to over https even where http is the default (loopback).
    tls_hosts: tuple[str, ...] = ()
    ca_file: str | None = None
    user_agent: str = USER_AGENT
    connect_seconds: float = CONNECT_SECONDS
    stall_seconds: float = STALL_SECONDS
    min_bytes_per_second: int = MIN_BYTES_PER_SECOND
    control_seconds: float = CONTROL_SECONDS
    key_path: Path | None = None
    docker_config: Path | None = None
    # host -> base URLs tried in order for reads before the host itself.
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # (host, mirror base URL) pairs whose reads carry the host's credentials (config
    # ``credentials = "origin"``), per pair: a mirror shared by two hosts is not both.
    origin_credentials: frozenset[tuple[str, str]] = frozenset()
    # A client for other users of an allow_other mount: no stored credentials, no Ollama key.
    anonymous: bool = False


def _ssl_context(config: RegistryConfig) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as e:
        raise RegistryError(f"cannot use the CA file {config.ca_file}: {e}") from None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _status_error(status: int, what: str, body: bytes, retry_after: str | None) -> ModelfsError:
    said = registry_words(body)
    detail = f": {said}" if said else ""
    if status in (401, 403):
        return Unauthorized(f"{what}: registry refused access ({status}){detail}", status)
    if status == 407:
        return RegistryError(
            f"{what}: the proxy asks for credentials (407): give them in the proxy URL "
            "(http://user:password@proxy:port)",
            status,
        )
    if status == 412:
        return RegistryError(f"{what}: the registry refused this client (412){detail}", status)
    if status == 429 or status >= 500:
        return Transient(f"{what}: registry answered {status}{detail}", _retry_after(retry_after))
    return RegistryError(f"{what}: registry answered {status}{detail}", status)


def _cert_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _translate(exc: BaseException, what: str, host: str = "") -> ModelfsError:
    cert = _cert_failure(exc)
    if cert is not None or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = cert.verify_message if cert is not None else "certificate verify failed"
        return RegistryError(
            f"{what}: cannot verify the TLS certificate of {host or 'the registry'} ({reason}); "
            "give its CA with --ca-file or SSL_CERT_FILE"
        )
    if isinstance(exc, ssl.SSLError):
        return RegistryError(f"{what}: TLS with {host or 'the registry'} failed ({_reason(exc)})")
    if isinstance(exc, httpx.TimeoutException):
        return Transient(f"{what}: timed out")
    if isinstance(exc, httpx.ConnectError):
        via = _proxy_of(host)
        target = f"the proxy {via} for {host}" if via else (host or "the registry")
        return Transient(f"{what}: cannot connect to {target} ({_reason(exc)})")
    if isinstance(exc, httpx.UnsupportedProtocol):
        # A redirect to file:, gopher: …: not a network blob, and no retry will make it one.
        return RegistryError(f"{what}: redirected to an unsupported URL scheme ({_reason(exc)})")
    if isinstance(exc, httpx.TransportError):
        return Transient(f"{what}: connection failed ({_reason(exc)})")
    if isinstance(exc, TimeoutError):
        return Transient(f"{what}: stalled (no data for the stall timeout)")
    if isinstance(exc, OSError | http.client.HTTPException):
        return Transient(f"{what}: connection failed ({_reason(exc)})")
    return RegistryError(f"{what}: {type(exc).__name__}")


def _proxy_of(host: str) -> str | None:
    """The proxy (from the environment) that requests to ``host`` go through, if any."""
    if not host:
        return None
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if urllib.request.proxy_bypass(host) or urllib.request.proxy_bypass(bare):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("http") or proxies.get("all")
    if not proxy:
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}").netloc.rsplit(
        "@", 1
    )[-1]


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:160]


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


def _base(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what a credential is given for, or a 401 came from."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


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
    body = b""
    try:
        async for part in r.aiter_bytes():
            body += part
            if len(body) >= ERROR_BODY_BYTES:
                break
        doc = json.loads(body)
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


def pull_scopes(name: Name) -> tuple[str, ...]:
    return (f"repository:{name.repository}:pull",)


def push_scopes(name: Name, source: Name | None = None) -> tuple[str, ...]:
    scopes = [f"repository:{name.repository}:pull,push"]
    if source is not None and source.repository != name.repository:
        scopes.append(f"repository:{source.repository}:pull")
    return tuple(scopes)


def delete_scopes(name: Name) -> tuple[str, ...]:
    return (f"repository:{name.repository}:delete",)


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
        self._ssl = _ssl_context(self.config)
        self._client = self._new_client()
        self._retired: list[httpx.AsyncClient] = []
        self.bulk = BulkClient(
            BulkSettings(
                connect_seconds=self.config.connect_seconds,
                stall_seconds=self.config.stall_seconds,
                min_bytes_per_second=self.config.min_bytes_per_second,
                user_agent=self.config.user_agent,
                ssl_context_factory=lambda: self._ssl,
            )
        )
        self.auth = self._new_auth()
        self._auth_locks: KeyedLock[tuple[str, tuple[str, ...]]] = KeyedLock()
        self._mirror_down_until: dict[str, float] = {}
        # Hosts that answered 404 to the referrers API: the referrers tag schema is used.
        self._no_referrers_api: set[str] = set()

    async def aclose(self) -> None:
        self.bulk.close()
        for client in (*self._retired, self._client):
            await client.aclose()

    def reconfigure(self, config: RegistryConfig) -> None:
        """Use ``config`` from now on (the daemon's SIGHUP): hosts, TLS, mirrors, the key and
        stored credentials. Requests in flight finish on the old settings; cached tokens are
        dropped, so credentials are read again at the next challenge."""
        self.config = config
        self._ssl = _ssl_context(config)  # the bulk pool takes it for its next connections
        # The old control client may be mid-request: retire it, close it with the registry.
        self._retired.append(self._client)
        self._client = self._new_client()
        self.auth = self._new_auth()
        self._mirror_down_until.clear()
        self._no_referrers_api.clear()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={"User-Agent": self.config.user_agent},
            timeout=httpx.Timeout(self.config.stall_seconds, connect=self.config.connect_seconds),
            follow_redirects=True,
            verify=self._ssl,
            trust_env=True,
        )

    def _new_auth(self) -> Authenticator:
        return Authenticator(
            self._fetch_token,
            AuthConfig(
                key_path=self.config.key_path,
                docker_config=self.config.docker_config,
                anonymous=self.config.anonymous,
            ),
        )

    def abort_transfers(self) -> None:
        """End every blob transfer in progress (shutdown): their threads return at once."""
        self.bulk.abort()

    # -- URLs ---------------------------------------------------------------------------

    def base_url(self, name: Name) -> str:
        if name.scheme is not None:
            return f"{name.scheme}://{name.host.lower()}"
        return self.host_url(name.host)

    def host_url(self, host: str) -> str:
        host = host.lower()
        if any(host == h.lower() for h in self.config.tls_hosts):
            return f"https://{host}"
        return f"{scheme_for(host, self.config.insecure_hosts)}://{host}"

    def read_bases(self, name: Name) -> list[str]:
        """Where reads of ``name`` go, in order: the host's mirrors that are not resting, then the host."""
        now = time.monotonic()
        mirrors = self.config.mirrors.get(name.host.lower(), ())
        up = [m.rstrip("/") for m in mirrors if self._mirror_down_until.get(m, 0.0) <= now]
        return [*up, self.base_url(name)]

    def _lends_origin_credentials(self, base: str, name: Name) -> bool:
        return (name.host.lower(), base.rstrip("/")) in self.config.origin_credentials

    def auth_host(self, base: str, name: Name) -> str:
        """Whose credentials a read of ``name`` at ``base`` carries: the host it talks to, but
        the origin's for a mirror configured with ``credentials = "origin"`` for this host."""
        if self._lends_origin_credentials(base, name):
            return name.host.lower()
        return _netloc(base)

    def given_for(self, base: str, name: Name) -> str:
        """The base URL the credentials of a read of ``name`` at ``base`` were given for: the
        origin's for a mirror that lends them, else ``base`` itself."""
        if self._lends_origin_credentials(base, name):
            return _base(self.base_url(name))
        return _base(base)

    def handed_out_given_for(self, name: Name, url: str) -> str | None:
        """Whose credentials a URL the registry of ``name`` handed out (an upload ``Location``)
        carries: on the registry's own host and port, the registry's, as given (so an https
        registry's never go to an http location); elsewhere (None), those of the URL's host."""
        base = self.base_url(name)
        return _base(base) if _netloc(url) == _netloc(base) else None

    def distrust_mirrors(self, name: Name, what: str) -> None:
        """Bytes of ``name`` (``what``) did not match their digest: read from the origin for a
        while. A mirror is trusted for nothing but bytes, and not for those once they fail."""
        now = time.monotonic()
        for base in self.config.mirrors.get(name.host.lower(), ()):
            base = base.rstrip("/")
            if self._mirror_down_until.get(base, 0.0) <= now:
                log.warning(
                    "%s of %s did not match; mirror %s may have sent them: reading from the "
                    "origin for %.0fs",
                    what,
                    name,
                    base,
                    MIRROR_BACKOFF_SECONDS,
                )
            self._mirror_down_until[base] = now + MIRROR_BACKOFF_SECONDS

    def _mirror_failed(self, base: str, name: Name, e: ModelfsError) -> None:
        if isinstance(e, ModelNotFound):
            # A mirror without the model is normal (it may not have it yet): ask the next one.
            log.info("mirror %s does not have %s; using the next endpoint", base, name)
            return
        log.warning("mirror %s failed for %s (%s); using the next endpoint", base, name, e)
        self._mirror_down_until[base] = time.monotonic() + MIRROR_BACKOFF_SECONDS

    def manifest_url(
        self, name: Name, reference: str | None = None, base: str | None = None
    ) -> str:
        ref = reference or (str(name.digest) if name.digest else name.tag)
        return f"{base or self.base_url(name)}/v2/{name.repository}/manifests/{ref}"

    def blob_url(self, name: Name, digest: Digest, base: str | None = None) -> str:
        return f"{base or self.base_url(name)}/v2/{name.repository}/blobs/{digest}"

    # -- authentication ---------------------------------------------------------------------

    async def _fetch_token(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        what = f"token from {_netloc(url)}"
        with trio.move_on_after(self.config.control_seconds):
            return await self._fetch_token_once(url, headers, what)
        raise Transient(f"{what}: no whole answer in {self.config.control_seconds:.0f}s")

    async def _fetch_token_once(
        self, url: str, headers: dict[str, str], what: str
    ) -> tuple[int, bytes]:
        try:
            async with self._client.stream("GET", url, headers=headers) as r:
                body = b""
                async for part in r.aiter_bytes():
                    body += part
                    if len(body) > TOKEN_BODY_BYTES:
                        raise Unauthorized(f"{what}: the answer is too large")
                return r.status_code, body
        except (httpx.HTTPError, OSError, ssl.SSLError) as e:
            raise _translate(e, what, _netloc(url)) from None

    async def _answer(
        self,
        host: str,
        scopes: tuple[str, ...],
        sent: str | None,
        challenge: str | None,
        *,
        given_for: str,
        asked_by: str,
    ) -> None:
        """Get credentials for a 401 (from ``asked_by``, for credentials given for
        ``given_for``: see ``Authenticator.answer``); concurrent requests that met it share
        one answer."""
        async with self._auth_locks.hold((host, scopes)):
            now = self.auth.header(host, scopes, given_for=given_for, to=asked_by)
            if now is not None and now != sent:
                return  # another task already answered this challenge
            await self.auth.answer(host, scopes, challenge, given_for=given_for, asked_by=asked_by)

    async def _send(
        self,
        method: str,
        url: str,
        scopes: tuple[str, ...],
        what: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        given_for: str | None = None,
    ) -> httpx.Response:
        """One control request with auth, answering one 401. The response is streamed:
        the caller reads or closes it. ``given_for``: the base URL whose credentials it
        carries (by default that of ``url``)."""
        given_for = given_for or _base(url)
        host = _netloc(given_for)
        in_clear = in_clear_on_its_host(given_for, url)
        for attempt in range(2):
            sent = (
                None
                if in_clear
                else self.auth.header(host, scopes, given_for=given_for, to=_base(url))
            )
            hdrs = dict(headers or {})
            if sent:
                hdrs["Authorization"] = sent
            request = self._client.build_request(method, url, headers=hdrs, content=content)
            try:
                r = await self._client.send(request, stream=True)
            except (httpx.HTTPError, OSError, ssl.SSLError) as e:
                raise _translate(e, what, host) from None
            if r.status_code != 401:
                return r
            if in_clear:
                await r.aclose()
                raise Unauthorized(
                    f"{what}: {_base(url)} asks for credentials over plain http; those of "
                    f"{host} are for {given_for}, and are not sent there",
                    401,
                )
            if attempt:
                refused = self.auth.refused(host, sent)
                if refused is None:
                    return r
                await r.aclose()
                raise Unauthorized(f"{what}: {refused}", 401)
            challenge = r.headers.get("WWW-Authenticate")
            await r.aclose()
            # Who asked: the server that answered 401, which a redirect may have made another.
            await self._answer(
                host, scopes, sent, challenge, given_for=given_for, asked_by=_base(str(r.url))
            )
            if content is not None and not isinstance(content, bytes):
                # A streamed body cannot be sent twice: the caller starts over with the new token.
                raise Transient(f"{what}: the registry asked for credentials again; retrying")
        raise AssertionError("unreachable")

    async def _raise_for(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        body = b""
        try:
            async for part in r.aiter_bytes():
                body += part
                if len(body) >= ERROR_BODY_BYTES:
                    break
        except (httpx.HTTPError, OSError):
            pass
        finally:
            await r.aclose()
        raise _status_error(r.status_code, what, body, r.headers.get("Retry-After"))

    async def _closed(self, r: httpx.Response) -> httpx.Response:
        await r.aread()
        await r.aclose()
        return r

    # -- reads ----------------------------------------------------------------------------------

    async def get_manifest(self, name: Name) -> bytes:
        """The manifest bytes exactly as the registry (or one of its mirrors) sent them."""
        bases = self.read_bases(name)
        for base in bases[:-1]:
            try:
                return await self._get_manifest(name, base, attempts=1)
            except ModelfsError as e:
                self._mirror_failed(base, name, e)
        return await self._get_manifest(name, bases[-1], attempts=MANIFEST_ATTEMPTS)

    async def _get_manifest(self, name: Name, base: str, attempts: int) -> bytes:
        url = self.manifest_url(name, base=base)
        what = f"manifest of {name}"

        async def once() -> bytes:
            # httpx's timeouts are per socket operation: a trickle never trips them.
            with trio.move_on_after(self.config.control_seconds):
                return await fetch()
            raise Transient(f"{what}: no whole answer in {self.config.control_seconds:.0f}s")

        async def fetch() -> bytes:
            r = await self._send(
                "GET",
                url,
                pull_scopes(name),
                what,
                headers={"Accept": MANIFEST_ACCEPT},
                given_for=self.given_for(base, name),
            )
            try:
                if r.status_code == 404:
                    raise ModelNotFound(f"model {name} not found on {_netloc(url)}")
                await self._raise_for(r, what)
                body = bytearray()
                async for part in r.aiter_raw():
                    body += part
                    if len(body) > MAX_MANIFEST_BYTES:
                        raise ManifestInvalid(
                            f"invalid manifest: {name} is over {MAX_MANIFEST_BYTES} bytes"
                        )
                return bytes(body)
            except (httpx.HTTPError, OSError) as e:
                raise _translate(e, what, _netloc(url)) from None
            finally:
                await r.aclose()

        return await retrying(what, once, attempts=attempts)

    async def chunksums(self, name: Name, digest: Digest) -> Chunksums | None:
        """Ollama's chunksums of a blob (``formats.chunksums``): the body as sent, and where
        the blob's bytes are (``Content-Location``); None when the registry has none (404,
        or no such endpoint). The body is read up to ``MAX_CHUNKSUMS_BYTES``."""
        url = f"{self.base_url(name)}/v2/{name.repository}/chunksums/{digest}"
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

        async def once() -> tuple[bytes, httpx.Headers] | None:
            with trio.move_on_after(self.config.control_seconds):
                return await fetch()
            raise Transient(f"{what}: no whole answer in {self.config.control_seconds:.0f}s")

        async def fetch() -> tuple[bytes, httpx.Headers] | None:
            r = await self._send("GET", url, pull_scopes(name), what, headers={"Accept": accept})
            try:
                if r.status_code in absent:
                    if unknown_repository and r.status_code == 404 and await _says_name_unknown(r):
                        raise ModelNotFound(f"{name.host} has no repository {name.repository}")
                    return None
                await self._raise_for(r, what)
                body = bytearray()
                async for part in r.aiter_bytes():
                    body += part
                    if len(body) > limit:
                        raise ManifestInvalid(f"invalid {what}: more than {limit} bytes")
                return bytes(body), r.headers
            except (httpx.HTTPError, OSError) as e:
                raise _translate(e, what, _netloc(url)) from None
            finally:
                await r.aclose()

        return await retrying(what, once, attempts=MANIFEST_ATTEMPTS)

    async def referrers(self, name: Name, subject: Digest, artifact_type: str) -> list[Referrer]:
        """The manifests of ``artifact_type`` whose subject is ``subject``: from the referrers
        API, or, on a registry without it (remembered per host, so that looking costs one
        request), from the referrers tag schema."""
        host = name.host.lower()
        what = f"referrers of {name}@{subject.short}"
        if host not in self._no_referrers_api:
            query = urllib.parse.urlencode({"artifactType": artifact_type})
            url = f"{self.base_url(name)}/v2/{name.repository}/referrers/{subject}?{query}"
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
        url = self.manifest_url(name, referrers_tag(subject))
        what = f"referrers tag of {name}@{subject.short}"
        return await self._get_document(
            name, url, what, MEDIA_TYPE_OCI_INDEX, MAX_INDEX_DOCUMENT_BYTES
        )

    async def manifest_by_digest(self, name: Name, digest: Digest) -> bytes:
        """The manifest ``digest`` of ``name``'s repository, checked against its digest."""
        what = f"manifest {digest.short} of {name}"
        raw = await self._get_document(
            name, self.manifest_url(name, str(digest)), what, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES
        )
        if raw is None:
            raise ModelNotFound(f"{what}: not found on {name.host}")
        if Digest.of_bytes(raw) != digest:
            raise ManifestInvalid(f"{what}: the registry sent other bytes than its digest")
        return raw

    def use_blob_location(self, name: Name, digest: Digest, url: str) -> None:
        """Fetch ``digest``'s bytes from ``url`` (a chunksums ``Content-Location``) as if the
        registry redirected there: no Authorization to another origin, reused until refused,
        then the blob is resolved at the registry again. Only http and https."""
        if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            log.warning("blob %s: ignoring a Content-Location that is not http(s)", digest.short)
            return
        self.bulk.redirects.put(self.blob_url(name, digest), url)

    async def has_blob(self, name: Name, digest: Digest) -> bool:
        """Whether the registry itself (not a mirror: this is for pushes) has the blob."""
        what = f"blob {digest.short} of {name}"
        url = self.blob_url(name, digest)

        async def once() -> bool:
            r = await self._closed(await self._send("HEAD", url, push_scopes(name), what))
            if r.status_code == 404:
                return False
            if r.status_code >= 400:
                raise _status_error(r.status_code, what, b"", r.headers.get("Retry-After"))
            return True

        return await retrying(what, once)

    async def read_range(
        self,
        name: Name,
        digest: Digest,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
        *,
        limiter: trio.CapacityLimiter,
        on_whole: WholeSink | None = None,
        on_bytes: ArrivalSink | None = None,
    ) -> None:
        """Stream blob bytes ``[start, end)`` to ``on_piece`` in pieces of ``piece_bytes``.

        ``on_piece(offset, view)`` runs in the worker thread; the view is only valid
        during the call. Pieces delivered before a failure stay delivered: a caller
        retries only what is missing. Raises Transient when the body is cut short or
        stalls (less than ``min_bytes_per_second`` over ``stall_seconds``). ``on_whole``: see
        ``BulkClient.read_range`` (a mirror answering with the whole blob); ``on_bytes(n)``, body
        bytes as they arrive (worker thread).
        """
        what = f"blob {digest.short} of {name}"
        bases = self.read_bases(name)
        for base in bases[:-1]:
            try:
                await self._read_range_at(
                    base,
                    name,
                    digest,
                    start,
                    end,
                    piece_bytes,
                    on_piece,
                    what,
                    limiter,
                    on_whole,
                    on_bytes,
                )
                return
            except ModelfsError as e:
                self._mirror_failed(base, name, e)
        await self._read_range_at(
            bases[-1],
            name,
            digest,
            start,
            end,
            piece_bytes,
            on_piece,
            what,
            limiter,
            on_whole,
            on_bytes,
        )

    async def _read_range_at(
        self,
        base: str,
        name: Name,
        digest: Digest,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
        what: str,
        limiter: trio.CapacityLimiter,
        on_whole: WholeSink | None = None,
        on_bytes: ArrivalSink | None = None,
    ) -> None:
        url = self.blob_url(name, digest, base)
        host = self.auth_host(base, name)
        given_for = self.given_for(base, name)
        scopes = pull_scopes(name)
        for attempt in range(2):
            sent = self.auth.header(host, scopes, given_for=given_for, to=_base(url))
            try:
                await trio.to_thread.run_sync(
                    self.bulk.read_range,
                    url,
                    sent,
                    start,
                    end,
                    piece_bytes,
                    on_piece,
                    on_whole,
                    on_bytes,
                    limiter=limiter,
                )
                return
            except NeedsAuth as e:
                if attempt:
                    said = self.auth.refused(host, sent) or "registry refused access (401)"
                    raise Unauthorized(f"{what}: {said}", 401) from None
                # The bulk path raises NeedsAuth only for a 401 from ``url``'s own origin.
                await self._answer(
                    host, scopes, sent, e.challenge, given_for=given_for, asked_by=_base(url)
                )
            except StatusError as e:
                if e.status == 404:
                    raise ModelNotFound(f"{what}: not found on {host}") from None
                where = "" if _netloc(e.url) == host else f" (at {_netloc(e.url)})"
                raise _status_error(e.status, what + where, e.body, e.retry_after) from None
            except Aborted as e:
                raise ModelfsError(f"{what}: {e}") from None
            except BodyError as e:
                raise Transient(f"{what}: {e}") from None
            except RedirectError as e:
                raise RegistryError(f"{what}: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                raise _translate(e, what, host) from None

    async def check_login(self, host: str, user: str, password: str) -> None:
        """Raise Unauthorized unless ``user``/``password`` open the registry at ``host``."""
        base = f"{self.host_url(host)}/v2/"
        self.auth.credentials[host.lower()] = (user, password)
        try:
            r = await self._closed(await self._send("GET", base, (), f"login to {host}"))
        except Unauthorized:
            raise Unauthorized(
                f"login to {host} failed: the registry refused {user!r}", 401
            ) from None
        if r.status_code in (401, 403):
            raise Unauthorized(f"login to {host} failed: the registry refused {user!r}", 401)
        if r.status_code >= 400:
            raise _status_error(r.status_code, f"login to {host}", b"", None)

    # -- writes ---------------------------------------------------------------------------------

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
        url = f"{self.base_url(name)}/v2/{name.repository}/blobs/uploads/?{query}"

        async def once() -> str | None:
            r = await self._send("POST", url, push_scopes(name, source), what)
            if r.status_code == 401:
                await r.aclose()
                raise Unauthorized(self.auth.push_hint(name.host, name.namespace), 401)
            await self._raise_for(r, what)
            await self._closed(r)
            if r.status_code == 201:
                return None
            location = r.headers.get("Location") if r.status_code == 202 else None
            return urllib.parse.urljoin(str(r.url), location) if location else ""

        return await retrying(what, once)

    async def cancel_upload(self, name: Name, session: str, what: str) -> None:
        """Cancel an upload session we will not use (DELETE); a failure only leaves it to
        expire on the registry."""
        with contextlib.suppress(ModelfsError):
            deleted = await self._send(
                "DELETE",
                session,
                push_scopes(name),
                what,
                given_for=self.handed_out_given_for(name, session),
            )
            await self._closed(deleted)

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
            r = await self._send(
                "POST", f"{self.base_url(name)}/v2/{name.repository}/blobs/uploads/", scopes, what
            )
            if r.status_code == 401:
                await r.aclose()
                raise Unauthorized(self.auth.push_hint(name.host, name.namespace), 401)
            await self._raise_for(r, what)
            await self._closed(r)
            if not r.headers.get("Location"):
                raise RegistryError(f"{what}: registry gave no upload location")
            return urllib.parse.urljoin(str(r.url), r.headers["Location"])

        async def once() -> None:
            location = opened.pop() if opened else await start()
            r = await self._send(
                "PATCH",
                location,
                scopes,
                what,
                content=body(),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
                given_for=self.handed_out_given_for(name, location),
            )
            await self._raise_for(r, what)
            await self._closed(r)
            location = urllib.parse.urljoin(str(r.url), r.headers.get("Location", location))
            url = str(httpx.URL(location).copy_merge_params({"digest": str(digest)}))
            r = await self._send(
                "PUT",
                url,
                scopes,
                what,
                headers={"Content-Length": "0"},
                content=b"",
                given_for=self.handed_out_given_for(name, url),
            )
            await self._raise_for(r, what)
            await self._closed(r)

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
            r = await self._send(
                "PUT",
                self.manifest_url(name, reference or name.tag),
                push_scopes(name),
                what,
                content=raw,
                headers={"Content-Type": media_type or MEDIA_TYPE_DOCKER_MANIFEST},
            )
            if r.status_code == 401:
                await r.aclose()
                raise Unauthorized(self.auth.push_hint(name.host, name.namespace), 401)
            await self._raise_for(r, what)
            await self._closed(r)
            return r.headers

        return await retrying(what, once)

    async def manifest_digest(self, name: Name) -> str | None:
        """The digest the registry gives for ``name``'s manifest (HEAD), None if it has none."""
        headers = await self._head_manifest(name, self.manifest_url(name))
        return None if headers is None else headers.get("Docker-Content-Digest")

    async def _head_manifest(self, name: Name, url: str) -> httpx.Headers | None:
        """HEAD of the manifest at ``url``: its headers, None on 404."""
        what = f"manifest of {name}"

        async def once() -> httpx.Headers | None:
            r = await self._closed(
                await self._send(
                    "HEAD", url, pull_scopes(name), what, headers={"Accept": MANIFEST_ACCEPT}
                )
            )
            if r.status_code == 404:
                return None
            if r.status_code >= 400:
                raise _status_error(r.status_code, what, b"", r.headers.get("Retry-After"))
            return r.headers

        return await retrying(what, once)

    async def tag_digest(self, name: Name, tag: str) -> Digest | None:
        """The manifest ``tag`` of ``name``'s repository names at the registry itself (not a
        mirror), None if there is no such tag: from HEAD's ``Docker-Content-Digest``, or
        from the manifest's own bytes when the registry gives no digest."""
        url = self.manifest_url(name, urllib.parse.quote(tag, safe=""))
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

    async def tags(self, name: Name) -> list[str]:
        """Every tag of ``name``'s repository at the registry itself (``tags/list``), following
        the pages a registry may split it into (``Link: <...>; rel="next"``, on the same
        scheme, host and port only); [] for a repository the registry does not know."""
        url = f"{self.base_url(name)}/v2/{name.repository}/tags/list"
        origin = _netloc(url)
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
            if _netloc(next_url) != origin:
                raise RegistryError(f"{what}: {name.host} sent the next page to another host")
            if not same_origin(next_url, url):
                # Its credentials would follow in clear: the page is the registry's own host.
                raise RegistryError(
                    f"{what}: {name.host} sent the next page over "
                    f"{urllib.parse.urlsplit(next_url).scheme}, not {urllib.parse.urlsplit(url).scheme}"
                )
            url = next_url
        raise RegistryError(f"{what}: {name.host} sent more than {MAX_TAG_PAGES} pages")

    async def repository_tags(self, name: Name, max_pages: int = MAX_TAG_PAGES) -> list[str] | None:
        """The tags the registry lists for ``name``'s repository, from at most ``max_pages``
        pages (a listing, not an inventory: what lies beyond is left out); None when it lists
        none (no ``tags/list``). ``ModelNotFound`` when the registry says the repository does
        not exist (404 ``NAME_UNKNOWN``)."""
        url = f"{self.base_url(name)}/v2/{name.repository}/tags/list"
        origin = _netloc(url)
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
            if next_url is None or _netloc(next_url) != origin:
                break
            url = next_url
        return found

    async def delete_tag(self, name: Name) -> bool:
        """Delete the tag ``name.tag`` alone, leaving its manifest to the tags that still name
        it (OCI distribution spec 1.1: DELETE of ``/manifests/<tag>``). False when the
        registry cannot: the spec lets it answer 400 or 405, and docker-registry 2.8 does
        (400 DIGEST_INVALID with deletes enabled, 405 UNSUPPORTED without)."""
        what = f"delete of tag {name}"

        async def once() -> bool:
            r = await self._send(
                "DELETE",
                self.manifest_url(name, urllib.parse.quote(name.tag, safe="")),
                delete_scopes(name),
                what,
            )
            if r.status_code in (400, 405):
                await self._closed(r)
                return False
            if r.status_code == 404:
                await r.aclose()
                raise ModelNotFound(f"model {name} not found on {name.host}")
            await self._raise_for(r, what)
            await self._closed(r)
            return True

        return await retrying(what, once)

    async def delete_manifest(self, name: Name, digest: Digest) -> None:
        what = f"delete of {name}"

        async def once() -> None:
            r = await self._send(
                "DELETE", self.manifest_url(name, str(digest)), delete_scopes(name), what
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
            await self._raise_for(r, what)
            await self._closed(r)

        await retrying(what, once)
