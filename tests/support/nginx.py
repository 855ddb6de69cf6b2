"""nginx running the shipped read mirror (mirror/nginx.conf) on loopback, for tests.

    mirror = NginxMirror(tmp_path / "nginx", origin="127.0.0.1:5000").start()
    ... GET {mirror.url}/v2/<name>/blobs/<digest> ...
    mirror.problems()      # error-log lines at [error] or worse
    mirror.stop()          # master and workers gone; the prefix holds the logs and the cache

The config is the file in the repository, its ``${NAME}`` placeholders filled in (``render``):
nginx runs as root with ``-p <root>``, ``daemon off``, workers as root (the test's temp
directories are not open to ``nobody``), logs in ``<root>/logs``. Debian's nginx package has
the slice module compiled in; ``nginx_binary`` says how to get it when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from support.registry import free_port

MIRROR_CONF = Path(__file__).resolve().parents[2] / "mirror" / "nginx.conf"
START_SECONDS = 20.0
STOP_SECONDS = 10.0
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")
# Error-log levels a test should hear about.
_PROBLEM = re.compile(r"\[(error|crit|alert|emerg)\]")


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if found is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx; bash scripts/setup.sh)")
    return found


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with every ``${NAME}`` replaced; a placeholder without a value is an error,
    as is a value no placeholder uses (a renamed placeholder would go unnoticed otherwise)."""
    used: set[str] = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"mirror/nginx.conf needs a value for ${{{name}}}")
        used.add(name)
        return values[name]

    out = _PLACEHOLDER.sub(fill, template)
    unused = set(values) - used
    if unused:
        raise KeyError(f"mirror/nginx.conf has no placeholder {sorted(unused)}")
    return out


class NginxMirror:
    """The shipped mirror config in front of ``origin`` (host:port), under ``root``."""

    def __init__(
        self,
        root: Path,
        origin: str,
        *,
        origin_scheme: str = "http",
        cache_max: str = "1g",
        resolver: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.origin = origin
        self.origin_scheme = origin_scheme
        self.cache_max = cache_max
        self.resolver = resolver
        self.port = free_port()
        self.fetch_port = free_port()
        self.conf = root / "nginx.conf"
        self.error_log = root / "logs" / "error.log"
        self.access_log = root / "logs" / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def values(self) -> dict[str, str]:
        return {
            "LISTEN": self.host,
            "FETCH": f"127.0.0.1:{self.fetch_port}",
            "WORKER_USER": "root",
            "CACHE_MAX": self.cache_max,
            "ORIGIN": self.origin,
            "ORIGIN_HOST": self.origin.rpartition(":")[0] or self.origin,
            "ORIGIN_SCHEME": self.origin_scheme,
            "RESOLVER": self.resolver,
        }

    def start(self) -> NginxMirror:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render(MIRROR_CONF.read_text(), self.values()))
        pid_file = self.root / "nginx.pid"
        self.proc = subprocess.Popen(
            [
                nginx_binary(),
                "-p",
                f"{self.root}/",
                "-e",
                "logs/error.log",
                "-c",
                str(self.conf),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: stop() can reach the workers if the master will not stop.
            start_new_session=True,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"nginx exited: {self.errors()[-2000:]}")
            # The pid file is written once the config is read and the sockets are bound.
            if pid_file.exists():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start in time: {self.errors()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM (the master stops its workers and waits for them), then whatever is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                # Its workers would outlive a killed master: the whole group goes.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def problems(self, *expected: str) -> list[str]:
        """Error-log lines at [error] or worse that match none of ``expected`` (regexes)."""
        return [
            line
            for line in self.errors().splitlines()
            if _PROBLEM.search(line) and not any(re.search(e, line) for e in expected)
        ]

    def cached_files(self) -> list[Path]:
        return [p for p in self.cache_dir.rglob("*") if p.is_file()]
