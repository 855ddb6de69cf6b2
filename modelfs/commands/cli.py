"""The ``modelfs`` command: what each command does (mount, umount, create, push, pull, unlink,
ls, ...) and the dispatch from a parsed command line to it. The grammar is ``parser``'s, the
log set-up ``logsetup``'s, the mount-helper argv ``mounthelper``'s.

Known errors print ``modelfs: <message>`` and exit 1 (among them what a Modelfile or a
``--params`` value says, ``InputInvalid``); a traceback only with ``--debug``. Usage errors
(a command line that does not fit together) exit 2. Output to a reader that has left (``| head``) ends the
command quietly with 141, the status SIGPIPE gives other commands.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelfs import __version__
from modelfs.commands.logsetup import setup_command_logging
from modelfs.commands.mounthelper import mount_helper_argv
from modelfs.commands.parser import build_parser, subcommands, unknown_command
from modelfs.commands.terminal import printable
from modelfs.errors import ModelfsError, ModelNotFound, UsageError

if TYPE_CHECKING:
    from modelfs.blobs.blobcache import BlobCache
    from modelfs.formats.names import Name

T = TypeVar("T")

log = logging.getLogger("modelfs")

# Each command imports what it needs when it runs, not at start-up: `modelfs --help`, `ls`
# or `completion` need no HTTP client, trio or FUSE, and a pull no FUSE (importing them all
# took a third of a second before the first request). tests/unit/test_startup.py.


def _insecure_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    env = os.environ.get("MODELFS_INSECURE_REGISTRIES", "")
    hosts = [h.strip() for h in env.split(",") if h.strip()]
    hosts += list(getattr(args, "insecure_registry", None) or [])
    return tuple(hosts)


def _cache(args: argparse.Namespace) -> BlobCache:
    from modelfs.blobs.blobcache import BlobCache, default_root

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
    import trio

    async def main() -> T:
        registry = _registry(args)
        try:
            return await work(registry)
        finally:
            await registry.aclose()

    return trio.run(main)


def _name(text: str) -> Name:
    from modelfs.formats.names import parse_name

    return parse_name(text)


# -- commands ----------------------------------------------------------------------------------


def cmd_mount(args: argparse.Namespace) -> int:
    import trio

    from modelfs.blobs.blobcache import default_root
    from modelfs.commands.logsetup import setup_daemon_logging
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

    setup_daemon_logging(args, foreground=True)
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
    import trio

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


def cmd_help(args: argparse.Namespace) -> int:
    """``modelfs help [COMMAND]``: the help ``modelfs [COMMAND] --help`` prints."""
    parser = build_parser()
    commands = subcommands(parser)
    if args.topic is None:
        parser.print_help()
    elif args.topic in commands:
        commands[args.topic].print_help()
    else:
        parser.error(unknown_command(args.topic, list(commands)))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from modelfs.commands.completion import completion_script

    return _print(completion_script(build_parser(), args.shell))


def cmd_manpage(args: argparse.Namespace) -> int:
    from modelfs.commands.completion import manpage

    return _print(manpage(build_parser(), __version__))


def _print(text: str) -> int:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


# What each command of the parser runs, by the name (or alias) it was given as.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "mount": cmd_mount,
    "umount": cmd_umount,
    "status": cmd_status,
    "create": cmd_create,
    "push": cmd_push,
    "pull": cmd_pull,
    "index": cmd_index,
    "unlink": cmd_rm,
    "rm": cmd_rm,
    "cp": cmd_cp,
    "du": cmd_du,
    "login": cmd_login,
    "show": cmd_show,
    "ps": cmd_ps,
    "logout": cmd_logout,
    "help": cmd_help,
    "completion": cmd_completion,
    "manpage": cmd_manpage,
    "ls": cmd_ls,
    "list": cmd_ls,
}


# -- plumbing ----------------------------------------------------------------------------------


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
        helper = mount_helper_argv(argv, set(subcommands(parser)), sys.argv[0])
    except UsageError as e:
        parser.exit(2, error_line(e) + "\n")
    args = parser.parse_args(helper if helper is not None else argv)
    if args.command != "mount" or not args.foreground:
        setup_command_logging(debug=args.debug)
    func = COMMANDS[args.command]
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
