"""The grammar of the ``modelfs`` command line: its commands, their arguments and help.

What each command does is ``cli``'s (it dispatches on ``args.command``); completion and the
manual page are generated from this parser, so it is the one place a flag is declared.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from typing import Any

from modelfs import __version__
from modelfs.commands.completion import DIRECTORY, FILE, SHELLS


class Parser(argparse.ArgumentParser):
    """argparse with ``invalid choice 'unmount' (did you mean 'umount'?)`` for a command
    it does not know, and an epilog (``epilog_of``) written only when the help is shown:
    every command builds the whole parser, and mount's table of -o options is not free."""

    def __init__(self, *args: Any, epilog_of: Callable[[], str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epilog_of = epilog_of

    def format_help(self) -> str:
        if self.epilog_of is not None:
            self.epilog = self.epilog_of()
        return super().format_help()

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            raise argparse.ArgumentError(None, unknown_command(value, list(action.choices)))
        super()._check_value(action, value)


def unknown_command(word: str, commands: list[str]) -> str:
    close = difflib.get_close_matches(word, commands, n=1)
    if close:
        return f"invalid choice {word!r} (did you mean {close[0]!r}?)"
    return f"invalid choice {word!r} (commands: {', '.join(commands)}; see modelfs help)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="modelfs",
        description="Mount a model registry as a lazily fetched, verified local filesystem.",
    )
    p.add_argument("-v", "--version", action="version", version=f"modelfs {__version__}")
    p.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cache_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--cache",
            metavar="DIR",
            help="cache root (default: $OLLAMA_MODELS, else ~/.ollama/models)",
        ).complete = DIRECTORY  # type: ignore[attr-defined]

    def registry_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--insecure-registry",
            action="append",
            metavar="HOST[:PORT]",
            help="use plain http for this registry (also MODELFS_INSECURE_REGISTRIES)",
        )
        sp.add_argument(
            "--ca-file",
            metavar="PEM",
            help="trust this CA for registries' certificates (default: the system store; "
            "SSL_CERT_FILE also works)",
        ).complete = FILE  # type: ignore[attr-defined]
        sp.add_argument(
            "--key",
            metavar="FILE",
            help="Ollama ed25519 key (default: $MODELFS_KEY, else ~/.ollama/id_ed25519, "
            "created if missing)",
        ).complete = FILE  # type: ignore[attr-defined]
        sp.add_argument(
            "--config",
            metavar="FILE",
            help="configuration file (default: $MODELFS_CONFIG, else ~/.config/modelfs/config.toml)",
        ).complete = FILE  # type: ignore[attr-defined]

    sp = sub.add_parser(
        "mount",
        help="mount registries at MOUNTPOINT",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog_of=_mount_epilog,
    )
    sp.add_argument("mountpoint").complete = DIRECTORY  # type: ignore[attr-defined]
    cache_arg(sp)
    registry_args(sp)
    sp.add_argument("--foreground", action="store_true", help="stay attached, log to stderr")
    sp.add_argument(
        "--allow-non-empty",
        action="store_true",
        help="mount over a directory that has files (they are hidden until unmounted)",
    )
    sp.add_argument(
        "-o",
        action="append",
        metavar="OPT[,OPT]",
        help="mount options, listed below",
    )
    sp.add_argument(
        "--cache-max",
        metavar="SIZE",
        help="evict models fetched through the mount (least recently used first) to keep blobs "
        "under SIZE (20G; 500MB = 500,000,000 bytes, 500MiB or 500M = 500 * 2^20, as sizes "
        "are printed in MB = 10^6 bytes); created and pulled models are never evicted",
    )
    sp.add_argument(
        "--min-free",
        metavar="SIZE|PCT",
        help="evict likewise to keep this much of the cache's filesystem free (default 10%%; "
        "SIZE as for --cache-max)",
    )
    sp.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (also -o metrics=HOST:PORT)",
    )
    sp.add_argument("--log", metavar="FILE", help="daemon log file").complete = FILE  # type: ignore[attr-defined]
    sp.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    sp = sub.add_parser("umount", help="unmount a modelfs mount")
    sp.add_argument("mountpoint").complete = DIRECTORY  # type: ignore[attr-defined]
    sp.add_argument("--lazy", action="store_true", help="detach now even if files are open")

    sp = sub.add_parser(
        "status",
        help="live figures of running mounts: cache use, bytes fetched, hits and misses, "
        "blobs in flight, errors, evictions",
    )
    sp.add_argument("mountpoint", nargs="?", help="this mount only (default: every mount)")
    sp.add_argument("--json", action="store_true", help="the same figures as JSON")

    sp = sub.add_parser(
        "create",
        help="create a model in the cache from a GGUF file, a model folder or a Modelfile",
    )
    sp.add_argument("name")
    source = sp.add_mutually_exclusive_group()
    source.add_argument("--gguf", metavar="FILE").complete = FILE  # type: ignore[attr-defined]
    source.add_argument(
        "-f",
        "--file",
        metavar="MODELFILE",
        help="an Ollama Modelfile (default: ./Modelfile when there is no --gguf)",
    ).complete = FILE  # type: ignore[attr-defined]
    source.add_argument(
        "--dir",
        metavar="FOLDER",
        help="a Hugging Face model folder (safetensors or GGUF, configs, tokenizer, subfolders)",
    )
    sp.add_argument(
        "--format",
        choices=("docker", "cncf", "ollama"),
        help="layout of a model folder (--dir, or a Modelfile FROM a folder): cncf (default: "
        "ModelPack, read by Docker Model Runner and modctl), docker (Docker Model Runner "
        "v0.2) or ollama (Ollama's tensor format: tensors and top-level JSON files only)",
    )
    sp.add_argument("--template", metavar="FILE")
    sp.add_argument("--system", metavar="TEXT")
    sp.add_argument("--params", metavar="JSON|FILE")
    sp.add_argument("--license", action="append", metavar="FILE")
    sp.add_argument(
        "--no-chunk-index",
        action="store_true",
        help="leave out the chunk index (reads then verify whole blobs, as for Ollama's models)",
    )
    cache_arg(sp)

    for verb, text in (
        ("push", "upload a cached model to its registry"),
        ("pull", "download a whole model into the cache"),
        (
            "index",
            "publish a chunk index beside a model that has none (the model is not changed), "
            "so mounts read it lazily and verified",
        ),
    ):
        sp = sub.add_parser(verb, help=text)
        sp.add_argument("name")
        if verb == "push":
            sp.add_argument(
                "--from",
                dest="source",
                metavar="OTHER",
                help="push the cached model OTHER as NAME; blobs OTHER's repository already has "
                "on the registry are mounted, not uploaded",
            )
            sp.add_argument(
                "--format",
                choices=("docker", "cncf", "ollama"),
                help="default: the cached manifest as it is; docker: a Docker Model Runner "
                "artifact (of a GGUF model: an OCI manifest over the same GGUF blob); for a "
                "model folder also cncf (ModelPack) and ollama (Ollama's tensor format)",
            )
        cache_arg(sp)
        registry_args(sp)

    sp = sub.add_parser(
        "unlink",
        aliases=["rm"],
        help="remove models from the cache (also modelfs rm, Ollama's word for it)",
    )
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument(
        "--remote",
        action="store_true",
        help="first delete the tag on the registry, and only that tag: where the registry "
        "can delete a tag only with its manifest and other tags name it, nothing is deleted",
    )
    sp.add_argument(
        "--all-tags",
        action="store_true",
        help="with --remote: delete the tag's manifest on the registry, and with it every tag "
        "that names it",
    )
    cache_arg(sp)
    registry_args(sp)

    sp = sub.add_parser("cp", help="give a cached model another name (as ollama cp does)")
    sp.add_argument("source", metavar="SRC")
    sp.add_argument("target", metavar="DST")
    cache_arg(sp)

    sp = sub.add_parser("du", help="bytes the cache's models take on disk, shared blobs once")
    sp.add_argument("name", nargs="?")
    sp.add_argument(
        "--json",
        action="store_true",
        help="the same as JSON: models (name, display, disk_bytes) and total_bytes",
    )
    cache_arg(sp)

    sp = sub.add_parser("login", help="store credentials for a registry (as docker login does)")
    sp.add_argument("host")
    sp.add_argument("-u", "--username")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    registry_args(sp)

    sp = sub.add_parser(
        "show",
        help="what a model is (architecture, size, layers, memory) from its GGUF header, "
        "fetching only the header",
    )
    sp.add_argument("name")
    out = sp.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the same facts as JSON")
    out.add_argument("--modelfile", action="store_true", help="print the model as a Modelfile")
    sp.add_argument(
        "--ctx", type=int, metavar="N", help="also estimate the memory at a context of N tokens"
    )
    cache_arg(sp)
    registry_args(sp)

    sp = sub.add_parser(
        "ps", help="running mounts, one line each (modelfs status MNT for the full figures)"
    )

    sp = sub.add_parser(
        "logout", help="remove a registry's stored credentials (as docker logout does)"
    )
    sp.add_argument("host")

    sp = sub.add_parser("help", help="this help, or a command's: modelfs help pull")
    sp.add_argument("topic", nargs="?", metavar="COMMAND")

    sp = sub.add_parser(
        "completion",
        help='shell completion for modelfs: eval "$(modelfs completion bash)" (setup installs it)',
    )
    sp.add_argument("shell", choices=SHELLS)

    sp = sub.add_parser(
        "manpage", help="the manual page modelfs(1) as roff (setup installs it: man modelfs)"
    )

    sp = sub.add_parser(
        "ls",
        aliases=["list"],
        help="list cached models and how much of each is present (also modelfs list)",
    )
    sp.add_argument(
        "--json",
        action="store_true",
        help="the same as JSON: a list of models (name, display, digest, size_bytes, "
        "present_bytes, complete, verify)",
    )
    cache_arg(sp)
    # --debug after the command too (`modelfs pull --debug NAME`); SUPPRESS keeps one given
    # before the command when it is not repeated.
    for command in {id(c): c for c in sub.choices.values()}.values():
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return p


def _mount_epilog() -> str:
    from modelfs.fs.mount_options import mount_options_help

    return "mount options (-o OPT[,OPT...]; also in fstab):\n" + "\n".join(
        f"  {line}" for line in mount_options_help().splitlines()
    )


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands (aliases included), each with its own parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
