"""Every ``-o`` option and every mount flag that carries a number or a size is checked before
anything mounts: a value out of range is one line naming the option, exit 2 (as argparse's
usage errors), never a daemon that starts and then misbehaves (``chunk_kb=0`` made every
large open EIO with a traceback in the log; ``streams=1000000``, ``stall_seconds=nan`` and
``lookup_ttl=-5`` were taken as they came)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelfs.commands import cli
from modelfs.fs.daemon import parse_mount_options

BAD_OPTIONS = [
    "chunk_kb=0",
    "chunk_kb=-4096",
    "chunk_kb=100",  # not a power of two
    "chunk_kb=32",  # below the chunk index's smallest chunk
    "chunk_kb=1048576",  # above its largest
    "stall_seconds=nan",
    "stall_seconds=inf",
    "stall_seconds=0",
    "stall_seconds=-1",
    "stall_seconds=1e9",
    "lookup_ttl=-5",
    "lookup_ttl=nan",
    "lookup_ttl=inf",
    "lookup_ttl=1e12",
    "streams=1000000",
    "streams=0",
    "streams=-3",
    "streams=2.5",
    "read_ahead_kb=-1",
    "read_ahead_kb=99999999999",
    "read_ahead_kb=lots",
    "max_background=-1",
    "max_background=70000",
    "min_rate=0",
    "min_rate=-64K",
    "min_rate=inf",
    "min_rate=nan",
    "min_rate=5T",
    "cache_max=inf",
    "cache_max=1e400",
    "cache_max=nanG",
    "cache_max=-1G",
    "cache_max=1e30G",
    "min_free=inf",
    "min_free=nan%",
    "min_free=100%",
    "min_free=-5%",
    "registries=",
    "registries=a/b",
    "registries=good.lan+../evil",
    "insecure_registry=",
    "insecure_registry=http://x",
    "metrics=127.0.0.1:99999",
]


def key_of(opt: str) -> str:
    return opt.partition("=")[0]


def mount_error(tmp_path: Path, capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """Run ``modelfs mount`` in this process, nothing mounted whatever it says; its exit code
    and stderr."""
    monkeypatch.setattr("trio.run", lambda *a: pytest.fail("it went on to mount"))
    monkeypatch.setattr(
        "modelfs.fs.mountctl.start_daemon", lambda *a: pytest.fail("it started a daemon")
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "mnt").mkdir(exist_ok=True)
    base = ["mount", str(tmp_path / "mnt"), "--cache", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as exited:
        cli.main([*base, *args])
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("opt", BAD_OPTIONS)
def test_a_bad_option_value_is_one_line_naming_it_with_exit_2(tmp_path, capsys, monkeypatch, opt):
    code, err = mount_error(tmp_path, capsys, monkeypatch, "-o", f"links=no,{opt}")
    assert code == 2, f"-o {opt} was accepted: {err}"
    assert err.count("\n") == 1 and err.startswith("modelfs: "), err
    assert f"-o {key_of(opt)}" in err, f"the error does not name -o {key_of(opt)}: {err}"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--cache-max", "inf"),
        ("--cache-max", "-1G"),
        ("--cache-max", "1G,allow_other"),  # the daemon gets it back as -o: no smuggling
        ("--min-free", "nan%"),
        ("--min-free", "200%"),
        ("--metrics", "127.0.0.1:70000"),
        ("--metrics", "127.0.0.1:9100,share_credentials"),
    ],
)
def test_a_bad_mount_flag_is_one_line_naming_it_with_exit_2(
    tmp_path, capsys, monkeypatch, flag, value
):
    code, err = mount_error(tmp_path, capsys, monkeypatch, f"{flag}={value}")
    assert code == 2, f"{flag} {value} was accepted: {err}"
    assert err.count("\n") == 1 and err.startswith(f"modelfs: {flag} "), err


def test_the_fstab_form_checks_its_options_too(tmp_path):
    """mount.fuse3 runs ``modelfs SOURCE MNT -o …``: the same line, the same exit code."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        result = run_fstab_form(tmp_path, mnt)
    finally:
        if os.path.ismount(mnt):  # a value that was taken: the daemon mounted
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("modelfs: -o chunk_kb takes a power of two"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def run_fstab_form(tmp_path: Path, mnt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfs", "modelfs", str(mnt), "-o",
         f"ro,cache={tmp_path / 'cache'},chunk_kb=0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path / "run"),
             "PYTHONPATH": ":".join(sys.path)},
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("opt", "expected"),
    [
        ("chunk_kb=64", {"chunk_bytes": 64 << 10}),
        ("chunk_kb=65536", {"chunk_bytes": 64 << 20}),
        ("stall_seconds=0.5", {"stall_seconds": 0.5}),
        ("lookup_ttl=0", {"lookup_ttl_seconds": 0.0}),
        ("streams=32", {"max_streams": 32}),
        ("read_ahead_kb=0", {"read_ahead_kb": 0}),
        ("read_ahead_kb=", {"read_ahead_kb": None}),
        ("max_background=", {"max_background": None}),
        ("min_rate=1", {"min_bytes_per_second": 1}),
        ("cache_max=0", {"cache_max": 0}),
        ("min_free=99.5%", {"min_free": 0, "min_free_percent": 99.5}),
        ("registries=a.lan+127.0.0.1:5000", {"registries": ("a.lan", "127.0.0.1:5000")}),
        ("insecure_registry=Reg.lan:5000", {"insecure_hosts": ("Reg.lan:5000",)}),
        ("metrics=127.0.0.1:0", {"metrics": ("127.0.0.1", 0)}),
    ],
)
def test_values_at_the_edges_of_their_ranges_are_taken(opt, expected):
    assert parse_mount_options([opt]) == expected


@pytest.mark.parametrize(
    ("key", "text"), [("cache_max", "inf"), ("cache_max", "1e400"), ("min_free", "nan%")]
)
def test_a_bound_in_the_configuration_file_is_checked_alike(tmp_path, key, text):
    """config.toml's cache_max / min_free, read at mount and again on SIGHUP: one line naming
    the file and the key, not an OverflowError (which on reload ended the signal watcher)."""
    from modelfs.errors import UsageError
    from modelfs.fs.daemon import MountOptions, cache_bounds
    from modelfs.registry.config import FileConfig

    file = FileConfig(path=tmp_path / "config.toml", **{key: text})
    with pytest.raises(UsageError) as raised:
        cache_bounds(MountOptions(mountpoint=tmp_path, cache_root=tmp_path), file)
    assert str(raised.value).startswith(f"the configuration {file.path}: {key} takes a size")
