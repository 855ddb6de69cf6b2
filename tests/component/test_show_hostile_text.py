"""`modelfs show` of a model whose strings carry terminal escapes and newlines (issue: security).

A registry's model can name itself with an escape sequence that retitles the terminal or hides
what follows, and with newlines that forge a second "checked" block. The text report prints
every such string escaped, on its own line; the JSON report was always escaped by json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gguf_synth import write_synthetic_gguf
from support.mount import run_modelfs

TITLE = "\x1b]0;pwned\x07"
HIDE = "\x1b[8m"
FORGED = (
    "\n  Verification\n    model.gguf: complete in the cache, checked whole\n"
    "    header: 1.0 MB in 1 chunk(s), checked\n"
)
NAME = f"smol{TITLE}{HIDE}{FORGED}\r"
ARCH = "llama\x1b[2J\u202e"
SYSTEM = f"Be nice.\x1b[1A\x1b[2K{TITLE}\nSecond line\x9b31m"
PARAM_KEY = f"stop{HIDE}"


def test_show_prints_a_hostile_models_strings_escaped(registry, tmp_path: Path) -> None:
    gguf = tmp_path / "hostile.gguf"
    write_synthetic_gguf(gguf, 1 << 20, seed=71, vocab_tokens=100, arch=ARCH, name=NAME)
    license_file = tmp_path / "LICENSE"
    license_file.write_text(f"MIT{TITLE}\rforged line\nline two\nline three\n")
    name = f"{registry.host}/hostile/text:v1"
    src = tmp_path / "src"
    run_modelfs(
        "create",
        name,
        "--gguf",
        str(gguf),
        "--system",
        SYSTEM,
        "--params",
        json.dumps({PARAM_KEY: "x", "temperature": 0.5}),
        "--license",
        str(license_file),
        "--cache",
        str(src),
    )
    run_modelfs("push", name, "--cache", str(src))
    shutil.rmtree(src)
    cache = str(tmp_path / "cache")

    out = run_modelfs("show", name, "--cache", cache).stdout
    for raw in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert raw not in out, f"show printed {raw!r} from the registry raw to the terminal"
    lines = out.splitlines()
    assert lines.count("  Verification") == 1, f"a forged Verification block was printed:\n{out}"
    checked = [line for line in lines if line.startswith("    header:")]
    assert len(checked) == 1, f"a forged header line was printed:\n{out}"
    # Each string is still shown, escaped, on the one line where it belongs.
    name_line = next(line for line in lines if line.lstrip().startswith("name "))
    assert "smol\\x1b]0;pwned\\x07\\x1b[8m\\n  Verification\\n" in name_line
    assert name_line.endswith("\\r")
    assert ["architecture", "llama\\x1b[2J\\u202e"] in [line.split() for line in lines]
    assert "    Be nice.\\x1b[1A\\x1b[2K\\x1b]0;pwned\\x07" in lines
    assert "    Second line\\x9b31m" in lines
    assert any(line.startswith("    stop\\x1b[8m ") for line in lines)
    assert "    MIT\\x1b]0;pwned\\x07" in lines and "    forged line" in lines

    # The JSON report keeps the strings exactly, escaped by json.
    doc = json.loads(run_modelfs("show", name, "--json", "--cache", cache).stdout)
    assert doc["model"]["name"] == NAME
    assert doc["model"]["architecture"] == ARCH
    assert doc["system"] == SYSTEM
