"""A registry's own error text quoted on the terminal (`modelfs: <message>`) with its escape
sequences and newlines escaped (issue: security).

A registry that answers an error can put anything in the body modelfs quotes: an escape
sequence that retitles the terminal, erases the line or hides what follows, a carriage return
or newline that forges a line of modelfs's own. The CLI's error line shows the words escaped
(``\\x1b``), still on one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.hostile import HostileRegistry
from support.mount import one_line_error, run_modelfs

TITLE = "\x1b]0;pwned\x07"
ERASE = "\x1b[1A\x1b[2K"
FORGED = "\rmodelfs: pulled hostile/m:v1 \u202e\x9b31m"
WORDS = f"denied{TITLE}{ERASE}{FORGED}"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e")


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"errors": [{"code": "DENIED", "message": WORDS + "\nline two"}]}).encode(),
        json.dumps({"error": WORDS}).encode(),
        WORDS.encode(),
    ],
    ids=["docker-errors", "ollama-error", "plain-text"],
)
def test_a_registry_error_is_quoted_escaped(body: bytes, tmp_path: Path) -> None:
    with HostileRegistry() as reg:
        reg.refuse(400, body)
        result = run_modelfs(
            "pull",
            f"{reg.host}/hostile/m:v1",
            "--insecure-registry",
            reg.host,
            "--cache",
            str(tmp_path / "cache"),
            check=False,
            timeout=120,
        )
    line = one_line_error(result)
    for raw in RAW:
        assert raw not in result.stderr, (
            f"the error line printed {raw!r} from the registry raw to the terminal: {line!r}"
        )
    assert "registry answered 400" in line, line
    # The registry's words are still there, escaped, on the one line.
    assert "denied\\x1b]0;pwned\\x07\\x1b[1A\\x1b[2K" in line, line
    assert "\\u202e\\x9b31m" in line, line


def test_a_mirrors_error_in_a_warning_is_quoted_escaped(tmp_path: Path) -> None:
    """The warning that a mirror failed (the CLI's `modelfs: ` log line) quotes its words too."""
    with HostileRegistry() as mirror, HostileRegistry() as origin:
        mirror.refuse(400, json.dumps({"error": WORDS}).encode())
        origin.refuse(400, b"plain refusal")
        config = tmp_path / "config.toml"
        config.write_text(
            f'[[registry]]\nhost = "{origin.host}"\ninsecure = true\n'
            f'[[mirror]]\nhost = "{origin.host}"\nendpoints = ["{mirror.url}"]\n'
        )
        result = run_modelfs(
            "pull",
            f"{origin.host}/hostile/m:v1",
            "--config",
            str(config),
            "--cache",
            str(tmp_path / "cache"),
            check=False,
            timeout=120,
        )
        assert mirror.requests and origin.requests, result.stderr
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("modelfs: mirror ")]
    assert len(warnings) == 1, result.stderr
    for raw in RAW:
        assert raw not in result.stderr, (
            f"the mirror warning printed {raw!r} from the mirror raw to the terminal: "
            f"{warnings[0]!r}"
        )
    assert "denied\\x1b]0;pwned\\x07" in warnings[0], warnings[0]
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("registry answered 400: plain refusal"), result.stderr
