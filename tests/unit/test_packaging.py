"""What someone about to install modelfs reads first: the license and the README's opening."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_license_file_is_the_mit_license_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) the modelfs authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"


def test_the_readme_says_how_to_install_before_anything_else() -> None:
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert (
        lines[2:6]
        == [
            "```sh",
            lines[3],
            lines[4],
            "```",
        ]
        and lines[3].startswith("bash scripts/demo.sh")
        and lines[4].startswith("bash scripts/test.sh")
    )
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[0] == "## Install", headings[:3]
    install = text.split("## Install", 1)[1].split("\n## ", 1)[0]
    for needed in (
        "pipx install",
        "pip install",
        "libfuse3-dev",
        "modelfs@.service",
        "fusermount3",
    ):
        assert needed in install, f"the Install section does not say {needed}"
