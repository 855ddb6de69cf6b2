"""Shell completion and ``man modelfs``, as a user's shell and man(1) meet them: the script
``modelfs completion bash`` prints, sourced in a real bash, completes every command; the
page ``modelfs manpage`` prints renders with man(1) and names every command and option."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.mount import run_modelfs

from modelfs.commands.parser import build_parser
from modelfs.fs.mount_options import MOUNT_OPTIONS


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def complete(script: Path, words: list[str]) -> list[str]:
    """What bash offers for ``words`` (the last one being typed), through the function the
    script registered for ``modelfs`` with ``complete -F``."""
    line = " ".join(words)
    program = f"""
source {script}
spec=$(complete -p modelfs) || exit 3
func=$(sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p' <<<"$spec")
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
"$func" modelfs '{words[-1]}' '{words[-2]}'
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.split("\n") if w]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("completion") / "modelfs.bash"
    script.write_text(run_modelfs("completion", "bash").stdout)
    return script


def test_bash_completes_every_command(bash_script: Path) -> None:
    offered = complete(bash_script, ["modelfs", ""])
    assert sorted(offered) == sorted(commands()), offered
    assert sorted(complete(bash_script, ["modelfs", "pu"])) == ["pull", "push"]


def test_bash_completes_a_commands_options(bash_script: Path) -> None:
    assert complete(bash_script, ["modelfs", "du", "--j"]) == ["--json"]
    offered = complete(bash_script, ["modelfs", "mount", "--"])
    assert {"--cache-max", "--min-free", "--allow-non-empty", "--foreground"} <= set(offered)
    assert "--ready-fd" not in offered, "an internal flag offered to users"
    assert complete(bash_script, ["modelfs", "completion", ""]) == ["bash", "zsh"]


def test_zsh_completion_names_every_command() -> None:
    script = run_modelfs("completion", "zsh").stdout
    assert script.startswith("#compdef modelfs"), script[:200]
    offered = re.findall(r"^    ([a-z]+):'", script, re.M)
    assert sorted(offered) == sorted(commands()), offered


def test_the_man_page_renders_and_names_every_command_and_mount_option(tmp_path: Path) -> None:
    if shutil.which("man") is None and shutil.which("groff") is None:
        pytest.fail("neither man nor groff is installed to render the page")
    page = tmp_path / "modelfs.1"
    page.write_text(run_modelfs("manpage").stdout)
    if shutil.which("man"):
        argv = ["man", "-l", str(page)]
    else:
        argv = ["groff", "-man", "-Tutf8", "-ww", str(page)]
    shown = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat", "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == "", f"roff warnings: {shown.stderr}"
    # man may hyphenate at the margin or mark soft hyphens: compare words joined again.
    text = re.sub(r"[\u2010\u00ad]\n\s*", "", shown.stdout)
    text = re.sub(r"\s+", " ", text)
    assert text.startswith("MODELFS(1)"), text[:200]
    assert "modelfs - mount a model registry" in text
    for name, sub in commands().items():
        assert f"modelfs {name}" in text, f"the man page does not name the command {name}"
        for action in sub._actions:
            for flag in action.option_strings:
                if action.help != argparse.SUPPRESS and flag not in ("-h", "--help"):
                    assert flag in text, f"the man page does not name {name} {flag}"
    for option in MOUNT_OPTIONS:
        assert option.usage in text, f"the man page does not name -o {option.usage}"
