"""The server pieces without a mount: mount(8)'s helper call translated to `modelfs mount`, the
journal's log format, cache bounds from the configuration file and -o."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from modelfs.blobs.eviction import parse_size
from modelfs.commands import cli
from modelfs.commands.cli import main
from modelfs.commands.logsetup import JournalFormatter
from modelfs.commands.mounthelper import mount_helper_argv
from modelfs.commands.parser import build_parser, subcommands
from modelfs.errors import UsageError
from modelfs.fs.daemon import MountOptions, cache_bounds
from modelfs.registry.config import FileConfig, load_config

COMMANDS = {"mount", "umount", "ls", "show", "create"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["modelfs", "/mnt/models", "-o", "ro,allow_other,cache=/var/cache/modelfs,dev,suid"],
            [
                "mount",
                "/mnt/models",
                "--cache",
                "/var/cache/modelfs",
                "--allow-non-empty",
                "-o",
                "ro,allow_other,dev,suid",
            ],
        ),
        (
            ["modelfs", "/m", "-oro", "-o", "config=/etc/m.toml,key=/k,ca_file=/ca,log=/l,debug"],
            [
                "--debug",
                "mount",
                "/m",
                "--config",
                "/etc/m.toml",
                "--key",
                "/k",
                "--ca-file",
                "/ca",
                "--log",
                "/l",
                "--allow-non-empty",
                "-o",
                "ro",
            ],
        ),
        (
            ["modelfs", "/m", "-n", "-s", "-o", "dev"],
            ["mount", "/m", "--allow-non-empty", "-o", "dev"],
        ),
        (
            ["modelfs", "/m", "-o", "blobs_view=yes"],
            ["mount", "/m", "--allow-non-empty", "-o", "blobs_view=yes"],
        ),
        (["registry", "/m", "-o", "x-systemd.automount,verify=deferred"], None),
    ],
)
def test_mount_helper_argv(argv: list[str], expected: list[str] | None) -> None:
    got = mount_helper_argv(argv, COMMANDS)
    if expected is None:  # any source works; options pass through
        assert got == [
            "mount",
            "/m",
            "--allow-non-empty",
            "-o",
            "x-systemd.automount,verify=deferred",
        ]
    else:
        assert got == expected


def test_commands_typos_and_flags_are_not_helper_calls() -> None:
    assert mount_helper_argv(["mount", "/m"], COMMANDS) is None
    assert mount_helper_argv(["--debug", "ls"], COMMANDS) is None
    assert mount_helper_argv(["ls"], COMMANDS) is None
    # Without -o it is not how mount.fuse3 calls a helper: a mistyped command, never a mount.
    assert mount_helper_argv(["unmount", "/m"], COMMANDS) is None
    assert mount_helper_argv(["pul", "smolchat"], COMMANDS) is None
    assert mount_helper_argv(["modelfs", "/m", "--bogus"], COMMANDS) is None
    with pytest.raises(UsageError, match="unexpected argument '--bogus'"):
        mount_helper_argv(["modelfs", "/m", "-o", "ro", "--bogus"], COMMANDS)


def test_run_as_mount_modelfs_any_source_mountpoint_is_a_helper_call() -> None:
    for program in ("/sbin/mount.modelfs", "/usr/sbin/mount.fuse.modelfs"):
        assert mount_helper_argv(["models", "/m"], COMMANDS, program) == [
            "mount",
            "/m",
            "--allow-non-empty",
        ]


def test_the_parser_knows_every_command_the_helper_check_uses() -> None:
    parser = build_parser()
    # A helper call never shadows a command: `modelfs ls /x` stays ls (and fails as ls would).
    assert parser.parse_args(["show", "a/b"]).command == "show"
    with pytest.raises(SystemExit) as info:
        main(["modelfs", "/nonexistent-mountpoint", "-o", "no_such_option"])
    assert info.value.code == 2


def test_every_command_the_parser_takes_runs_something() -> None:
    # The grammar (parser) and what runs (cli) are apart: a command without a handler would
    # parse and then fail with a KeyError instead of running.
    assert set(subcommands(build_parser())) == set(cli.COMMANDS)


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("modelfs.fs.daemon", level, __file__, 1, msg, (), exc_info)


def test_journal_lines_carry_the_level_and_no_timestamp() -> None:
    f = JournalFormatter()
    assert f.format(record(logging.INFO, "mounted /m")) == "<6>modelfs.fs.daemon: mounted /m"
    assert f.format(record(logging.WARNING, "w")).startswith("<4>")
    assert f.format(record(logging.ERROR, "e")).startswith("<3>")
    assert f.format(record(logging.CRITICAL, "c")).startswith("<2>")
    assert f.format(record(logging.DEBUG, "d")).startswith("<7>")
    lines = f.format(record(logging.ERROR, "failed", exc=True)).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def options(**kw: object) -> MountOptions:
    return MountOptions(mountpoint=Path("/m"), cache_root=Path("/c"), **kw)  # type: ignore[arg-type]


def test_cache_bounds_come_from_the_file_unless_o_sets_them(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('cache_max = "200G"\nmin_free = "5%"\n')
    file = load_config(path)
    assert (file.cache_max, file.min_free) == ("200G", "5%")
    b = cache_bounds(options(), file)
    assert b.max_bytes == parse_size("200G")[0]
    assert b.min_free_percent == 5.0
    fixed = cache_bounds(options(cache_max=1 << 30, fixed_bounds=frozenset({"cache_max"})), file)
    assert fixed.max_bytes == 1 << 30 and fixed.min_free_percent == 5.0
    defaults = cache_bounds(options(), FileConfig())
    assert (defaults.max_bytes, defaults.min_free_percent) == (None, 10.0)
    with pytest.raises(UsageError, match=r"config\.toml: cache_max takes a size .*, not 'lots'"):
        cache_bounds(options(), FileConfig(path=path, cache_max="lots"))
    path.write_text("cache_max = [1]\n")
    with pytest.raises(UsageError, match="cache_max must be a size"):
        load_config(path)
