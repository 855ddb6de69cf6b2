"""Progress of ``push``, ``pull`` and ``index`` on stderr; their result on stdout.

On a terminal one line is redrawn in place, cut to the terminal's width (a longer line
wraps, and each redraw would leave a copy of it in the scrollback): what is moving, a
bar, the bytes, the rate over the last ``RATE_WINDOW_SECONDS`` and the time left at that
rate. Otherwise (a pipe, a log, CI) a plain line when a blob starts, now and then while
it moves (each ``LOG_PERCENT_STEP`` percent, or ``LOG_EVERY_SECONDS`` without one) and
when it ends, so a log shows that something is happening and stays short.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

REDRAW_SECONDS = 0.2
# The rate is that of the last seconds: a link that slows down shows it, and the time left
# follows, instead of an average since the start that keeps promising minutes gone by.
RATE_WINDOW_SECONDS = 5.0
RATE_MIN_SPAN_SECONDS = 1.0  # less to go by says nothing about the link
LOG_EVERY_SECONDS = 10.0
LOG_PERCENT_STEP = 10
DEFAULT_COLUMNS = 80
BAR_CELLS = 20
BAR_MIN_CELLS = 5


def human_bytes(n: float) -> str:
    """Decimal units, as docker and ollama print them: 1 MB is 1,000,000 bytes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    s = max(0, int(s + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def _figures(done: int, total: int, rate: float | None) -> list[str]:
    """``42.0%``, ``420.0 MB/1.0 GB``, then the rate and the time left if there is a rate."""
    frac = min(1.0, done / total) if total else 1.0
    out = [f"{100 * frac:5.1f}%", f"{human_bytes(done)}/{human_bytes(total)}"]
    if rate is not None:
        out.append(f"{human_bytes(rate)}/s")
        if rate > 0:
            out.append(f"{human_seconds((total - done) / rate)} left")
    return out


def _cells(done: int, total: int, cells: int) -> str:
    frac = min(1.0, done / total) if total else 1.0
    filled = min(cells, int(frac * cells))
    return f"[{'#' * filled}{'.' * (cells - filled)}]"


def bar(done: int, total: int, rate: float | None, cells: int = BAR_CELLS) -> str:
    """``[#####.....]  42.0% 420.0 MB/1.0 GB  120.0 MB/s  5s left``; the rate and the time
    left once there is a rate to go by (``rate`` None: not yet)."""
    pct, sizes, *more = _figures(done, total, rate)
    return "  ".join([f"{_cells(done, total, cells)} {pct} {sizes}", *more])


def fit(head: str, done: int, total: int, rate: float | None, columns: int) -> str:
    """The progress line in fewer than ``columns`` columns (the last column stays empty:
    some terminals wrap on it): a shorter bar, then none, then the total left out, then
    the line cut."""
    room = columns - 1
    pct, sizes, *more = _figures(done, total, rate)
    figures = "  ".join([f"{pct} {sizes}", *more])
    spare = room - len(head) - len(figures) - 4  # " [" "] "
    if spare >= BAR_MIN_CELLS:
        return f"{head} {_cells(done, total, min(BAR_CELLS, spare))} {figures}"
    for line in (
        f"{head} {figures.lstrip()}",
        " ".join([head, pct.lstrip(), sizes, *more]),
        " ".join([head, pct.lstrip(), human_bytes(done), *more]),
    ):
        if len(line) <= room:
            return line
    return line[:room]


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` is (asked each time: it may be resized)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_COLUMNS
    except (OSError, ValueError, AttributeError):
        try:
            return int(os.environ.get("COLUMNS", "")) or DEFAULT_COLUMNS
        except ValueError:
            return DEFAULT_COLUMNS


@dataclass
class _Transfer:
    total: int
    started: float
    done: int = 0
    logged_at: float = 0.0
    logged_step: int = 0


@dataclass
class RateWindow:
    """Bytes per second over the last ``seconds``, from samples of a growing byte count."""

    seconds: float = RATE_WINDOW_SECONDS
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def add(self, now: float, moved: int) -> None:
        self.samples.append((now, moved))
        # Keep one sample older than the window: the rate then spans all of it.
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.seconds:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        if len(self.samples) < 2:
            return None
        t0, m0 = self.samples[0]
        m1 = self.samples[-1][1]
        span = now - t0
        if span < RATE_MIN_SPAN_SECONDS:
            return None
        return (m1 - m0) / span


class Progress:
    """What a command moves, shown as it moves; ``result`` is the command's answer (stdout)."""

    def __init__(self, verb: str, stream: TextIO | None = None, out: TextIO | None = None) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.out = out or sys.stdout
        self.tty = self.stream.isatty()
        self._last_draw = 0.0
        self._active: dict[str, _Transfer] = {}
        self._finished_bytes = 0  # of transfers that ended: the window counts bytes moved
        self._window = RateWindow()
        self._open_line = False

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            self._open_line = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _moved(self) -> int:
        return self._finished_bytes + sum(t.done for t in self._active.values())

    def start(self, key: str, total: int) -> None:
        now = time.monotonic()
        self._active[key] = _Transfer(total, now, logged_at=now)
        self._window.add(now, self._moved())
        if not self.tty:
            self._write(f"{self.verb} {key} {human_bytes(total)}", True)

    def update(self, key: str, done: int, total: int) -> None:
        now = time.monotonic()
        t = self._active.get(key)
        if t is None:
            t = self._active[key] = _Transfer(total, now, logged_at=now)
        t.done = max(t.done, min(done, total))
        self._window.add(now, self._moved())
        if self.tty:
            if now - self._last_draw >= REDRAW_SECONDS:
                self._last_draw = now
                self._draw(now)
            return
        step = 100 * t.done // total // LOG_PERCENT_STEP if total else 0
        if step > t.logged_step or now - t.logged_at >= LOG_EVERY_SECONDS:
            t.logged_step, t.logged_at = max(step, t.logged_step), now
            rate = self._window.rate(now)
            figures = "  ".join(_figures(t.done, total, rate)).lstrip()
            self._write(f"{self.verb} {key} {figures}", True)

    def _draw(self, now: float) -> None:
        """One line for all that moves: the blob, or ``N blobs`` with their sums."""
        moving = list(self._active.items())
        if not moving:
            return
        head = (
            f"{self.verb} {moving[0][0]}"
            if len(moving) == 1
            else f"{self.verb} {len(moving)} blobs"
        )
        done = sum(t.done for _, t in moving)
        total = sum(t.total for _, t in moving)
        line = fit(head, done, total, self._window.rate(now), terminal_columns(self.stream))
        self._write(line, False)

    def done(self, key: str, total: int, note: str = "") -> None:
        now = time.monotonic()
        t = self._active.pop(key, None)
        self._finished_bytes += total
        self._window.add(now, self._moved())
        seconds = now - t.started if t is not None else 0.0
        rate = f", {human_bytes(total / seconds)}/s" if seconds > 0.05 and total else ""
        extra = f" ({note})" if note else ""
        self._write(f"{self.verb} {key} {human_bytes(total)} done{extra}{rate}", True)
        if self.tty and self._active:
            self._draw(now)

    def skip(self, key: str, total: int, why: str) -> None:
        self._write(f"{self.verb} {key} {human_bytes(total)} skipped: {why}", True)

    def message(self, text: str) -> None:
        """A note on the way (stderr)."""
        self._write(text, True)

    def result(self, text: str) -> None:
        """The command's answer, on stdout (what a script keeps); the bar ends first."""
        self.end()
        self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        """End a bar left open (done, or Ctrl-C), so what follows starts on a line of its own."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
