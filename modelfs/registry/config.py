"""The configuration file: per-registry settings and mirrors (``~/.config/modelfs/config.toml``).

```toml
ca_file = "/etc/ssl/certs/company-ca.pem"   # extra CA for every registry (else the system store)
key = "/root/.ollama/id_ed25519"            # the Ollama key (default ~/.ollama/id_ed25519)
cache_max = "200G"                          # mounts keep the cache within these bounds
min_free = "10%"                            # (-o cache_max=, -o min_free= win over them)

[[registry]]
host = "registry.lan:5000"
insecure = true          # plain http
[[registry]]
host = "127.0.0.1:5443"
tls = true               # https, although loopback hosts default to http

[[mirror]]               # reads of registry.ollama.ai try these in order, then the origin
host = "registry.ollama.ai"
endpoints = ["http://mirror.lan:5000"]
credentials = "origin"   # send these mirrors what registry.ollama.ai gets (default "mirror")
```

``credentials``: whose credentials requests to the mirror carry, for reads of that host (a
mirror listed for two hosts gets the first one's credentials only if its own entry says so). ``"mirror"`` (the default): the
mirror's own (stored under its ``host:port``), as for any host. ``"origin"``: the origin's (its
stored login, a token from its realm, the Ollama key's signature for a realm on the origin's
host; the login goes with a token request only to a realm on the origin's own host name, since
the mirror names it): for a mirror that passes requests and challenges through to the origin (mirror/README.md),
which is then trusted with the origin's tokens.

``MODELFS_CONFIG`` names another file. A missing file is an empty configuration; a file
that does not parse is a one-line error naming it. A mount reads it again on SIGHUP
(``systemctl reload``): registries, mirrors, the key, credentials and cache bounds.
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from modelfs.errors import UsageError


@dataclass(frozen=True)
class FileConfig:
    path: Path | None = None
    ca_file: str | None = None
    key: str | None = None
    insecure_hosts: tuple[str, ...] = ()
    tls_hosts: tuple[str, ...] = ()
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # (host, mirror base URL) pairs whose reads carry the host's credentials
    # (``credentials = "origin"``): the same endpoint listed for another host does not.
    origin_credentials: frozenset[tuple[str, str]] = frozenset()
    # Cache bounds as written ("200G", "10%"); a mount parses them (blobs.eviction.parse_size).
    cache_max: str | None = None
    min_free: str | None = None


def config_path() -> Path:
    env = os.environ.get("MODELFS_CONFIG")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "modelfs" / "config.toml"


def _expand(value: str, base: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)


def load_config(path: Path | None = None) -> FileConfig:
    path = path or config_path()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return FileConfig()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the configuration {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"the configuration {path} is not valid TOML: {e}") from None

    def bad(why: str) -> UsageError:
        return UsageError(f"the configuration {path}: {why}")

    known = {"ca_file", "key", "registry", "mirror", "cache_max", "min_free"}
    unknown = set(doc) - known
    if unknown:
        raise bad(f"unknown setting {sorted(unknown)[0]!r}")
    ca_file = doc.get("ca_file")
    key = doc.get("key")
    for label, value in (("ca_file", ca_file), ("key", key)):
        if value is not None and not isinstance(value, str):
            raise bad(f"{label} must be a path")
    bounds = {}
    for label in ("cache_max", "min_free"):
        value = doc.get(label)
        if value is not None and not isinstance(value, str | int):
            raise bad(f'{label} must be a size such as "200G"')
        bounds[label] = str(value) if value is not None else None
    insecure: list[str] = []
    tls: list[str] = []
    registries = doc.get("registry", [])
    if not isinstance(registries, list):
        raise bad("[[registry]] must be an array of tables")
    for entry in registries:
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
            raise bad('each [[registry]] needs host = "name[:port]"')
        extra = set(entry) - {"host", "insecure", "tls"}
        if extra:
            raise bad(f"unknown [[registry]] setting {sorted(extra)[0]!r}")
        for flag in ("insecure", "tls"):
            # insecure = "false" is truthy: it must not switch a registry to plain http.
            if not isinstance(entry.get(flag, False), bool):
                raise bad(f"registry {entry['host']}: {flag} must be true or false")
        if entry.get("insecure") and entry.get("tls"):
            raise bad(f"registry {entry['host']} cannot be both insecure and tls")
        if entry.get("insecure"):
            insecure.append(entry["host"])
        if entry.get("tls"):
            tls.append(entry["host"])
    mirrors: dict[str, tuple[str, ...]] = {}
    origin_credentials: set[tuple[str, str]] = set()
    entries = doc.get("mirror", [])
    if not isinstance(entries, list):
        raise bad("[[mirror]] must be an array of tables")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
            raise bad('each [[mirror]] needs host = "name[:port]"')
        extra = set(entry) - {"host", "endpoints", "credentials"}
        if extra:
            raise bad(f"unknown [[mirror]] setting {sorted(extra)[0]!r}")
        credentials = entry.get("credentials", "mirror")
        if credentials not in ("mirror", "origin"):
            raise bad(f'mirror of {entry["host"]}: credentials must be "mirror" or "origin"')
        endpoints = entry.get("endpoints")
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise bad(f"mirror of {entry['host']}: endpoints must be a list of URLs")
        for e in endpoints:
            parts = urllib.parse.urlsplit(e)
            if "@" in parts.netloc:
                # Not repeated: the URL would carry its password into messages and logs.
                where = parts.netloc.rpartition("@")[2]
                raise bad(
                    f"mirror of {entry['host']}: an endpoint of {where} holds credentials in "
                    f"its URL; store them with `modelfs login {where}` instead"
                )
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise bad(f"mirror of {entry['host']}: {e!r} is not an http(s) URL")
        host = entry["host"].lower()
        mirrors[host] = (*mirrors.get(host, ()), *(e.rstrip("/") for e in endpoints))
        if credentials == "origin":
            origin_credentials.update((host, e.rstrip("/")) for e in endpoints)
    return FileConfig(
        path=path,
        ca_file=_expand(ca_file, path.parent) if ca_file else None,
        key=_expand(key, path.parent) if key else None,
        insecure_hosts=tuple(insecure),
        tls_hosts=tuple(tls),
        mirrors=mirrors,
        origin_credentials=frozenset(origin_credentials),
        **bounds,
    )
