"""modelfs.commands.progress: one line that fits on a terminal, a rate over the last seconds,
plain lines now and then in a log, the result on stdout."""

from __future__ import annotations

import io

import pytest

from modelfs.commands import progress
from modelfs.commands.progress import Progress, RateWindow, bar, fit, human_seconds


class Terminal(io.StringIO):
    def __init__(self, columns: int = 80) -> None:
        super().__init__()
        self.columns = columns

    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_the_bar_says_size_rate_and_time_left():
    line = bar(250_000_000, 1_000_000_000, 125_000_000)
    assert line.startswith("[#####...............]  25.0% 250.0 MB/1.0 GB")
    assert "125.0 MB/s" in line and "6s left" in line
    assert "left" not in bar(0, 1_000_000_000, None), "a time left without a rate to go by"
    assert "left" not in bar(10, 1_000, 0.0), "a time left from a link that moves nothing"
    assert bar(5, 5, None).startswith("[####################] 100.0%")


def test_seconds_read_as_a_person_would():
    assert [human_seconds(s) for s in (0.2, 59.4, 61, 3599, 3725)] == [
        "0s", "59s", "1m01s", "59m59s", "1h02m",
    ]  # fmt: skip


@pytest.mark.parametrize("columns", [20, 40, 60, 80, 200])
def test_the_line_fits_the_terminal(columns):
    head = "pulling 0123456789ab"
    line = fit(head, 420_000_000, 1_000_000_000, 12_345_678, columns)
    assert len(line) < columns, f"{len(line)} columns on a {columns}-column terminal: it wraps"
    assert line.startswith(head[: columns - 1])
    if columns >= 60:
        assert "42.0%" in line and "left" in line, (
            "a 60-column line still says how far and how long"
        )


def test_the_rate_is_that_of_the_last_seconds():
    """Fast for a minute, then slow: the rate (and so the time left) is the slow one."""
    w = RateWindow(seconds=5)
    moved = 0
    for t in range(60):
        moved += 10_000_000
        w.add(float(t), moved)
    for t in range(60, 70):
        moved += 100_000
        w.add(float(t), moved)
    rate = w.rate(69.0)
    assert rate is not None and 90_000 <= rate <= 110_000, rate
    assert RateWindow().rate(0.0) is None
    one = RateWindow()
    one.add(0.0, 0)
    one.add(0.5, 1000)
    assert one.rate(0.5) is None, "a rate from half a second says nothing about the link"


def test_a_terminal_gets_one_line_redrawn_in_place(clock, monkeypatch):
    monkeypatch.setattr(progress, "terminal_columns", lambda stream: stream.columns)
    tty, out = Terminal(60), io.StringIO()
    p = Progress("pulling", tty, out)
    p.start("0123456789ab", 1_000_000_000)
    for i in range(1, 11):
        clock[0] += 1.0
        p.update("0123456789ab", i * 10_000_000, 1_000_000_000)
    p.done("0123456789ab", 1_000_000_000)
    p.result("pulled m:1 (sha256:abc)")
    draws = tty.getvalue().split("\r\x1b[K")[1:]
    assert len(draws) == 11 and all("\n" not in d for d in draws[:-1])
    assert all(len(d.rstrip("\n")) < 60 for d in draws), draws
    assert "10.0 MB/s" in draws[-2] and "1m30s left" in draws[-2], draws[-2]
    assert out.getvalue() == "pulled m:1 (sha256:abc)\n"
    assert "pulled" not in tty.getvalue()


def test_several_blobs_at_once_share_the_line(clock, monkeypatch):
    monkeypatch.setattr(progress, "terminal_columns", lambda stream: 100)
    tty = Terminal()
    p = Progress("pulling", tty, io.StringIO())
    p.start("aaa", 1000)
    p.start("bbb", 3000)
    clock[0] += 1.0
    p.update("aaa", 500, 1000)
    clock[0] += 1.0
    p.update("bbb", 1500, 3000)
    last = tty.getvalue().split("\r\x1b[K")[-1]
    assert last.startswith("pulling 2 blobs [") and "50.0% 2.0 KB/4.0 KB" in last, last


def test_a_log_gets_a_line_now_and_then(clock):
    log, out = io.StringIO(), io.StringIO()
    p = Progress("pulling", log, out)
    p.start("abc", 1_000_000)
    for _ in range(200):  # 200 updates of 1 KB, 0.1 s apart: 20 s, 20 %
        clock[0] += 0.1
        p.update("abc", p._active["abc"].done + 1000, 1_000_000)
    lines = log.getvalue().splitlines()
    # Not 200 lines, and not silence: each 10 % and each 10 s without one.
    assert 2 <= len(lines) - 1 <= 4, lines
    assert lines[0] == "pulling abc 1.0 MB"
    assert lines[1].startswith("pulling abc ") and "%" in lines[1] and "/s" in lines[1]
    p.update("abc", 1_000_000, 1_000_000)
    p.done("abc", 1_000_000)
    p.result("pulled x")
    assert log.getvalue().splitlines()[-1].startswith("pulling abc 1.0 MB done")
    assert out.getvalue() == "pulled x\n"
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_what_follows_an_open_bar_starts_on_a_line_of_its_own(clock, monkeypatch):
    """An error or Ctrl-C in the middle of a blob: ``modelfs: …`` must not be glued to the bar."""
    monkeypatch.setattr(progress, "terminal_columns", lambda stream: 80)
    tty = Terminal()
    p = Progress("pushing", tty, io.StringIO())
    p.start("abc", 1000)
    clock[0] += 1.0
    p.update("abc", 500, 1000)
    assert not tty.getvalue().endswith("\n")
    p.end()
    assert tty.getvalue().endswith("\n")
    p.end()
    assert not tty.getvalue().endswith("\n\n"), "a second end() added an empty line"
