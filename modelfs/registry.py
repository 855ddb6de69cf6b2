"""The registry client: manifests, blob existence, blob ranges, uploads, deletes.

This is the only module that sees HTTP-library exceptions; it translates them
once into the modelfs error tree. Two HTTP paths, chosen by measurement
(docs/architecture.md): httpx's async client for control requests (manifests,
HEAD, uploads), and for bulk blob bodies a lean reader on the standard library's
``http.client`` in a worker thread that ``readinto``s a reused buffer — httpx
tops out near 0.7 GB/s on this machine where the lean path keeps up with curl.
"""

from __future__ import annotations

import http.client
import logging
import platform
import re
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import trio

from modelfs import __version__
from modelfs.digest import Digest
from modelfs.errors import (
    ManifestInvalid,
    ModelfsError,
    ModelNotFound,
    RegistryError,
    Transient,
    Unauthorized,
)
from modelfs.manifest import MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, MEDIA_TYPE_DOCKER_MANIFEST
from modelfs.names import Name, scheme_for
from modelfs.retry import retrying

log = logging.getLogger(__name__)

CONNECT_SECONDS = 5.0
# A body stream that delivers less than STALL_MIN_BYTES in STALL_SECONDS is stalled: dropped and
# retried on a fresh connection. Catches both silence and a trickle, lets slow links through.
STALL_SECONDS = 10.0
STALL_MIN_BYTES = 64 << 10
MANIFEST_ATTEMPTS = 3
UPLOAD_PIECE_BYTES = 1 << 20
ERROR_BODY_BYTES = 16 << 10
MAX_REDIRECTS = 5
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

# One piece callback per chunk-sized piece of a range body, called in the worker thread.
PieceSink = Callable[[int, memoryview], None]


def _user_agent() -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    py = ".".join(str(v) for v in sys.version_info[:3])
    return f"modelfs/{__version__} ({arch} {platform.system().lower()}) Python/{py}"


USER_AGENT = _user_agent()


@dataclass(frozen=True)
class RegistryConfig:
    insecure_hosts: tuple[str, ...] = ()
    ca_file: str | None = None
    user_agent: str = USER_AGENT
    connect_seconds: float = CONNECT_SECONDS
    stall_seconds: float = STALL_SECONDS
    stall_min_bytes: int = STALL_MIN_BYTES


def _ssl_context(config: RegistryConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=config.ca_file)


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


def _error_message(body: bytes) -> str:
    """The registry's own words from either error body form (Docker's list, Ollama's single)."""
    import json

    try:
        doc = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return " ".join(text.split())[:200]
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("message") or first.get("code") or "")[:200]
        for key in ("error", "message", "code"):
            if isinstance(doc.get(key), str):
                return doc[key][:200]
    return ""


def _status_error(status: int, what: str, body: bytes, retry_after: str | None) -> ModelfsError:
    said = _error_message(body)
    detail = f": {said}" if said else ""
    if status in (401, 403):
        return Unauthorized(f"{what}: registry refused access ({status}){detail}", status)
    if status == 429 or status >= 500:
        return Transient(f"{what}: registry answered {status}{detail}", _retry_after(retry_after))
    return RegistryError(f"{what}: registry answered {status}{detail}", status)


def _translate(exc: Exception, what: str) -> ModelfsError:
    if isinstance(exc, httpx.TimeoutException):
        return Transient(f"{what}: timed out")
    if isinstance(exc, httpx.ConnectError):
        return Transient(f"{what}: cannot connect ({_reason(exc)})")
    if isinstance(exc, httpx.TransportError):
        return Transient(f"{what}: connection failed ({_reason(exc)})")
    if isinstance(exc, ssl.SSLError):
        return RegistryError(f"{what}: TLS failed ({exc.reason or exc})")
    if isinstance(exc, TimeoutError):
        return Transient(f"{what}: stalled (no data for the stall timeout)")
    if isinstance(exc, OSError | http.client.HTTPException):
        return Transient(f"{what}: connection failed ({_reason(exc)})")
    return RegistryError(f"{what}: {type(exc).__name__}")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:160]


@dataclass
class _Pool:
    """Idle keep-alive connections for the bulk path, shared by worker threads."""

    config: RegistryConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None

    def get(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
        with self.lock:
            conns = self.idle.get((scheme, host, port))
            if conns:
                return conns.pop(), True
        if scheme == "https":
            if self.ssl_context is None:
                self.ssl_context = _ssl_context(self.config)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=self.config.connect_seconds, context=self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.config.connect_seconds)
        return conn, False

    def put(self, scheme: str, host: str, port: int, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.idle.setdefault((scheme, host, port), []).append(conn)

    def close(self) -> None:
        with self.lock:
            conns = [c for cs in self.idle.values() for c in cs]
            self.idle.clear()
        for c in conns:
            c.close()


class _Progress:
    """Stall detection for one body: enough bytes in every window of ``stall_seconds``."""

    def __init__(self, config: RegistryConfig, what: str) -> None:
        self.window_seconds = config.stall_seconds
        self.min_bytes = config.stall_min_bytes
        self.what = what
        self.window_start = time.monotonic()
        self.window_bytes = 0

    def add(self, n: int) -> None:
        self.window_bytes += n
        now = time.monotonic()
        if now - self.window_start >= self.window_seconds:
            if self.window_bytes < self.min_bytes:
                raise Transient(
                    f"{self.what}: stalled ({self.window_bytes} bytes in "
                    f"{now - self.window_start:.0f}s); retrying on a fresh connection"
                )
            self.window_start = now
            self.window_bytes = 0


_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Registry:
    """One client per process; ``aclose`` it (the daemon's exit stack does)."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.config = config or RegistryConfig()
        self._client = httpx.AsyncClient(
            headers={"User-Agent": self.config.user_agent},
            timeout=httpx.Timeout(self.config.stall_seconds, connect=self.config.connect_seconds),
            follow_redirects=True,
            verify=_ssl_context(self.config),
            trust_env=True,
        )
        self._pool = _Pool(self.config)

    async def aclose(self) -> None:
        await self._client.aclose()
        self._pool.close()

    # -- URLs ---------------------------------------------------------------------------

    def base_url(self, name: Name) -> str:
        return f"{scheme_for(name, self.config.insecure_hosts)}://{name.host.lower()}"

    def manifest_url(self, name: Name, reference: str | None = None) -> str:
        ref = reference or (str(name.digest) if name.digest else name.tag)
        return f"{self.base_url(name)}/v2/{name.repository}/manifests/{ref}"

    def blob_url(self, name: Name, digest: Digest) -> str:
        return f"{self.base_url(name)}/v2/{name.repository}/blobs/{digest}"

    # -- control path (httpx async) ----------------------------------------------------------

    async def _raise_for(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        body = b""
        async for part in r.aiter_bytes():
            body += part
            if len(body) >= ERROR_BODY_BYTES:
                break
        raise _status_error(r.status_code, what, body, r.headers.get("Retry-After"))

    async def get_manifest(self, name: Name) -> bytes:
        """The manifest bytes exactly as the registry sent them."""
        url = self.manifest_url(name)
        what = f"manifest of {name}"

        async def once() -> bytes:
            try:
                async with self._client.stream(
                    "GET", url, headers={"Accept": MANIFEST_ACCEPT}
                ) as r:
                    if r.status_code == 404:
                        raise ModelNotFound(f"model {name} not found on {name.host}")
                    await self._raise_for(r, what)
                    body = bytearray()
                    async for part in r.aiter_raw():
                        body += part
                        if len(body) > MAX_MANIFEST_BYTES:
                            raise ManifestInvalid(
                                f"invalid manifest: {name} is over {MAX_MANIFEST_BYTES} bytes"
                            )
                    return bytes(body)
            except ModelfsError:
                raise
            except (httpx.HTTPError, OSError, ssl.SSLError) as e:
                raise _translate(e, what) from None

        return await retrying(what, once, attempts=MANIFEST_ATTEMPTS)

    async def has_blob(self, name: Name, digest: Digest) -> bool:
        what = f"blob {digest.short} of {name}"

        async def once() -> bool:
            try:
                r = await self._client.head(self.blob_url(name, digest))
            except (httpx.HTTPError, OSError) as e:
                raise _translate(e, what) from None
            if r.status_code == 404:
                return False
            if r.status_code >= 400:
                raise _status_error(r.status_code, what, b"", r.headers.get("Retry-After"))
            return True

        return await retrying(what, once)

    async def upload_blob(
        self,
        name: Name,
        digest: Digest,
        path: Path,
        size: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload one blob (POST, one streamed PATCH, PUT ?digest=); retried whole on Transient."""
        what = f"upload of {digest.short} to {name}"

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

        async def once() -> None:
            try:
                r = await self._client.post(
                    f"{self.base_url(name)}/v2/{name.repository}/blobs/uploads/"
                )
                await self._raise_for(r, what)
                location = urllib.parse.urljoin(str(r.url), r.headers.get("Location", ""))
                if not location:
                    raise RegistryError(f"{what}: registry gave no upload location")
                r = await self._client.patch(
                    location,
                    content=body(),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                )
                await self._raise_for(r, what)
                location = urllib.parse.urljoin(str(r.url), r.headers.get("Location", location))
                url = httpx.URL(location).copy_merge_params({"digest": str(digest)})
                r = await self._client.put(url, headers={"Content-Length": "0"})
                await self._raise_for(r, what)
            except ModelfsError:
                raise
            except (httpx.HTTPError, OSError) as e:
                raise _translate(e, what) from None

        await retrying(what, once)

    async def put_manifest(self, name: Name, raw: bytes, media_type: str | None = None) -> None:
        what = f"manifest upload of {name}"

        async def once() -> None:
            try:
                r = await self._client.put(
                    self.manifest_url(name, name.tag),
                    content=raw,
                    headers={"Content-Type": media_type or MEDIA_TYPE_DOCKER_MANIFEST},
                )
            except (httpx.HTTPError, OSError) as e:
                raise _translate(e, what) from None
            await self._raise_for(r, what)

        await retrying(what, once)

    async def delete_manifest(self, name: Name, digest: Digest) -> None:
        what = f"delete of {name}"
        try:
            r = await self._client.delete(self.manifest_url(name, str(digest)))
        except (httpx.HTTPError, OSError) as e:
            raise _translate(e, what) from None
        if r.status_code == 405:
            raise RegistryError(f"{what}: the registry does not allow deletes", 405)
        if r.status_code == 404:
            raise ModelNotFound(f"model {name} not found on {name.host}")
        await self._raise_for(r, what)

    # -- bulk path (http.client in a worker thread) -------------------------------------------

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
    ) -> None:
        """Stream blob bytes ``[start, end)`` to ``on_piece`` in pieces of ``piece_bytes``.

        ``on_piece(offset, view)`` runs in the worker thread; the view is only valid
        during the call. Pieces delivered before a failure stay delivered: a caller
        retries only what is missing. Raises Transient when the body is cut short or
        stalls (less than ``stall_min_bytes`` in ``stall_seconds``).
        """
        url = self.blob_url(name, digest)
        await trio.to_thread.run_sync(
            self._read_range_sync,
            url,
            start,
            end,
            piece_bytes,
            on_piece,
            f"blob {digest.short} of {name}",
            limiter=limiter,
        )

    def _read_range_sync(
        self,
        url: str,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
        what: str,
    ) -> None:
        headers = {
            "User-Agent": self.config.user_agent,
            "Range": f"bytes={start}-{end - 1}",
            "Accept-Encoding": "identity",
        }
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            scheme = parts.scheme
            host = parts.hostname or ""
            port = parts.port or (443 if scheme == "https" else 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn, reused = self._pool.get(scheme, host, port)
            try:
                resp = self._send(conn, reused, path, headers, what)
            except BaseException:
                conn.close()
                raise
            reusable = False
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    location = resp.getheader("Location")
                    resp.read(ERROR_BODY_BYTES)
                    if not location:
                        raise RegistryError(f"{what}: redirect without a location", resp.status)
                    new = urllib.parse.urljoin(url, location)
                    if urllib.parse.urlsplit(new).netloc != parts.netloc:
                        # Credentials are for the registry, never for the host it sends us to.
                        headers.pop("Authorization", None)
                    url = new
                    reusable = not resp.will_close
                    continue
                reusable = self._read_body(resp, start, end, piece_bytes, on_piece, what)
                return
            finally:
                if reusable:
                    self._pool.put(scheme, host, port, conn)
                else:
                    conn.close()
        raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects")

    def _send(
        self,
        conn: http.client.HTTPConnection,
        reused: bool,
        path: str,
        headers: dict[str, str],
        what: str,
    ) -> http.client.HTTPResponse:
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if not reused:
                raise _translate(e, what) from None
            # A kept-alive connection the server already closed: one fresh try, not a failure.
            conn.close()
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e2:
                raise _translate(e2, what) from None
        if conn.sock is not None:
            conn.sock.settimeout(self.config.stall_seconds)
        return resp

    def _read_body(
        self,
        resp: http.client.HTTPResponse,
        start: int,
        end: int,
        piece_bytes: int,
        on_piece: PieceSink,
        what: str,
    ) -> bool:
        """Deliver the body; return True if the connection can be reused."""
        if resp.status >= 400:
            try:
                body = resp.read(ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                body = b""
            raise _status_error(resp.status, what, body, resp.getheader("Retry-After"))
        if resp.status == 206:
            m = _CONTENT_RANGE_RE.fullmatch((resp.getheader("Content-Range") or "").strip())
            if not m or int(m.group(1)) != start or int(m.group(2)) != end - 1:
                raise Transient(
                    f"{what}: asked for bytes {start}-{end - 1}, registry sent "
                    f"{resp.getheader('Content-Range')!r}"
                )
            skip = 0
        elif resp.status == 200:
            # The registry ignored Range and sends the whole blob: skip to our start.
            skip = start
        else:
            raise RegistryError(f"{what}: unexpected status {resp.status}", resp.status)
        length = end - start
        buf = bytearray(min(piece_bytes, max(length, 1)))
        view = memoryview(buf)
        progress = _Progress(self.config, what)
        try:
            while skip:
                got = resp.readinto(view[: min(len(buf), skip)])
                if not got:
                    raise Transient(f"{what}: body ended before byte {start}")
                skip -= got
                progress.add(got)
            offset = start
            while offset < end:
                want = min(piece_bytes, end - offset)
                filled = 0
                while filled < want:
                    got = resp.readinto(view[filled:want])
                    if not got:
                        raise Transient(
                            f"{what}: body ended at byte {offset + filled} of {start}-{end - 1}"
                        )
                    filled += got
                    progress.add(got)
                on_piece(offset, view[:want])
                offset += want
        except (OSError, http.client.HTTPException) as e:
            raise _translate(e, what) from None
        # Whatever is left (a registry sending more than asked) is not ours to read.
        return resp.status == 206 and resp.length == 0 and not resp.will_close
