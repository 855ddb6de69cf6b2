"""What a registry client is told (``RegistryConfig``): which hosts speak plain http or https,
the CA to trust, the Ollama key and Docker credentials file, mirrors and whose credentials
they get, the timeouts, and the User-Agent it sends. The configuration file that most of it
comes from is ``config``'s.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from modelfs import __version__

CONNECT_SECONDS = 5.0
# A blob request that delivers less than MIN_BYTES_PER_SECOND over STALL_SECONDS is stalled:
# dropped and retried on a fresh connection. Catches silence and a trickle, lets slow links through.
STALL_SECONDS = 30.0
MIN_BYTES_PER_SECOND = 64 << 10
# A control request (manifest, token) that has not answered whole in this long is a failure.
CONTROL_SECONDS = 30.0


def _user_agent() -> str:
    # Ollama's form: ollama/<version> (<arch> <os>) Go/<version>.
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    py = ".".join(str(v) for v in sys.version_info[:3])
    return f"modelfs/{__version__} ({arch} {platform.system().lower()}) Python/{py}"


USER_AGENT = _user_agent()


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
