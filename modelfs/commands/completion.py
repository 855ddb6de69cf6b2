"""``modelfs completion bash|zsh`` and ``modelfs manpage``: shell completion and the manual
page, both generated from the CLI's own parser, so they name every command and option it has.

The generators are kept libraries: shtab writes bash and zsh completion scripts from an
argparse parser, argparse-manpage writes roff from one. What argparse does not hold, the
``-o`` options of a mount (an epilog the generators leave out), is added from the table
that reads them.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")
# shtab's own completers, named here so that building the parser needs no import of shtab.
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}
FILE = {"bash": "_shtab_compgen_files", "zsh": "_files"}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    return shtab.complete(parser, shell=shell)


def manpage(parser: argparse.ArgumentParser, version: str) -> str:
    """modelfs(1) as roff."""
    from argparse_manpage.manpage import Manpage

    from modelfs.fs.mount_options import MOUNT_OPTIONS

    page = Manpage(parser)
    page.source = f"modelfs {version}"
    page.manual = "modelfs manual"
    page.description = "mount a model registry as a lazily fetched, verified filesystem"
    options = "\n".join(f".TP\n\\fB{_roff(o.usage)}\\fR\n{_roff(o.help)}" for o in MOUNT_OPTIONS)
    page.add_section(
        "mount options",
        "=",
        "Given to \\fBmodelfs mount -o\\fR OPT[,OPT...], or in an fstab line of type "
        "fuse.modelfs.\n" + options,
    )
    page.add_section(
        "files",
        "=",
        ".TP\n~/.config/modelfs/config.toml\nregistries, mirrors, credentials, cache bounds "
        "(also $MODELFS_CONFIG)\n.TP\n~/.ollama/models\nthe cache, shared with Ollama "
        "(also $OLLAMA_MODELS)",
    )
    return str(page)


def _roff(text: str) -> str:
    """Text as roff reads it literally: backslashes and hyphens escaped, no request at the
    start of a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text
