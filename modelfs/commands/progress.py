"""Progress lines for ``push`` and ``pull`` on stderr.

On a terminal one line per blob is redrawn in place; otherwise (a log, CI) a
line is printed when a blob starts and when it ends, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_SECONDS = 0.2


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    def __init__(self, verb: str, stream: TextIO | None = None) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last_draw = 0.0
        self._started: dict[str, float] = {}
        self._open_line = False

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            self._open_line = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, key: str, total: int) -> None:
        self._started[key] = time.monotonic()
        if not self.tty:
            self._write(f"{self.verb} {key} {human_bytes(total)}", True)

    def update(self, key: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        pct = 100 * done / total if total else 100
        self._write(
            f"{self.verb} {key} {pct:5.1f}% ({human_bytes(done)}/{human_bytes(total)})", False
        )

    def done(self, key: str, total: int, note: str = "") -> None:
        seconds = time.monotonic() - self._started.pop(key, time.monotonic())
        rate = f", {human_bytes(total / seconds)}/s" if seconds > 0.05 and total else ""
        extra = f" ({note})" if note else ""
        self._write(f"{self.verb} {key} {human_bytes(total)} done{extra}{rate}", True)

    def skip(self, key: str, total: int, why: str) -> None:
        self._write(f"{self.verb} {key} {human_bytes(total)} skipped: {why}", True)

    def message(self, text: str) -> None:
        self._write(text, True)
