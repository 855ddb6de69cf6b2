"""A token issuer for docker-registry's token auth (the Docker registry token spec), on loopback.

    issuer = TokenIssuer(tmp_path / "issuer").start()
    reg = RegistryProcess(tmp_path / "reg", token=issuer.registry_auth()).start()
    # GET {issuer.realm}?service=...&scope=repository:library/x:pull,push  (Basic alice:secret)
    token = issuer.fetch("repository:library/x:pull,push", user="alice", password="secret")
    ...
    issuer.stop()

Users and passwords are ``users``; what each may do is ``policy``: user → {repository pattern
(fnmatch, ``*`` matches ``/`` too) → actions}, where the action ``*`` grants whatever is asked.
A token grants, for each requested scope, the requested actions the policy allows (scopes with
none granted are left out, as the spec says: a token with less access, not a refusal). Wrong
credentials → 401; no credentials → anonymous, allowed only when ``anonymous_policy`` is not
None. ``refuse_status`` (e.g. 401, 403, 503) makes every request fail with that status.

The JWT is ES256, signed by a self-signed certificate whose PEM is ``cert_path`` (the registry's
``rootcertbundle``) and which rides in the header's ``x5c``: distribution 2.8 looks the key up
by ``x5c`` first, so no libtrust ``kid`` is needed.

distribution 2.8 allows 60 s of clock skew on ``exp`` and ``nbf``: a token 2 s past its
``exp`` is still accepted. ``claims_offset`` (seconds added to iat/nbf/exp in the JWT only, not
to the JSON's ``issued_at``/``expires_in``) makes tokens the registry refuses while the client
believes them fresh, e.g. ``claims_offset=-120`` with ``expires_in=30``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from support.httpserver import StoppableServer
from support.registry import TokenAuth
from support.tls import TLSMaterial, self_signed

DEFAULT_USERS: Mapping[str, str] = {"alice": "secret", "bob": "hunter2"}
DEFAULT_POLICY: Mapping[str, Mapping[str, Sequence[str]]] = {
    "alice": {"*": ["*"]},
    "bob": {"library/*": ["pull"]},
}
DEFAULT_SERVICE = "modelfs-test-registry"
DEFAULT_ISSUER = "modelfs-test-issuer"


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: bool  # an Authorization header was sent
    user: str | None  # the Basic user name sent, right or wrong
    status: int

    @property
    def scopes(self) -> list[str]:
        return self.query.get("scope", [])

    @property
    def service(self) -> str | None:
        return self.query.get("service", [None])[0]


@dataclass(frozen=True)
class Access:
    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(scope: str) -> Access | None:
    """``repository:ns/model:pull,push`` → Access; the name may hold ':' (a port), type and
    actions may not."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return Access(kind, name, tuple(a for a in actions.split(",") if a))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        policy: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        anonymous_policy: Mapping[str, Sequence[str]] | None = None,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        expires_in: int = 300,
        claims_offset: float = 0.0,
        tls: TLSMaterial | None = None,
    ) -> None:
        self.directory = directory
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.policy = {
            u: dict(p) for u, p in (DEFAULT_POLICY if policy is None else policy).items()
        }
        # These may be changed while the issuer runs; the next request sees the new value.
        self.anonymous_policy = anonymous_policy
        self.expires_in = expires_in
        self.claims_offset = claims_offset
        self.refuse_status: int | None = None
        self.service = service
        self.issuer = issuer
        self.tls = tls
        self.cert_path = directory / "token-signer.pem"
        self._key = ec.generate_private_key(ec.SECP256R1())
        cert = self_signed(self._key, "modelfs test token signer", ca=True)
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._server: StoppableServer | None = None

    # -- addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the token issuer is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_auth(self) -> TokenAuth:
        """The ``auth: token`` settings for a RegistryProcess that trusts this issuer."""
        return TokenAuth(
            realm=self.realm,
            service=self.service,
            issuer=self.issuer,
            rootcertbundle=self.cert_path,
        )

    # -- lifecycle

    def start(self) -> TokenIssuer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert_pem)
        server = StoppableServer(_handler(self))
        if self.tls is not None:
            server.socket = self.tls.server_context().wrap_socket(server.socket, server_side=True)
        self._server = server.start("token-issuer")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- records

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- tokens

    def grant(self, user: str | None, scopes: Sequence[str]) -> list[Access]:
        """What ``user`` (None: anonymous) gets of ``scopes``."""
        rules = self.anonymous_policy if user is None else self.policy.get(user, {})
        granted: list[Access] = []
        for scope in scopes:
            wanted = parse_scope(scope)
            if wanted is None or rules is None:
                continue
            allowed: set[str] = set()
            for pattern, actions in rules.items():
                if fnmatch.fnmatchcase(wanted.name, pattern):
                    allowed.update(actions)
            actions = tuple(a for a in wanted.actions if a in allowed or "*" in allowed)
            if actions:
                granted.append(Access(wanted.type, wanted.name, actions))
        return granted

    def mint(
        self,
        subject: str,
        access: Sequence[Access],
        *,
        service: str | None = None,
        expires_in: int | None = None,
        claims_offset: float | None = None,
        issuer: str | None = None,
    ) -> str:
        """A signed JWT, without going through HTTP (for tokens a test crafts)."""
        offset = self.claims_offset if claims_offset is None else claims_offset
        now = int(time.time() + offset)
        claims = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            "aud": self.service if service is None else service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [a.claim() for a in access],
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS wants r || s, 32 bytes each, not the DER that cryptography returns.
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def fetch(
        self,
        *scopes: str,
        user: str | None = None,
        password: str | None = None,
        service: str | None = None,
    ) -> str:
        """Ask the running issuer over HTTP, as a client would; returns the token."""
        params = [("service", self.service if service is None else service)]
        params += [("scope", s) for s in scopes]
        auth = (user, password or "") if user is not None else None
        verify: ssl.SSLContext | bool = self.tls.ssl_context() if self.tls is not None else True
        with httpx.Client(verify=verify) as client:
            response = client.get(self.realm, params=params, auth=auth)
        response.raise_for_status()
        return response.json()["token"]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parsed.query)
        header = handler.headers.get("Authorization")
        user: str | None = None
        password: str | None = None
        bad_header = False
        if header is not None:
            kind, _, value = header.partition(" ")
            if kind.lower() == "basic":
                try:
                    user, _, password = (
                        base64.b64decode(value, validate=True).decode().partition(":")
                    )
                except (binascii.Error, UnicodeDecodeError):
                    bad_header = True
            else:
                bad_header = True

        def reply(status: int, body: dict[str, object], challenge: bool = False) -> None:
            self._record(TokenRequest("GET", parsed.path, query, header is not None, user, status))
            data = json.dumps(body).encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            if challenge:
                handler.send_header("WWW-Authenticate", 'Basic realm="modelfs-test-issuer"')
            handler.end_headers()
            handler.wfile.write(data)

        def error(status: int, code: str, message: str) -> None:
            reply(status, {"errors": [{"code": code, "message": message}]}, status == 401)

        if self.refuse_status is not None:
            return error(self.refuse_status, "DENIED", "the issuer refuses every request")
        if parsed.path != "/token":
            return error(404, "NOT_FOUND", "no such endpoint")
        if bad_header:
            return error(401, "UNAUTHORIZED", "unreadable Authorization header")
        if user is not None:
            if self.users.get(user) != password:
                return error(401, "UNAUTHORIZED", "wrong user name or password")
        elif self.anonymous_policy is None:
            return error(401, "UNAUTHORIZED", "credentials required")
        service = query.get("service", [self.service])[0]
        access = self.grant(user, query.get("scope", []))
        token = self.mint(user or "", access, service=service)
        issued = datetime.datetime.fromtimestamp(time.time(), datetime.UTC)
        reply(
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": issued.isoformat(timespec="seconds").replace("+00:00", "Z"),
            },
        )


def _handler(issuer: TokenIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so no handler thread outlives stop() for long.
        def do_GET(self) -> None:
            issuer._answer(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
