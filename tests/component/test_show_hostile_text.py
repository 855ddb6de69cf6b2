"""`modelfs show` of a model whose strings carry terminal escapes and newlines (issue: security).

A registry's model can name itself with an escape sequence that retitles the terminal or hides
what follows, and with newlines that forge a second "checked" block. The text report prints
every such string escaped, on its own line; the JSON report was always escaped by json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import termios
import time
import tty
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from support.mount import modelfs_cmd, run_modelfs

from modelfs.blobs.blobcache import BlobCache
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_PARAMS, Layer, build_manifest, parse_manifest
from modelfs.formats.names import parse_name

DEADLINE_SECONDS = 60.0

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


def swap_params(cache_root: Path, name: str, params: bytes) -> None:
    """Give the cached model ``name`` another params blob, as a registry could serve it."""
    cache = BlobCache(cache_root)
    model = parse_name(name)
    manifest = parse_manifest(cache.read_manifest(model) or b"")
    digest = Digest.of_bytes(params)
    cache.store_bytes(params, digest)
    layers = [
        Layer(digest, MEDIA_TYPE_PARAMS, len(params)) if x.media_type == MEDIA_TYPE_PARAMS else x
        for x in manifest.layers
    ]
    cache.write_manifest(model, build_manifest(manifest.config, layers))


@pytest.fixture(scope="module")
def hostile_model(registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A model with escape sequences in its header, system prompt, params and license, pushed;
    and its GGUF."""
    tmp_path = tmp_path_factory.mktemp("hostile-text")
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
        json.dumps({"temperature": 0.5}),
        "--license",
        str(license_file),
        "--cache",
        str(src),
    )
    # create refuses a parameter name it does not know; a registry may serve anything.
    swap_params(src, name, json.dumps({PARAM_KEY: "x", "temperature": 0.5}).encode())
    run_modelfs("push", name, "--cache", str(src))
    shutil.rmtree(src)
    return name, gguf


def test_show_prints_a_hostile_models_strings_escaped(
    hostile_model: tuple[str, Path], tmp_path: Path
) -> None:
    name = hostile_model[0]
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


def on_a_terminal(*args: str) -> str:
    """What modelfs writes to stdout when stdout is a terminal (a pty in raw mode)."""
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)  # no "\n" -> "\r\n": the bytes as written
    try:
        proc = subprocess.Popen(
            modelfs_cmd(*args), stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE
        )
        os.close(slave)
        slave = -1
        out = bytearray()
        os.set_blocking(master, False)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while proc.poll() is None or _drain(master, out):
            assert time.monotonic() < deadline, f"modelfs {' '.join(args)} did not finish"
            if not _drain(master, out):
                time.sleep(0.02)
        assert proc.stderr is not None
        with proc.stderr:
            err = proc.stderr.read().decode(errors="replace")
        assert proc.returncode == 0, err
        return out.decode()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def _drain(fd: int, out: bytearray) -> bool:
    try:
        data = os.read(fd, 1 << 16)
    except (BlockingIOError, OSError):  # EIO: the other end closed
        return False
    out += data
    return bool(data)


def test_show_modelfile_is_escaped_on_a_terminal_and_exact_when_redirected(
    hostile_model: tuple[str, Path], tmp_path: Path
) -> None:
    # A Modelfile holds no control characters but line breaks and tabs (what it cannot
    # write is refused); a carriage return is one, and on a terminal it hides the text
    # before it.
    system = "You are helpful.\rIgnore the license.\tNow."
    cache = str(tmp_path / "cache")
    name = "local/hostile:crlf"
    run_modelfs(
        "create", name, "--gguf", str(hostile_model[1]), "--system", system, "--cache", cache
    )
    args = ("show", name, "--modelfile", "--cache", cache)
    shown = on_a_terminal(*args)
    assert "\r" not in shown, "show --modelfile printed a carriage return raw to a terminal"
    assert 'SYSTEM "You are helpful.\\rIgnore the license.\tNow."' in shown, shown
    # Redirected to a file, it is the Modelfile itself, which create -f reads back.
    exact = subprocess.run(
        modelfs_cmd(*args), capture_output=True, check=True, timeout=DEADLINE_SECONDS
    ).stdout.decode()  # bytes: text mode would turn the "\r" into a line break
    assert exact == shown.replace("\\r", "\r")
    (tmp_path / "Modelfile").write_text(exact, newline="")
    run_modelfs(
        "create", "local/hostile:again", "-f", str(tmp_path / "Modelfile"), "--cache", cache
    )
    again = json.loads(
        run_modelfs("show", "local/hostile:again", "--json", "--cache", cache).stdout
    )
    assert again["system"] == system
