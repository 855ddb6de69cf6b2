"""A real Docker registry (Debian's docker-registry, distribution 2.8) on a free loopback port.

By default: plain HTTP, no auth, its own storage. Options (keyword-only) turn on what a
production registry has:

    RegistryProcess(root, htpasswd=HtpasswdAuth({"alice": "secret"}))   # Basic auth (bcrypt)
    RegistryProcess(root, token=issuer.registry_auth())                   # Bearer tokens
    RegistryProcess(root, tls=generate_tls(root / "tls"))                 # https://
    RegistryProcess(root, pull_through=PullThrough("http://127.0.0.1:5000"))  # a mirror

With auth on, readiness is ``GET /v2/`` answering 401; with TLS the probe trusts ``tls.ca_cert``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from support.tls import TLSMaterial

START_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_binary() -> str:
    found = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None
    )
    if found is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    return found


def htpasswd_binary() -> str:
    found = shutil.which("htpasswd")
    if found is None:
        raise RuntimeError("htpasswd is not installed (apt-get install apache2-utils)")
    return found


def write_htpasswd(path: Path, users: Mapping[str, str]) -> None:
    """An htpasswd file with bcrypt entries: distribution 2.8 accepts no other hash."""
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            # -B bcrypt, -b password from the command line, -n print; cost 5 keeps it fast.
            [htpasswd_binary(), "-Bbn", "-C", "5", user, password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        lines.append(out.strip())
    path.write_text("".join(line + "\n" for line in lines))


@dataclass(frozen=True)
class HtpasswdAuth:
    """Basic auth against an htpasswd file the registry process writes from ``users``."""

    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "secret"})
    realm: str = "modelfs-test"


@dataclass(frozen=True)
class TokenAuth:
    """Bearer token auth (``TokenIssuer.registry_auth()`` makes one that matches the issuer)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(frozen=True)
class PullThrough:
    """Run as a pull-through cache (mirror) of ``remoteurl``.

    ``ca_cert``: the CA the mirror trusts for an https remote (passed as ``SSL_CERT_FILE``).
    distribution 2.8 hands ``username``/``password`` only to Bearer realms it found on the
    remote's ``/v2/`` at start-up: a remote with Basic (htpasswd) auth is never sent them, and
    the remote must be up before the mirror starts.
    """

    remoteurl: str
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None


class RegistryProcess:
    """``docker-registry serve`` with its own storage; ``stop`` and ``start`` again keep the data."""

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        *,
        htpasswd: HtpasswdAuth | None = None,
        token: TokenAuth | None = None,
        tls: TLSMaterial | None = None,
        pull_through: PullThrough | None = None,
        log_level: str = "warn",
        delete_enabled: bool = True,
    ) -> None:
        if htpasswd is not None and token is not None:
            raise ValueError("distribution runs one access controller: htpasswd or token")
        self.root = root
        self.port = port or free_port()
        self.storage = root / "storage"
        self.config = root / "config.yml"
        self.log_path = root / "registry.log"
        self.htpasswd_path = root / "htpasswd"
        self.htpasswd = htpasswd
        self.token = token
        self.tls = tls
        self.pull_through = pull_through
        self.log_level = log_level
        self.delete_enabled = delete_enabled
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def auth_enabled(self) -> bool:
        return self.htpasswd is not None or self.token is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _settings(self) -> dict[str, object]:
        http_section: dict[str, object] = {"addr": f"127.0.0.1:{self.port}"}
        if self.tls is not None:
            http_section["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        settings: dict[str, object] = {
            "version": "0.1",
            "log": {"level": self.log_level, "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": self.delete_enabled},
            },
            "http": http_section,
        }
        if self.htpasswd is not None:
            settings["auth"] = {
                "htpasswd": {"realm": self.htpasswd.realm, "path": str(self.htpasswd_path)}
            }
        if self.token is not None:
            settings["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.rootcertbundle),
                }
            }
        if self.pull_through is not None:
            proxy: dict[str, str] = {"remoteurl": self.pull_through.remoteurl}
            if self.pull_through.username is not None:
                proxy["username"] = self.pull_through.username
            if self.pull_through.password is not None:
                proxy["password"] = self.pull_through.password
            settings["proxy"] = proxy
        return settings

    def _connection(self) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=1, context=context)

    def start(self) -> RegistryProcess:
        self.storage.mkdir(parents=True, exist_ok=True)
        if self.htpasswd is not None:
            write_htpasswd(self.htpasswd_path, self.htpasswd.users)
        # YAML is a superset of JSON: one JSON object per top-level key quotes every path.
        self.config.write_text(
            "".join(f"{key}: {json.dumps(value)}\n" for key, value in self._settings().items())
        )
        env = None
        if self.pull_through is not None and self.pull_through.ca_cert is not None:
            env = {**os.environ, "SSL_CERT_FILE": str(self.pull_through.ca_cert)}
        log = open(self.log_path, "ab")  # noqa: SIM115 — closed with the process
        self.proc = subprocess.Popen(
            [registry_binary(), "serve", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        ready = {200, 401} if self.auth_enabled else {200}
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"docker-registry exited: {self.log()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = self._connection()
                try:
                    conn.request("GET", "/v2/")
                    response = conn.getresponse()
                    response.read()
                    if response.status in ready:
                        return self
                finally:
                    conn.close()
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def image_manifest(config: bytes, layer: bytes) -> bytes:
    """A Docker schema 2 manifest of ``config`` and one (gzip tar) ``layer``."""

    def digest_of(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": digest_of(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": digest_of(layer),
                }
            ],
        }
    ).encode()
