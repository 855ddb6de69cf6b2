"""A fake registry.ollama.ai in front of a real docker-registry, and the CDN it redirects to.

``OllamaFront`` reproduces what the Ollama registry does on top of the Docker v2 API:

* every ``/v2/`` request needs ``Authorization: Bearer <token>``; without one (or with an
  expired one) it answers 401 with
  ``WWW-Authenticate: Bearer realm="http://<front>/token",service="ollama.com",scope="repository:<ns>/<model>:pull"``
  (``:push,pull`` for uploads and manifest PUT, ``:delete`` for DELETE);
* ``GET /token?nonce=..&scope=..&service=..&ts=..`` wants ``Authorization: <pub>:<sig>``, the
  Ollama client's ed25519 signature of ``GET,<token url>,<base64(hex(sha256("")))>``; any valid
  key may pull anything, push/delete only where ``allow_push`` registered the key;
* blob GETs are answered with 307 to a presigned, expiring URL on a separate ``CDN`` server;
* a ``User-Agent`` matching ``reject_user_agent`` gets 412 with a message to show;
* ``GET /v2/<repo>/chunksums/<digest>``, when ``chunksum_bytes`` is set, answers 200 with
  ``Content-Location: <presigned CDN URL>`` and a line ``<sha256> <start>-<end>`` per range
  of the blob (inclusive, contiguous, covering it; the first range is half as long, so the
  ranges are not a fixed size), computed from the upstream blob; ``chunksums`` may replace
  a digest's body (a lie, garbage); otherwise the upstream's 404;
* with ``referrers_api`` set, the OCI referrers API: a manifest PUT with a ``subject`` is
  answered with ``OCI-Subject`` and listed at ``GET /v2/<repo>/referrers/<digest>``
  (filtered by ``artifactType``); without it, docker-registry's 404, as registries
  without the API answer.

Everything else is forwarded to the upstream registry: statuses, headers, bodies (streamed),
with absolute upstream ``Location`` headers rewritten to point at the front.

Both servers run in daemon threads of the test process. That is fine for clients in the test
process or in subprocesses, but not for a FUSE mount whose page faults the test process
triggers while holding the GIL (see proxy.py, which runs in its own process for that reason).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import secrets
import struct
import threading
import time
import urllib.parse
from collections import Counter
from typing import NamedTuple, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from support.httpserver import PIECE_BYTES, QuietHandler, Served, request_body

UPSTREAM_TIMEOUT = 60.0
EMPTY_BODY_CHECKSUM = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
PUSH_DENIED = "unauthorized: you are not authorized to push to this namespace"
DELETE_DENIED = "unauthorized: you are not authorized to delete in this namespace"
TOO_OLD = "this client is too old; please upgrade to the latest version"
# Hop-by-hop headers, and those BaseHTTPRequestHandler writes itself.
_NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "date", "server", "host"}
_REPO_PATH = re.compile(
    r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs|tags|chunksums|referrers)(?P<rest>/.*)?$"
)


# -- recorded requests ---------------------------------------------------------------------


def chunksums_body(entries: list[tuple[object, int, int]]) -> bytes:
    """A chunksums body as registry.ollama.ai sends it: one ``<digest> <start>-<end>`` line
    per ``(digest, start, end_inclusive)`` entry."""
    return b"".join(f"{d} {s}-{e}\n".encode() for d, s, e in entries)


class Headers(dict):
    """The request headers as sent (original case), looked up case-insensitively."""

    def _key(self, key: object) -> object:
        if isinstance(key, str):
            for k in dict.keys(self):
                if k.lower() == key.lower():
                    return k
        return key

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._key(key))

    def __getitem__(self, key: object) -> str:
        return dict.__getitem__(self, self._key(key))

    def get(self, key: object, default: object = None) -> object:  # type: ignore[override]
        return dict.get(self, self._key(key), default)


class _FrontRequest(NamedTuple):
    method: str
    path: str
    authorized: bool  # an Authorization header was present (valid or not)
    user_agent: str | None


class FrontRequest(_FrontRequest):
    """``(method, path, authorized, user_agent)``; ``.status`` is set once answered (0 before)."""

    status: int = 0


class TokenRequest(NamedTuple):
    path: str  # /token?<query exactly as sent>
    query: dict[str, str]
    authorization: str | None
    status: int
    granted: str | None  # the scope granted, e.g. "repository:alice/m:pull,push"; None if refused
    reason: str | None  # why it was refused


class CdnRequest(NamedTuple):
    method: str
    path: str  # /blobs/<digest>?expires=..&gen=..&sig=..
    headers: Headers


# -- helpers -------------------------------------------------------------------------------


def error_body(code: str, message: str, form: str = "list") -> bytes:
    """``{"errors":[{"code":..,"message":..}]}`` or, with ``form="single"``, ``{"code":..,"message":..}``."""
    one = {"code": code, "message": message}
    return json.dumps({"errors": [one]} if form == "list" else one).encode()


def parse_ssh_ed25519(pub_b64: str) -> Ed25519PublicKey:
    """The key from the base64 OpenSSH wire form (``string "ssh-ed25519"``, ``string key``)."""
    wire = base64.b64decode(pub_b64, validate=True)
    fields = []
    while wire:
        if len(wire) < 4:
            raise ValueError("truncated wire form")
        (n,) = struct.unpack(">I", wire[:4])
        if len(wire) < 4 + n:
            raise ValueError("truncated wire form")
        fields.append(wire[4 : 4 + n])
        wire = wire[4 + n :]
    if len(fields) != 2 or fields[0] != b"ssh-ed25519" or len(fields[1]) != 32:
        raise ValueError("not an ssh-ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(fields[1])


def _pub_field(pubkey: str) -> str:
    """Accept either the base64 wire form or a whole ``ssh-ed25519 AAAA... comment`` line."""
    pubkey = pubkey.strip()
    return pubkey.split()[1] if " " in pubkey else pubkey


class _Handler(QuietHandler):
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _discard_body(self) -> None:
        """Read and drop an unread request body so the connection can be reused."""
        pieces = request_body(self)
        if pieces is not None:
            for _ in pieces:
                pass

    def _relay(
        self,
        upstream: tuple[str, int],
        method: str,
        path: str,
        headers: dict[str, str],
        body: object = None,
        location_from: str | None = None,
        location_to: str | None = None,
    ) -> int:
        """Send the request upstream and stream its answer back; returns the status."""
        up = http.client.HTTPConnection(*upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            try:
                up.request(method, path, body=body, headers=headers)  # type: ignore[arg-type]
                resp = up.getresponse()
            except (OSError, http.client.HTTPException):
                self.close_connection = True
                self._send(502, b"upstream unreachable", {"Connection": "close"})
                return 502
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() in _NOT_FORWARDED:
                    continue
                if k.lower() == "location" and location_from and v.startswith(location_from):
                    v = location_to + v[len(location_from) :]  # type: ignore[operator]
                self.send_header(k, v)
            no_body = method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            if resp.getheader("Content-Length") is None and not no_body:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if no_body:
                return resp.status
            try:
                while piece := resp.read(PIECE_BYTES):
                    self.wfile.write(piece)
            except (OSError, http.client.HTTPException):
                self.close_connection = True
            return resp.status
        finally:
            up.close()


# -- the CDN -------------------------------------------------------------------------------


class CDN(Served):
    """Serves ``GET /blobs/<digest>?expires=..&gen=..&sig=..`` (with Range) from the upstream.

    Only URLs from ``presign`` work, until they expire or ``expire_all`` bumps the generation;
    anything else gets 403 with an S3-style XML body. The digest's bytes are ranged from the
    upstream registry's ``/v2/<repo>/blobs/<digest>``, the repository being the one the URL was
    presigned for. ``requests`` records every request (method, path, headers as sent).
    """

    def __init__(self, upstream_host: str) -> None:
        super().__init__(_CdnHandler, "fake-cdn")
        host, _, port = upstream_host.partition(":")
        self.upstream = (host, int(port or 80))
        self.generation = 0
        self.requests: list[CdnRequest] = []
        self._secret = secrets.token_bytes(32)
        self._repos: dict[str, str] = {}
        self._lock = threading.Lock()

    def expire_all(self) -> None:
        """Every URL handed out so far answers 403 from now on."""
        with self._lock:
            self.generation += 1

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def _sign(self, digest: str, expires: int, gen: int) -> str:
        msg = f"{digest}\n{expires}\n{gen}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def presign(self, digest: str, repo: str, ttl_seconds: float) -> str:
        """A URL for ``digest`` (served from upstream ``repo``) valid for ``ttl_seconds``."""
        expires = int(time.time() + ttl_seconds)
        with self._lock:
            self._repos[digest] = repo
            gen = self.generation
        query = urllib.parse.urlencode(
            {"expires": expires, "gen": gen, "sig": self._sign(digest, expires, gen)}
        )
        return f"{self.url}/blobs/{digest}?{query}"

    def _check(self, digest: str, query: dict[str, str]) -> tuple[str, str] | None:
        """None if the URL is good, else the S3 (code, message) to refuse it with."""
        try:
            expires, gen, sig = int(query["expires"]), int(query["gen"]), query["sig"]
        except (KeyError, ValueError):
            return "AccessDenied", "Query-string authentication requires the signature"
        if not hmac.compare_digest(sig, self._sign(digest, expires, gen)):
            return "SignatureDoesNotMatch", "The request signature we calculated does not match"
        with self._lock:
            current = self.generation
        if gen != current or expires < time.time():
            return "AccessDenied", "Request has expired"
        return None


def _s3_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{secrets.token_hex(8)}</RequestId></Error>"
    ).encode()


class _CdnHandler(_Handler):
    def _serve(self) -> None:
        cdn: CDN = self.server.owner  # type: ignore[assignment]
        with cdn._lock:
            cdn.requests.append(CdnRequest(self.command, self.path, Headers(self.headers.items())))
        xml = {"Content-Type": "application/xml"}
        parts = urllib.parse.urlsplit(self.path)
        m = re.fullmatch(r"/blobs/(sha256:[0-9a-f]{64})", parts.path)
        if m is None:
            return self._send(404, _s3_error("NoSuchKey", "The specified key does not exist."), xml)
        digest = m.group(1)
        refused = cdn._check(digest, dict(urllib.parse.parse_qsl(parts.query)))
        if refused is not None:
            return self._send(403, _s3_error(*refused), xml)
        with cdn._lock:
            repo = cdn._repos.get(digest)
        if repo is None:
            return self._send(404, _s3_error("NoSuchKey", "The specified key does not exist."), xml)
        # Only what a CDN would look at goes upstream: never the client's Authorization.
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("range", "if-range", "if-none-match", "if-match")
        }
        self._relay(cdn.upstream, self.command, f"/v2/{repo}/blobs/{digest}", headers)

    do_GET = do_HEAD = _serve


# -- the front -----------------------------------------------------------------------------


class _Token(NamedTuple):
    expires: float  # time.monotonic()
    pubkey: str
    grants: dict[str, frozenset[str]]  # repository (lowercase) -> actions


class OllamaFront(Served):
    """registry.ollama.ai's auth, redirects and 412s in front of a docker-registry.

    All keyword settings are plain attributes and may be changed while it runs.
    """

    def __init__(
        self,
        upstream_host: str,
        *,
        cdn: CDN | None = None,
        realm: str | None = None,
        service: str = "ollama.com",
        token_ttl_seconds: float = 300.0,
        cdn_ttl_seconds: float = 24 * 3600.0,
        max_skew_seconds: float = 300.0,
        reject_user_agent: str | None = None,
        error_form: str = "list",
        chunksum_bytes: int | None = None,
    ) -> None:
        super().__init__(_FrontHandler, "fake-ollama-front")
        self.chunksum_bytes = chunksum_bytes
        self.chunksums: dict[str, bytes] = {}  # digest -> the body to answer instead
        self.referrers_api = False
        self.referrers: dict[tuple[str, str], list[dict[str, object]]] = {}
        host, _, port = upstream_host.partition(":")
        self.upstream_host = upstream_host
        self.upstream = (host, int(port or 80))
        self._own_cdn = cdn is None
        self.cdn = cdn if cdn is not None else CDN(upstream_host)
        self._realm = realm
        self.service = service
        self.token_ttl_seconds = token_ttl_seconds
        self.cdn_ttl_seconds = cdn_ttl_seconds
        self.max_skew_seconds = max_skew_seconds
        self.reject_user_agent = reject_user_agent
        self.error_form = error_form
        self.requests: list[FrontRequest] = []
        self.token_requests: list[TokenRequest] = []
        self.redirects: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._push: dict[str, set[str]] = {}  # pubkey -> namespaces (lowercase)
        self._tokens: dict[str, _Token] = {}
        self._nonces: set[str] = set()

    # -- lifecycle and addresses

    @property
    def realm(self) -> str:
        """The token URL the challenges name (default ``http://<front host>/token``)."""
        return self._realm if self._realm is not None else f"{self.url}/token"

    @realm.setter
    def realm(self, value: str | None) -> None:
        self._realm = value

    def start(self) -> Self:
        if self._own_cdn:
            self.cdn.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._own_cdn:
            self.cdn.stop()

    # -- test controls

    def allow_push(self, pubkey: str, namespace: str) -> None:
        """Let this key (base64 wire form, or a whole ``ssh-ed25519 ...`` line) push/delete in ``namespace``."""
        with self.lock:
            self._push.setdefault(_pub_field(pubkey), set()).add(namespace.lower())

    def expire_tokens(self) -> None:
        """Every bearer token issued so far is expired from now on."""
        with self.lock:
            self._tokens.clear()

    def reset(self) -> None:
        """Forget the recorded requests and redirect counts (not keys, tokens or nonces)."""
        with self.lock:
            self.requests.clear()
            self.token_requests.clear()
            self.redirects.clear()

    # -- internals

    def _error(self, code: str, message: str) -> bytes:
        return error_body(code, message, self.error_form)

    def _may_push(self, pubkey: str, repo: str) -> bool:
        with self.lock:
            return repo.split("/", 1)[0].lower() in self._push.get(pubkey, set())

    def _issue(self, pubkey: str, scope: str) -> tuple[str, str]:
        """A token for what of ``scope`` this key may do; returns (token, granted scope)."""
        grants: dict[str, frozenset[str]] = {}
        granted = []
        for one in scope.split():
            kind, _, rest = one.partition(":")
            repo, _, actions = rest.rpartition(":")
            if kind != "repository" or not repo:
                continue
            wanted = {a.strip() for a in actions.split(",") if a.strip()}
            ok = {"pull"} & wanted
            if self._may_push(pubkey, repo):
                ok |= {"push", "delete", "*"} & wanted
            grants[repo.lower()] = grants.get(repo.lower(), frozenset()) | ok
            granted.append(f"repository:{repo}:{','.join(sorted(ok))}")
        token = secrets.token_urlsafe(32)
        with self.lock:
            self._tokens[token] = _Token(time.monotonic() + self.token_ttl_seconds, pubkey, grants)
        return token, " ".join(granted)

    def _verify_token_request(self, path: str, host: str, query: dict[str, str], auth: str) -> str:
        """The public key of a properly signed, fresh, first-use token request; else ValueError."""
        for name in ("nonce", "scope", "service", "ts"):
            if name not in query:
                raise ValueError(f"missing {name}")
        pub, sep, sig = auth.partition(":")
        if not sep:
            raise ValueError("malformed authorization")
        try:
            key = parse_ssh_ed25519(pub)
            signature = base64.b64decode(sig, validate=True)
        except ValueError as e:
            raise ValueError(f"malformed authorization: {e}") from None
        signed = f"GET,http://{host}{path},{EMPTY_BODY_CHECKSUM}".encode()
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            raise ValueError("invalid signature") from None
        try:
            ts = int(query["ts"])
        except ValueError:
            raise ValueError("malformed ts") from None
        if abs(time.time() - ts) > self.max_skew_seconds:
            raise ValueError("request timestamp is too far from the server's clock")
        with self.lock:
            if query["nonce"] in self._nonces:
                raise ValueError("nonce already used")
            self._nonces.add(query["nonce"])
        return pub


def _action_for(method: str) -> str:
    if method == "DELETE":
        return "delete"
    if method in ("GET", "HEAD"):
        return "pull"
    return "push,pull"


class _FrontHandler(_Handler):
    @property
    def front(self) -> OllamaFront:
        return self.server.owner  # type: ignore[return-value]

    def _serve(self) -> None:
        front = self.front
        record = FrontRequest(
            self.command,
            self.path,
            self.headers.get("Authorization") is not None,
            self.headers.get("User-Agent"),
        )
        with front.lock:
            front.requests.append(record)
        self._record = record
        self._answer()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before the client can see the answer, so tests never race the handler.
        record = getattr(self, "_record", None)
        if record is not None and not record.status:
            record.status = code
        super().send_response(code, message)

    def _fail(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> int:
        self._discard_body()
        self._send(
            status,
            self.front._error(code, message),
            {"Content-Type": "application/json", **(headers or {})},
        )
        return status

    def _answer(self) -> int:
        front = self.front
        pattern = front.reject_user_agent
        if pattern is not None and re.search(pattern, self.headers.get("User-Agent") or ""):
            return self._fail(412, "PRECONDITION_FAILED", TOO_OLD)
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/token" and self.command == "GET":
            return self._token(parts)
        if parts.path == "/v2" or parts.path == "/v2/":
            return self._v2(None, None, "")
        m = _REPO_PATH.match(parts.path)
        if m is None:
            return self._fail(404, "NOT_FOUND", "not found")
        return self._v2(m.group("repo"), m.group("kind"), m.group("rest") or "")

    def _token(self, parts: urllib.parse.SplitResult) -> int:
        front = self.front
        query = dict(urllib.parse.parse_qsl(parts.query))
        auth = self.headers.get("Authorization")

        def record(status: int, granted: str | None, reason: str | None) -> None:
            with front.lock:
                front.token_requests.append(
                    TokenRequest(self.path, query, auth, status, granted, reason)
                )

        try:
            if auth is None:
                raise ValueError("missing authorization")
            pub = front._verify_token_request(self.path, self.headers.get("Host", ""), query, auth)
        except ValueError as e:
            record(401, None, str(e))
            return self._fail(401, "UNAUTHORIZED", str(e))
        token, granted = front._issue(pub, query["scope"])
        record(200, granted, None)
        self._send(200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"})
        return 200

    def _challenge(self, repo: str | None, action: str, message: str) -> int:
        front = self.front
        value = f'Bearer realm="{front.realm}",service="{front.service}"'
        if repo is not None:
            value += f',scope="repository:{repo}:{action}"'
        return self._fail(401, "UNAUTHORIZED", message, {"WWW-Authenticate": value})

    def _v2(self, repo: str | None, kind: str | None, rest: str) -> int:
        front = self.front
        action = _action_for(self.command)
        auth = self.headers.get("Authorization") or ""
        token = None
        if auth.startswith("Bearer "):
            with front.lock:
                token = front._tokens.get(auth[len("Bearer ") :].strip())
            if token is not None and token.expires < time.monotonic():
                token = None
        if token is None:
            return self._challenge(repo, action, "authentication required")
        if repo is not None:
            granted = token.grants.get(repo.lower(), frozenset())
            needed = set(action.split(","))
            if not needed <= granted and "*" not in granted:
                if needed == {"pull"} or front._may_push(token.pubkey, repo):
                    # A token for another scope: the client asks again and is served.
                    return self._challenge(repo, action, "authentication required")
                denied = DELETE_DENIED if action == "delete" else PUSH_DENIED
                return self._challenge(repo, action, denied)
        if (
            self.command == "GET"
            and kind == "blobs"
            and re.fullmatch(r"/sha256:[0-9a-f]{64}", rest)
        ):
            return self._redirect_blob(repo, rest[1:])  # type: ignore[arg-type]
        if (
            self.command == "GET"
            and kind == "chunksums"
            and re.fullmatch(r"/sha256:[0-9a-f]{64}", rest)
            and (front.chunksum_bytes or rest[1:] in front.chunksums)
        ):
            return self._chunksums(repo, rest[1:])  # type: ignore[arg-type]
        if front.referrers_api and kind == "referrers" and self.command == "GET":
            return self._referrers(repo, rest[1:])  # type: ignore[arg-type]
        if front.referrers_api and kind == "manifests" and self.command == "PUT":
            return self._put_manifest(repo)  # type: ignore[arg-type]
        return self._forward()

    def _referrers(self, repo: str, digest: str) -> int:
        front = self.front
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        wanted = query.get("artifactType", [None])[0]
        with front.lock:
            listed = list(front.referrers.get((repo.lower(), digest), []))
        if wanted is not None:
            listed = [d for d in listed if d.get("artifactType") == wanted]
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": listed,
            }
        ).encode()
        headers = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
        if wanted is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        self._send(200, body, headers)
        return 200

    def _put_manifest(self, repo: str) -> int:
        front = self.front
        body = b"".join(request_body(self) or [])
        up = http.client.HTTPConnection(*front.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            content_type = self.headers.get("Content-Type") or ""
            up.request("PUT", self.path, body=body, headers={"Content-Type": content_type})
            resp = up.getresponse()
            answer = resp.read()
            headers = {
                k: v.replace(f"http://{front.upstream_host}", front.url)
                for k, v in resp.getheaders()
                if k.lower() not in _NOT_FORWARDED | {"content-length"}
            }
        finally:
            up.close()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if resp.status == 201 and isinstance(subject, dict) and "digest" in subject:
            entry = {
                "mediaType": doc.get("mediaType"),  # type: ignore[union-attr]
                "digest": f"sha256:{hashlib.sha256(body).hexdigest()}",
                "size": len(body),
                "artifactType": doc.get("artifactType"),  # type: ignore[union-attr]
            }
            with front.lock:
                front.referrers.setdefault((repo.lower(), str(subject["digest"])), []).append(entry)
            headers["OCI-Subject"] = str(subject["digest"])
        self._send(resp.status, answer, headers)
        return resp.status

    def _chunksums(self, repo: str, digest: str) -> int:
        front = self.front
        body = front.chunksums.get(digest)
        if body is None:
            up = http.client.HTTPConnection(*front.upstream, timeout=UPSTREAM_TIMEOUT)
            try:
                up.request("GET", f"/v2/{repo}/blobs/{digest}")
                resp = up.getresponse()
                if resp.status != 200:
                    return self._fail(404, "BLOB_UNKNOWN", "blob unknown to registry")
                entries, start, step = [], 0, max(1, front.chunksum_bytes // 2)  # type: ignore[operator]
                while piece := resp.read(step):
                    end = start + len(piece)
                    entries.append((f"sha256:{hashlib.sha256(piece).hexdigest()}", start, end - 1))
                    start, step = end, front.chunksum_bytes
            finally:
                up.close()
            body = chunksums_body(entries)
        location = front.cdn.presign(digest, repo, front.cdn_ttl_seconds)
        self._send(200, body, {"Content-Location": location, "Content-Type": "text/plain"})
        return 200

    def _forward(self) -> int:
        front = self.front
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in _NOT_FORWARDED | {"authorization", "content-length", "expect"}
        }
        body = request_body(self)
        if body is not None and self.headers.get("Content-Length"):
            headers["Content-Length"] = self.headers["Content-Length"]
        return self._relay(
            front.upstream,
            self.command,
            self.path,
            headers,
            body,
            location_from=f"http://{front.upstream_host}",
            location_to=front.url,
        )

    def _redirect_blob(self, repo: str, digest: str) -> int:
        front = self.front
        up = http.client.HTTPConnection(*front.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            up.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            status = up.getresponse().status
        except (OSError, http.client.HTTPException):
            status = 502
        finally:
            up.close()
        if status != 200:
            # Let the registry say why (BLOB_UNKNOWN, NAME_UNKNOWN, ...).
            return self._forward()
        location = front.cdn.presign(digest, repo, front.cdn_ttl_seconds)
        with front.lock:
            front.redirects[digest] += 1
        self._send(307, b"", {"Location": location})
        return 307
