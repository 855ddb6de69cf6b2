"""Progress lines for ``push``, ``pull`` and ``index`` on stderr.

On a terminal one line per blob is redrawn in place, a bar with the size, the rate and the
time left; otherwise (a log, CI) a line is printed when a blob starts and when it ends, so
logs stay short.
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


BAR_CELLS = 20


def bar(done: int, total: int, seconds: float) -> str:
    """``[#####.....]  42.0%  420.0 MB/1.0 GB  120.0 MB/s  5s left`` (rate and time left once
    there is something to go by)."""
    frac = done / total if total else 1.0
    cells = min(BAR_CELLS, int(frac * BAR_CELLS))
    text = (
        f"[{'#' * cells}{'.' * (BAR_CELLS - cells)}] {100 * frac:5.1f}% "
        f"{human_bytes(done)}/{human_bytes(total)}"
    )
    if seconds > 0.05 and done > 0:
        rate = done / seconds
        text += f"  {human_bytes(rate)}/s  {human_seconds((total - done) / rate)} left"
    return text


def human_seconds(s: float) -> str:
    s = max(0, int(s + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


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
        self._write(
            f"{self.verb} {key} {bar(done, total, now - self._started.get(key, now))}", False
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

    def end(self) -> None:
        """End a bar left open (Ctrl-C), so a message after it starts on a line of its own."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
