"""``modelfs pull`` as a user watches it: in a real 60-column terminal (tmux) and piped, over a
slow link (the counting proxy trickling blob bodies), from a real docker-registry."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mount import modelfs_cmd, run_modelfs
from support.proxy import Proxy
from support.registry import RegistryProcess

from modelfs.formats.chunks import CHUNK_BYTES

COLUMNS = 60
ROWS = 24
WAIT_SECONDS = 120
# 8 MiB through a proxy sending 2 MB/s per connection: a few seconds, a chunk about every 2.
TRICKLE_BPS = 2_000_000
SIZES = re.compile(r"([\d.]+) (B|KB|MB|GB)(?:/[\d.]+ (?:B|KB|MB|GB))? ")
UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def wait_for(condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def small_pushed(
    registry: RegistryProcess, small_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """An 8 MiB model (two chunks) on the registry; the name to pull it by, host left out."""
    work = tmp_path_factory.mktemp("progress-src")
    name = f"{registry.host}/library/progress:8m"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", str(work))
    run_modelfs("push", name, "--cache", str(work))
    shutil.rmtree(work)
    return "library/progress:8m"


class Tmux:
    """A tmux server of the test's own with one COLUMNS x ROWS window."""

    def __init__(self, where: Path) -> None:
        self.socket = where / "tmux.sock"
        conf = where / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 10000\n")
        self.conf = conf

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    def run(self, command: str) -> None:
        self.tmux("new-session", "-d", "-x", str(COLUMNS), "-y", str(ROWS), command)

    def screen(self) -> list[str]:
        """Every row of the window and its scrollback, as the terminal shows them."""
        return self.tmux("capture-pane", "-p", "-S", "-").rstrip("\n").split("\n")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=30
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: scripts/setup.sh installs it")
    t = Tmux(tmp_path)
    yield t
    t.close()


def shown_bytes(row: str) -> int | None:
    """The bytes a progress row says are done (``pulling … 1.2 MB/8.4 MB …``)."""
    if "%" not in row:
        return None
    m = SIZES.search(row.split("%", 1)[1] + " ")
    return int(float(m.group(1)) * UNITS[m.group(2)]) if m else None


def test_pull_in_a_60_column_terminal_draws_one_line_that_moves_between_chunks(
    proxy: Proxy, small_pushed: str, tmux: Tmux, tmp_path: Path
) -> None:
    name = f"{proxy.host}/{small_pushed}"
    proxy.set_faults([{"path": "/blobs/", "method": "GET", "trickle_bps": TRICKLE_BPS}])
    out, rc = tmp_path / "stdout", tmp_path / "rc"
    argv = modelfs_cmd("pull", name, "--insecure-registry", proxy.host, "--cache", str(tmp_path))
    # stdout to a file, stderr (the progress) on the terminal: which is which is checked too.
    # The line after the pull's last output, through the same terminal: once tmux shows it,
    # it has drawn everything the pull wrote (the rc file alone can appear before that).
    end = "[the shell is back]"
    tmux.run(f"{shlex.join(argv)} > {out}; echo $? > {rc}; echo {shlex.quote(end)}")
    seen: list[int] = []
    bars: set[str] = set()

    def finished() -> bool:
        rows = tmux.screen()
        for row in rows:
            done = shown_bytes(row)
            if done is not None:
                seen.append(done)
                bars.add(row)
        return end in rows

    wait_for(finished, "the pull to finish")
    screen = tmux.screen()
    shown = "\n".join(screen)
    assert rc.read_text().strip() == "0", shown
    assert all(len(row) <= COLUMNS for row in screen), shown
    # Each redraw of a line wider than the terminal wraps and leaves a row behind: at the
    # end, no row of a bar is left, and each blob has one line saying it is done.
    assert not [row for row in screen if "%" in row], f"bar rows left in the scrollback:\n{shown}"
    done_rows = [row for row in screen if " done" in row]
    assert len(done_rows) == len(set(done_rows)) >= 1, shown
    assert any(0 < b < CHUNK_BYTES for b in seen), (
        f"the progress did not move before the first {CHUNK_BYTES >> 20} MiB chunk was in: "
        f"bytes shown {sorted(set(seen))}"
    )
    assert any("/s" in row and " left" in row for row in bars), f"no rate, no time left: {bars}"
    result = out.read_text()
    assert result.startswith(f"pulled {name} (sha256:"), result
    assert "pulled" not in shown, "the result went to the terminal's stderr, not stdout"


def test_pull_piped_says_how_far_it_is_now_and_then_and_the_result_on_stdout(
    proxy: Proxy, small_pushed: str, tmp_path: Path
) -> None:
    name = f"{proxy.host}/{small_pushed}"
    proxy.set_faults([{"path": "/blobs/", "method": "GET", "trickle_bps": TRICKLE_BPS}])
    r = run_modelfs("pull", name, "--insecure-registry", proxy.host, "--cache", str(tmp_path))
    assert "\r" not in r.stderr and "\x1b" not in r.stderr, r.stderr
    moving = [line for line in r.stderr.splitlines() if "%" in line]
    # Not only a line when the blob starts and one when it ends: some in between.
    assert len(moving) >= 3, r.stderr
    assert any(0 < (shown_bytes(line) or 0) < CHUNK_BYTES for line in moving), r.stderr
    assert len(moving) <= 12, f"a line per update is not a log a person reads:\n{r.stderr}"
    assert r.stdout == f"pulled {name} ({r.stdout.split('(')[1]}"
    assert "pulled" not in r.stderr


@pytest.fixture(scope="module")
def small_noindex_pushed(
    registry: RegistryProcess, small_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The 8 MiB model without a chunk index, as Ollama pushes models: ``index`` has work."""
    work = tmp_path_factory.mktemp("progress-noindex")
    name = f"{registry.host}/library/progress:noindex"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--no-chunk-index", "--cache", str(work))
    run_modelfs("push", name, "--cache", str(work))
    shutil.rmtree(work)
    return "library/progress:noindex"


def test_index_piped_shows_bytes_between_chunks_and_the_result_on_stdout(
    proxy: Proxy, small_noindex_pushed: str, tmp_path: Path
) -> None:
    name = f"{proxy.host}/{small_noindex_pushed}"
    proxy.set_faults([{"path": "/blobs/", "method": "GET", "trickle_bps": TRICKLE_BPS}])
    r = run_modelfs("index", name, "--insecure-registry", proxy.host, "--cache", str(tmp_path))
    moving = [line for line in r.stderr.splitlines() if "%" in line]
    assert any(0 < (shown_bytes(line) or 0) < CHUNK_BYTES for line in moving), r.stderr
    assert r.stdout.startswith(f"published a chunk index of {name} "), r.stdout
    assert "published" not in r.stderr
