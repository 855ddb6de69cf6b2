"""modelfs.commands.progress: a bar with size, rate and time left on a terminal; plain lines otherwise."""

from __future__ import annotations

import io

from modelfs.commands import progress
from modelfs.commands.progress import Progress, bar, human_seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_says_size_rate_and_time_left():
    line = bar(250_000_000, 1_000_000_000, 2.0)
    assert line.startswith("[#####...............]  25.0% 250.0 MB/1.0 GB")
    assert "125.0 MB/s" in line and "6s left" in line
    assert "left" not in bar(0, 1_000_000_000, 2.0), "a time left without a rate to go by"
    assert bar(5, 5, 1.0).startswith("[####################] 100.0%")


def test_seconds_read_as_a_person_would():
    assert [human_seconds(s) for s in (0.2, 59.4, 61, 3599, 3725)] == [
        "0s", "59s", "1m01s", "59m59s", "1h02m",
    ]  # fmt: skip


def test_a_terminal_gets_the_bar_redrawn_in_place_and_a_log_gets_lines(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    tty = Terminal()
    p = Progress("pulling", tty)
    p.start("abc", 1000)
    now[0] += 1.0
    p.update("abc", 400, 1000)
    p.done("abc", 1000)
    out = tty.getvalue()
    assert "\r\x1b[K" in out and "pulling abc [########............]  40.0%" in out
    assert "400 B/s" in out and "2s left" in out and "1.0 KB done" in out
    log = io.StringIO()
    p = Progress("pulling", log)
    p.start("abc", 1000)
    p.update("abc", 400, 1000)
    p.done("abc", 1000)
    assert log.getvalue().splitlines() == ["pulling abc 1.0 KB", "pulling abc 1.0 KB done"]
