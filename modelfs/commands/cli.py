"""The ``modelfs`` command: mount, umount, create, push, pull, unlink, ls.

Known errors print ``modelfs: <message>`` and exit 1 (among them what a Modelfile or a
``--params`` value says, ``InputInvalid``); a traceback only with ``--debug``. Usage errors
(a command line that does not fit together) exit 2. Output to a reader that has left (``| head``) ends the
command quietly with 141, the status SIGPIPE gives other commands.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from modelfs import __version__
from modelfs.blobs.blobcache import BlobCache, default_root
from modelfs.commands.completion import DIRECTORY, FILE, SHELLS, completion_script, manpage
from modelfs.commands.terminal import printable
from modelfs.errors import ModelfsError, ModelNotFound, UsageError
from modelfs.formats.names import Name, parse_name

T = TypeVar("T")

log = logging.getLogger("modelfs")

LOG_FILE_BYTES = 10 << 20
LOG_FILE_BACKUPS = 3


def _insecure_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    env = os.environ.get("MODELFS_INSECURE_REGISTRIES", "")
    hosts = [h.strip() for h in env.split(",") if h.strip()]
    hosts += list(getattr(args, "insecure_registry", None) or [])
    return tuple(hosts)


def _cache(args: argparse.Namespace) -> BlobCache:
    return BlobCache(default_root(getattr(args, "cache", None)))


def _registry_config(args: argparse.Namespace, extra_insecure: tuple[str, ...] = ()):
    """Settings for the registry client: the config file, then environment, then flags."""
    return _settings(args, extra_insecure)[0]


def _settings(args: argparse.Namespace, extra_insecure: tuple[str, ...] = ()):
    """The registry client's settings (the config file, then environment, then flags) and
    the config file itself; a mount calls this again on SIGHUP."""
    from modelfs.registry.client import RegistryConfig
    from modelfs.registry.config import load_config

    config_file = getattr(args, "config", None)
    if config_file and not Path(config_file).is_file():
        # Named on purpose: a missing file is a mistake, not the defaults.
        raise UsageError(f"--config {config_file}: no such file")
    file = load_config(Path(config_file) if config_file else None)
    ca_file = getattr(args, "ca_file", None) or file.ca_file
    if ca_file and not Path(ca_file).is_file():
        raise UsageError(f"--ca-file {ca_file}: no such file")
    key = getattr(args, "key", None) or os.environ.get("MODELFS_KEY") or file.key
    config = RegistryConfig(
        insecure_hosts=(*file.insecure_hosts, *_insecure_hosts(args), *extra_insecure),
        tls_hosts=file.tls_hosts,
        ca_file=ca_file,
        key_path=Path(key) if key else None,
        mirrors=file.mirrors,
        origin_credentials=file.origin_credentials,
    )
    return config, file


def _registry(args: argparse.Namespace):
    from modelfs.registry.client import Registry

    return Registry(_registry_config(args))


def _with_registry(args: argparse.Namespace, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(registry)`` under trio with the registry client the flags describe, closed after."""

    async def main() -> T:
        registry = _registry(args)
        try:
            return await work(registry)
        finally:
            await registry.aclose()

    return trio.run(main)


def _name(text: str) -> Name:
    return parse_name(text)


# -- commands ----------------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    from modelfs.fs import daemon, mountctl

    mountpoint = Path(args.mountpoint).absolute()
    args.o = list(args.o or [])
    for flag, key in (
        ("--cache-max", "cache_max"),
        ("--min-free", "min_free"),
        ("--metrics", "metrics"),
    ):
        value = getattr(args, key)
        if value is not None:
            args.o.append(_flag_option(flag, key, value))
    options = daemon.parse_mount_options(args.o)
    # -o insecure_registry=H (as fstab would say it) adds to --insecure-registry.
    from_options: tuple[str, ...] = tuple(options.pop("insecure_hosts", ()))  # type: ignore[arg-type]
    insecure = (*_insecure_hosts(args), *from_options)
    cache_root = default_root(args.cache)
    registry_config, file = _settings(args, from_options)
    opts = daemon.MountOptions(
        mountpoint=mountpoint,
        cache_root=cache_root,
        insecure_hosts=insecure,
        registry=registry_config,
        settings_loader=lambda: _settings(args, from_options),
        fixed_bounds=frozenset(k for k in ("cache_max", "min_free") if k in options),
        tuning_asked=frozenset(
            k for k in ("read_ahead_kb", "max_background") if options.get(k) is not None
        ),
        **options,
    )
    daemon.cache_bounds(opts, file)  # a bound the file gets wrong fails here, before mounting
    mountctl.runtime_dir()  # one another user could have made fails here, before mounting
    if not args.foreground:
        note = mountctl.prepare_mountpoint(mountpoint, allow_non_empty=args.allow_non_empty)
        if note:
            print(error_line(note), file=sys.stderr)
        argv = ["mount", str(mountpoint), "--cache", str(cache_root)]
        for h in insecure:
            argv += ["--insecure-registry", h]
        for flag in ("ca_file", "key", "config"):
            value = getattr(args, flag, None)
            if value:
                argv += [f"--{flag.replace('_', '-')}", str(Path(value).absolute())]
        for o in args.o or []:
            argv += ["-o", o]
        if args.debug:
            argv.insert(0, "--debug")  # an option of modelfs itself, before the command
        log_path = Path(args.log) if args.log else cache_root / ".modelfs" / "modelfs.log"
        mountctl.start_daemon(argv, log_path)
        return 0

    _setup_logging(args, foreground=True)
    ready_fd = args.ready_fd

    def ready(message: str | None) -> None:
        nonlocal ready_fd
        mountctl.signal_ready(ready_fd, message)
        ready_fd = None
        if message is None:
            with contextlib.suppress(OSError, ModelfsError):
                mountctl.write_pidfile(mountpoint)

    try:
        if ready_fd is None:
            note = mountctl.prepare_mountpoint(mountpoint, allow_non_empty=args.allow_non_empty)
            if note:
                log.warning("%s", note)
        trio.run(daemon.run, opts, ready)
    except ModelfsError as e:
        ready(str(e))
        raise
    finally:
        mountctl.remove_pidfile(mountpoint)
    return 0


def _flag_option(flag: str, key: str, value: str) -> str:
    """``--cache-max 1G`` as the ``-o`` option it stands for, checked, errors naming the flag."""
    from modelfs.fs.mount_options import parse_mount_options

    # The daemon gets it back as -o: a comma would smuggle in another option.
    try:
        if "," in value:
            raise UsageError(f"-o {key} takes one value, not {value!r}")
        parse_mount_options([f"{key}={value}"])
    except UsageError as e:
        raise UsageError(str(e).replace(f"-o {key}", flag, 1)) from None
    return f"{key}={value}"


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from modelfs.commands import status

    mnt = args.mountpoint
    reports = [status.mount_status(mnt)] if mnt else status.every_mount()
    if args.json:
        print(json.dumps(reports[0] if args.mountpoint else reports, indent=2))
    elif reports:
        print("\n\n".join(status.render(r) for r in reports))
    else:
        print("no modelfs mounts are running", file=sys.stderr)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from modelfs.commands import status

    reports = status.every_mount()
    if not reports:
        print("no modelfs mounts are running", file=sys.stderr)
        return 0
    print(status.table(reports))
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from modelfs.fs import mountctl

    mountctl.umount(Path(args.mountpoint), lazy=args.lazy)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from modelfs.commands.create import create_from_modelfile, create_model
    from modelfs.commands.progress import human_bytes

    name = _name(args.name)
    cache = _cache(args)
    companions = [
        flag
        for flag, value in (
            ("--template", args.template),
            ("--system", args.system),
            ("--params", args.params),
            ("--license", args.license),
        )
        if value
    ]
    modelfile = args.file
    if args.dir is not None:
        from modelfs.commands.folderstore import create_from_folder

        if companions:
            raise UsageError(f"{', '.join(companions)} go with --gguf, not --dir")
        manifest = create_from_folder(
            cache, name, Path(args.dir), format=args.format, chunk_index=not args.no_chunk_index
        )
        print(f"created {name} ({manifest.digest}, {human_bytes(manifest.total_bytes)})")
        return 0
    if args.format is not None and args.gguf is not None:
        raise UsageError("--format goes with --dir (push --format docker for a GGUF model)")
    if modelfile is None and args.gguf is None:
        if not Path("Modelfile").is_file():
            raise UsageError("create needs --gguf FILE or -f Modelfile (no ./Modelfile here)")
        modelfile = "Modelfile"  # as ollama create does
    if modelfile is not None:
        if companions:
            raise UsageError(
                f"{', '.join(companions)} go with --gguf; with -f, say it in the Modelfile"
            )
        manifest = create_from_modelfile(
            cache, name, Path(modelfile), chunk_index=not args.no_chunk_index, format=args.format
        )
    else:
        manifest = create_model(
            cache,
            name,
            Path(args.gguf),
            template=Path(args.template) if args.template else None,
            system=args.system,
            params=args.params,
            licenses=tuple(Path(p) for p in args.license or ()),
            chunk_index=not args.no_chunk_index,
        )
    print(f"created {name} ({manifest.digest}, {human_bytes(manifest.total_bytes)})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from modelfs.commands.progress import Progress
    from modelfs.commands.push import push

    name = _name(args.name)
    source = _name(args.source) if args.source else None

    progress = Progress("pushing")
    try:
        _with_registry(
            args,
            lambda registry: push(
                _cache(args), registry, name, progress, source=source, format=args.format
            ),
        )
    finally:
        progress.end()  # an error or Ctrl-C starts on a line of its own
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from modelfs.commands.progress import Progress
    from modelfs.commands.pull import pull

    name = _name(args.name)
    if name.digest is not None and not _names_a_tag(args.name):
        # The registry's tags are not ours to guess, and "latest" would overwrite the
        # local model of that name with another one.
        raise UsageError(
            f"{args.name}: name the tag to keep it under, "
            f"e.g. {name.with_tag('TAG').display_shortest()}@{name.digest}"
        )

    progress = Progress("pulling")
    try:
        _with_registry(args, lambda registry: pull(_cache(args), registry, name, progress))
    finally:
        progress.end()
    return 0


def _names_a_tag(text: str) -> bool:
    """Whether the name as typed has a tag (``m:v1@sha256:…``), not the default one."""
    body = text.partition("@")[0].rpartition("://")[2]
    return body.rfind(":") > body.rfind("/")


def cmd_index(args: argparse.Namespace) -> int:
    from modelfs.commands.index import index
    from modelfs.commands.progress import Progress

    name = _name(args.name)

    progress = Progress("indexing")
    try:
        _with_registry(args, lambda registry: index(_cache(args), registry, name, progress))
    finally:
        progress.end()  # an error or Ctrl-C starts on a line of its own
    return 0


def cmd_unlink(args: argparse.Namespace) -> int:
    from modelfs.commands.progress import human_bytes

    name = _name(args.name)
    cache = _cache(args)
    if args.all_tags and not args.remote:
        raise UsageError("--all-tags goes with --remote")
    if args.remote:
        from modelfs.commands.remote_delete import delete_remote

        done = _with_registry(
            args, lambda registry: delete_remote(registry, name, all_tags=args.all_tags)
        )
        if done.manifest_deleted:
            print(f"deleted {name} on {name.host} (manifest {done.digest})")
        else:
            print(f"deleted {name} on {name.host} (the tag only; manifest {done.digest} stays)")
        if cache.read_manifest(name) is None:
            return 0
    result = cache.unlink(name)
    print(f"deleted {name} ({len(result.removed)} blobs, {human_bytes(result.freed_bytes)} freed)")
    # Not an error: the model is gone; blobs a manifest we cannot parse may name stay.
    for kept in result.kept:
        print(kept, file=sys.stderr)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """``rm A B…``: each model in turn; one that fails does not stop the others."""
    names = [_name(text) for text in args.names]  # all valid before any is removed
    failed = 0
    for text in args.names:
        one = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "names"})
        one.name = text
        try:
            cmd_unlink(one)
        except ModelfsError as e:
            if len(names) == 1 or args.debug or isinstance(e, UsageError):
                raise
            print(error_line(e), file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_cp(args: argparse.Namespace) -> int:
    source, target = _name(args.source), _name(args.target)
    cache = _cache(args)
    raw = cache.read_manifest(source)
    if raw is None:
        raise ModelNotFound(
            f"model {source} is not complete in the cache at {cache.root}; pull it first"
        )
    cache.write_manifest(target, raw)
    cache.unmark_lazy(target)  # a copy made on purpose is never evicted
    print(f"copied {source} to {target}")
    return 0


def cmd_du(args: argparse.Namespace) -> int:
    from modelfs.commands.inventory import UNNAMED_ROW, disk_usage, unnamed_partial_bytes
    from modelfs.commands.progress import human_bytes

    only = _name(args.name) if args.name else None
    cache = _cache(args)
    rows, total = disk_usage(cache, only)
    if only is not None and not rows:
        raise ModelNotFound(f"model {only} is not in the cache")
    unnamed = unnamed_partial_bytes(cache) if only is None else 0
    if args.json:
        import json

        from modelfs.commands.inventory import du_json

        print(json.dumps(du_json(rows, total, unnamed), indent=2))
        return 0
    width = max([len("NAME"), len(UNNAMED_ROW), *(len(r.display) for r in rows)])
    print(f"{'NAME':<{width}}  {'ON DISK':>9}")
    for r in rows:
        print(f"{r.display:<{width}}  {human_bytes(r.disk_bytes):>9}")
    if unnamed:
        # Partial blobs of removed models that another modelfs process still held.
        print(f"{UNNAMED_ROW:<{width}}  {human_bytes(unnamed):>9}")
        total += unnamed
    if only is None:
        print(f"{'total':<{width}}  {human_bytes(total):>9}  (blobs shared by models counted once)")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    import getpass

    from modelfs.formats.names import PartKind, check_part
    from modelfs.registry.auth import store_docker_credentials

    if args.password_stdin and not args.username:
        raise UsageError("--password-stdin needs --username (-u)")
    host = check_part(PartKind.HOST, args.host.removeprefix("https://").removeprefix("http://"))
    user = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
    if not user or not password:
        raise UsageError("login needs a username and a password")

    async def main() -> None:
        registry = _registry(args)
        try:
            await registry.check_login(host, user, password)
        finally:
            await registry.aclose()

    trio.run(main)
    path = store_docker_credentials(host, user, password, _docker_config_file())
    print(f"logged in to {host} as {user} (credentials in {path})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from modelfs.formats.names import PartKind, check_part
    from modelfs.registry.auth import remove_docker_credentials

    host = check_part(PartKind.HOST, args.host.removeprefix("https://").removeprefix("http://"))
    path = _docker_config_file()
    if remove_docker_credentials(host, path):
        print(f"removed the credentials for {host} from {path}")
    else:
        print(f"not logged in to {host} (no credentials for it in {path})")
    return 0


def _docker_config_file() -> Path:
    from modelfs.registry.auth import docker_config_path

    return docker_config_path()


def cmd_show(args: argparse.Namespace) -> int:
    import json

    from modelfs.commands import show

    name = _name(args.name)
    cache = _cache(args)
    if args.ctx is not None and args.ctx <= 0:
        raise UsageError(f"--ctx {args.ctx}: a context length is a positive number of tokens")
    report = _with_registry(args, lambda registry: show.show(cache, registry, name))
    if args.modelfile:
        paths = {
            row.file: str(cache.blob_path(row.layer.digest))
            for row in report.layers
            if row.cached_bytes == row.layer.size
        }

        def blob_files(stem: str) -> tuple[str, ...]:
            return tuple(
                paths.get(row.file, str(row.layer.digest))
                for row in report.layers
                if row.file.startswith(stem) and row.file.endswith(".gguf")
            )

        text = show.as_modelfile(
            report, paths.get(show.WEIGHTS_FILE), blob_files("adapter"), blob_files("projector")
        )
        if sys.stdout.isatty():
            # On a terminal, escaped as the text report is; redirected, exactly what
            # `create -f` reads back.
            from modelfs.commands.terminal import printable

            text = printable(text, keep="\n\t")
        print(text, end="")
    elif args.json:
        print(json.dumps(show.as_json(report, args.ctx), indent=2))
    else:
        print(show.as_text(report, args.ctx))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from modelfs.commands.inventory import UNNAMED_ROW, inventory, unnamed_partial_bytes
    from modelfs.commands.progress import human_bytes

    cache = _cache(args)
    rows = inventory(cache)
    unnamed = unnamed_partial_bytes(cache)
    if args.json:
        import json

        from modelfs.commands.inventory import ls_json

        print(json.dumps(ls_json(rows), indent=2))
        return 0
    if not rows and not unnamed:
        print("no models in the cache", file=sys.stderr)
        return 0
    width = max(len("NAME"), len(UNNAMED_ROW), *(len(r.display) for r in rows))
    print(f"{'NAME':<{width}}  {'ID':<12}  {'SIZE':>9}  {'VERIFY':<15}  PRESENT")
    for r in rows:
        pct = 100 * r.present_bytes / r.size_bytes if r.size_bytes else 100.0
        print(
            f"{r.display:<{width}}  {r.digest.short:<12}  {human_bytes(r.size_bytes):>9}  "
            f"{r.verify:<15}  {pct:5.1f}% ({human_bytes(r.present_bytes)})"
        )
    if unnamed:
        # Partial blobs of removed models that another modelfs process still held.
        print(f"{UNNAMED_ROW:<{width}}  {'-':<12}  {'-':>9}  {'-':<15}  {human_bytes(unnamed)}")
    return 0


# -- plumbing ----------------------------------------------------------------------------------


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose every file, the first and each one after a rollover, is mode 0600."""

    def _open(self) -> io.TextIOWrapper:
        from modelfs.fs.mountctl import open_log

        fd = open_log(self.baseFilename)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def _setup_logging(args: argparse.Namespace, *, foreground: bool) -> None:
    level = logging.DEBUG if args.debug else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    root.setLevel(level)
    handler: logging.Handler
    if getattr(args, "log", None) and args.ready_fd is not None:
        handler = PrivateRotatingFileHandler(
            args.log, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if _stderr_is_journal() else logging.Formatter(fmt))
    root.addHandler(handler)
    # One line per request would drown the log; httpx's own INFO lines are noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    pyfuse3_log = logging.getLogger("pyfuse3")
    pyfuse3_log.setLevel(logging.INFO if args.debug else logging.WARNING)
    pyfuse3_log.addFilter(_interrupted_reply_filter)


class JournalFormatter(logging.Formatter):
    """For stderr connected to the journal: a syslog priority prefix (``<3>``) the journal
    turns into the entry's level, and no timestamp of our own (the journal has one)."""

    PRIORITIES = (
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
    )

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
        # One entry per record: a traceback's lines stay in it, each with the prefix.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd gave us (``JOURNAL_STREAM=dev:inode``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = stream.partition(":")
    try:
        st = os.fstat(2)
        return bool(stream) and (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (OSError, ValueError):
        return False


def _interrupted_reply_filter(record: logging.LogRecord) -> bool:
    """pyfuse3 logs an ERROR when a reply finds its request gone (ENOENT): the kernel
    dropped it because the reader was interrupted or the mount went away. Not an error."""
    if "fuse_reply_" in record.getMessage() and "No such file or directory" in record.getMessage():
        record.levelno = logging.DEBUG
        record.levelname = "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


class Parser(argparse.ArgumentParser):
    """argparse with ``invalid choice 'unmount' (did you mean 'umount'?)`` for a command
    it does not know."""

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

    from modelfs.fs.mount_options import mount_options_help

    sp = sub.add_parser(
        "mount",
        help="mount registries at MOUNTPOINT",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="mount options (-o OPT[,OPT...]; also in fstab):\n"
        + "\n".join(f"  {line}" for line in mount_options_help().splitlines()),
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
    sp.set_defaults(func=cmd_mount)

    sp = sub.add_parser("umount", help="unmount a modelfs mount")
    sp.add_argument("mountpoint").complete = DIRECTORY  # type: ignore[attr-defined]
    sp.add_argument("--lazy", action="store_true", help="detach now even if files are open")
    sp.set_defaults(func=cmd_umount)

    sp = sub.add_parser(
        "status",
        help="live figures of running mounts: cache use, bytes fetched, hits and misses, "
        "blobs in flight, errors, evictions",
    )
    sp.add_argument("mountpoint", nargs="?", help="this mount only (default: every mount)")
    sp.add_argument("--json", action="store_true", help="the same figures as JSON")
    sp.set_defaults(func=cmd_status)

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
    sp.set_defaults(func=cmd_create)

    for verb, func, text in (
        ("push", cmd_push, "upload a cached model to its registry"),
        ("pull", cmd_pull, "download a whole model into the cache"),
        (
            "index",
            cmd_index,
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
        sp.set_defaults(func=func)

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
    sp.set_defaults(func=cmd_rm)

    sp = sub.add_parser("cp", help="give a cached model another name (as ollama cp does)")
    sp.add_argument("source", metavar="SRC")
    sp.add_argument("target", metavar="DST")
    cache_arg(sp)
    sp.set_defaults(func=cmd_cp)

    sp = sub.add_parser("du", help="bytes the cache's models take on disk, shared blobs once")
    sp.add_argument("name", nargs="?")
    sp.add_argument(
        "--json",
        action="store_true",
        help="the same as JSON: models (name, display, disk_bytes) and total_bytes",
    )
    cache_arg(sp)
    sp.set_defaults(func=cmd_du)

    sp = sub.add_parser("login", help="store credentials for a registry (as docker login does)")
    sp.add_argument("host")
    sp.add_argument("-u", "--username")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    registry_args(sp)
    sp.set_defaults(func=cmd_login)

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
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser(
        "ps", help="running mounts, one line each (modelfs status MNT for the full figures)"
    )
    sp.set_defaults(func=cmd_ps)

    sp = sub.add_parser(
        "logout", help="remove a registry's stored credentials (as docker logout does)"
    )
    sp.add_argument("host")
    sp.set_defaults(func=cmd_logout)

    sp = sub.add_parser("help", help="this help, or a command's: modelfs help pull")
    sp.add_argument("topic", nargs="?", metavar="COMMAND")
    sp.set_defaults(func=lambda args: _help(p, sub, args.topic))

    sp = sub.add_parser(
        "completion",
        help='shell completion for modelfs: eval "$(modelfs completion bash)" (setup installs it)',
    )
    sp.add_argument("shell", choices=SHELLS)
    sp.set_defaults(func=lambda args: _print(completion_script(p, args.shell)))

    sp = sub.add_parser(
        "manpage", help="the manual page modelfs(1) as roff (setup installs it: man modelfs)"
    )
    sp.set_defaults(func=lambda args: _print(manpage(p, __version__)))

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
    sp.set_defaults(func=cmd_ls)
    # --debug after the command too (`modelfs pull --debug NAME`); SUPPRESS keeps one given
    # before the command when it is not repeated.
    for command in {id(c): c for c in sub.choices.values()}.values():
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return p


def _print(text: str) -> int:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _help(parser: argparse.ArgumentParser, sub: Any, topic: str | None) -> int:
    """``modelfs help [COMMAND]``: the help ``modelfs [COMMAND] --help`` prints."""
    if topic is None:
        parser.print_help()
    elif topic in sub.choices:
        sub.choices[topic].print_help()
    else:
        parser.error(unknown_command(topic, list(sub.choices)))
    return 0


# mount(8) options that become modelfs flags when mount.fuse3 runs us (an fstab line).
HELPER_FLAG_OPTIONS = {
    "cache": "--cache",
    "config": "--config",
    "key": "--key",
    "ca_file": "--ca-file",
    "log": "--log",
}


# The names mount(8) runs a helper by for ``-t modelfs`` / ``-t fuse.modelfs`` (a link to modelfs).
HELPER_PROGRAMS = {"mount.modelfs", "mount.fuse.modelfs"}


def mount_helper_argv(
    argv: list[str], commands: set[str], program: str = "modelfs"
) -> list[str] | None:
    """``modelfs SOURCE MOUNTPOINT -o OPTS`` (how mount.fuse3 runs the program of an fstab
    line of type ``fuse.modelfs``) as the ``mount`` command it means; None for other argv.

    Only that exact shape is a helper call, with ``-o`` present (mount.fuse3 always passes it:
    it adds ``dev``/``suid`` or their ``no`` forms), or any ``SOURCE MOUNTPOINT [-o OPTS]``
    when run as ``mount.modelfs``/``mount.fuse.modelfs``: a mistyped command
    (``modelfs unmount DIR``) must not mount anything.

    ``cache=``, ``config=``, ``key=``, ``ca_file=`` and ``log=`` become their flags, ``debug``
    ``--debug``; every other option goes to ``mount -o`` (which ignores mount(8)'s standard
    ones). SOURCE is only a label. As mount(8) does, the mount goes over whatever the
    directory holds.
    """
    as_helper = Path(program).name in HELPER_PROGRAMS
    if len(argv) < 2 or argv[0] in commands or argv[0].startswith("-"):
        return None
    _source, mountpoint, *rest = argv
    if not as_helper and not any(a == "-o" or (a.startswith("-o") and len(a) > 2) for a in rest):
        return None
    options: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "-o" and i + 1 < len(rest):
            options += rest[i + 1].split(",")
            i += 2
        elif arg.startswith("-o") and len(arg) > 2:
            options += arg[2:].split(",")
            i += 1
        elif arg in ("-n", "-s", "-v", "-f"):  # no mtab, sloppy, verbose, fake: mount(8)'s
            i += 1
        else:
            raise UsageError(f"as a mount helper: unexpected argument {arg!r}")
    flags: list[str] = []
    kept: list[str] = []
    debug = False
    for opt in (o.strip() for o in options):
        key, eq, value = opt.partition("=")
        if key in HELPER_FLAG_OPTIONS and eq:
            flags += [HELPER_FLAG_OPTIONS[key], value]
        elif key == "debug" and not eq:
            debug = True
        elif opt:
            kept.append(opt)
    out = ["--debug"] if debug else []
    out += ["mount", mountpoint, *flags, "--allow-non-empty"]
    if kept:
        out += ["-o", ",".join(kept)]
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Output still buffered goes now: a reader that left shows here, not at exit.
            if sys.stdout is not None:  # None when started with fd 1 closed
                sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """Whoever read our output has left (``modelfs show NAME | head -2``): end quietly, with
    the status of a command that SIGPIPE ended, as cat, git or ollama do. Python ignores
    SIGPIPE (its sockets need that), so the closed pipe arrives as BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):
        # Output left in stdout's buffer would fail again when Python flushes it at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        helper = mount_helper_argv(argv, _command_names(parser), sys.argv[0])
    except UsageError as e:
        parser.exit(2, error_line(e) + "\n")
    args = parser.parse_args(helper if helper is not None else argv)
    if args.command != "mount" or not args.foreground:
        stderr = logging.StreamHandler()
        stderr.setFormatter(PrintableFormatter("modelfs: %(message)s"))
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.WARNING, handlers=[stderr]
        )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        try:
            return func(args)
        except BaseExceptionGroup as group:
            # A failure inside a nursery arrives wrapped: report the error itself.
            raise _first_error(group) from None
    except UsageError as e:
        parser.exit(2, error_line(e) + "\n")
    except ModelfsError as e:
        if args.debug:
            raise
        print(error_line(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("modelfs: interrupted", file=sys.stderr)
        return 130
    return 0


def error_line(error: BaseException | str) -> str:
    """``modelfs: <message>``, one line whatever the message quotes: a registry's own error
    text, a model's name. Its control characters (escape sequences, newlines) are escaped."""
    return f"modelfs: {printable(str(error))}"


class PrintableFormatter(logging.Formatter):
    """The CLI's log lines on the terminal, escaped as its error lines are (a traceback with
    --debug is added after, as it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def _command_names(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error a user should see from a group: a KeyboardInterrupt, else a modelfs error,
    else a closed pipe."""
    for kind in (KeyboardInterrupt, ModelfsError, BrokenPipeError):
        match = group.subgroup(lambda e, kind=kind: isinstance(e, kind))
        while isinstance(match, BaseExceptionGroup):
            match = match.exceptions[0]
        if match is not None:
            return match
    return group


if __name__ == "__main__":
    sys.exit(main())
