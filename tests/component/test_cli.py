"""The command line as users type it: a mistyped command is an error that mounts nothing,
the usual spellings (-v, list, help, logout, rm A B, --debug after the command), pulls by
digest that invent no tag, login flags refused as docker refuses them, and Ctrl-C during a
pull stopping at once with its progress kept."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.mount import modelfs_cmd, one_line_error, run_modelfs
from support.proxy import Proxy
from support.registry import RegistryProcess

from modelfs import __version__
from modelfs.blobs.blobcache import BlobCache
from modelfs.commands.inventory import present_bytes
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import parse_name

# Generous for a loaded machine: a pull asked to stop must be gone well within this.
INTERRUPT_SECONDS = 5.0
WAIT_SECONDS = 60.0


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A user of their own: home, Docker config, cache, runtime dir; no config file."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    return {
        **os.environ,
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "MODELFS_CONFIG": str(tmp_path / "config.toml"),
        "OLLAMA_MODELS": str(tmp_path / "cache"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line of a command refused as a usage error (exit 2)."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def detach_if_mounted(path: Path) -> bool:
    """Undo a mount a mistyped command made; whether there was one."""
    if not os.path.ismount(path):
        return False
    subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
    return True


@pytest.mark.parametrize(
    ("typed", "meant"), [("unmount", "umount"), ("pul", "pull"), ("mont", "mount")]
)
def test_a_mistyped_command_mounts_nothing_and_says_what_was_meant(
    tmp_path: Path, env: dict[str, str], typed: str, meant: str
) -> None:
    work = tmp_path / "work"
    (work / "smolchat").mkdir(parents=True)
    try:
        result = run_modelfs(typed, "smolchat", env=env, cwd=work, check=False, timeout=60)
    finally:
        mounted = detach_if_mounted(work / "smolchat")
    assert not mounted, f"`modelfs {typed} smolchat` mounted a filesystem on smolchat/"
    line = usage_error(result)
    assert line.endswith(f"invalid choice {typed!r} (did you mean {meant!r}?)"), result.stderr


@pytest.mark.parametrize("argv", [("run", "M"), ("serve",), ("stop", "M")])
def test_a_command_modelfs_does_not_have_is_an_unknown_command(
    tmp_path: Path, env: dict[str, str], argv: tuple[str, ...]
) -> None:
    result = run_modelfs(*argv, env=env, cwd=tmp_path, check=False, timeout=60)
    line = usage_error(result)
    assert f"invalid choice {argv[0]!r}" in line and "modelfs help" in line, result.stderr
    assert "mountpoint" not in result.stderr


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version_flags(env: dict[str, str], flag: str) -> None:
    assert run_modelfs(flag, env=env).stdout.strip() == f"modelfs {__version__}"


def test_help_prints_the_commands_or_one_commands_help(env: dict[str, str]) -> None:
    top = run_modelfs("help", env=env).stdout
    assert top.startswith("usage: modelfs") and "logout" in top and "ps" in top
    pull = run_modelfs("help", "pull", env=env).stdout
    assert (
        pull.startswith("usage: modelfs pull")
        and pull == run_modelfs("pull", "--help", env=env).stdout
    )
    line = usage_error(run_modelfs("help", "pul", env=env, check=False))
    assert line.endswith("invalid choice 'pul' (did you mean 'pull'?)")


def create(name: str, gguf: Path, env: dict[str, str]) -> None:
    run_modelfs("create", name, "--gguf", str(gguf), env=env)


def test_list_is_ls_and_rm_removes_several(small_gguf: Path, env: dict[str, str]) -> None:
    names = [f"127.0.0.1:5000/library/m{i}:1" for i in range(3)]
    for name in names:
        create(name, small_gguf, env)
    ls = run_modelfs("ls", env=env).stdout
    assert run_modelfs("list", env=env).stdout == ls and all(n in ls for n in names)

    run_modelfs("rm", names[0], names[1], env=env)
    ls = run_modelfs("list", env=env).stdout
    assert names[0] not in ls and names[1] not in ls and names[2] in ls

    # One that is not there is reported; the others are still removed; the exit says so.
    result = run_modelfs("rm", "127.0.0.1:5000/library/gone:1", names[2], env=env, check=False)
    assert result.returncode == 1 and "gone:1" in result.stderr, result.stderr
    assert "no models in the cache" in run_modelfs("ls", env=env).stderr


def test_debug_works_after_the_command_too(registry: RegistryProcess, env: dict[str, str]) -> None:
    missing = f"{registry.host}/library/nothere:1"
    quiet = run_modelfs("pull", missing, env=env, check=False)
    assert "Traceback" not in quiet.stderr and one_line_error(quiet)
    for argv in (("--debug", "pull", missing), ("pull", "--debug", missing)):
        loud = run_modelfs(*argv, env=env, check=False)
        assert loud.returncode == 1 and "Traceback" in loud.stderr, (argv, loud.stderr)


def test_config_named_on_the_command_line_must_exist(
    registry: RegistryProcess, smollm2_pushed: str, env: dict[str, str], tmp_path: Path
) -> None:
    result = run_modelfs(
        "pull", smollm2_pushed, "--config", str(tmp_path / "nonexistent.toml"), env=env, check=False
    )
    assert usage_error(result) == f"modelfs: --config {tmp_path / 'nonexistent.toml'}: no such file"
    assert not (tmp_path / "cache" / "blobs").exists() or not any(
        (tmp_path / "cache" / "blobs").iterdir()
    ), "the pull went ahead"


def test_login_password_stdin_needs_a_username_at_once(
    registry: RegistryProcess, env: dict[str, str]
) -> None:
    result = subprocess.run(
        modelfs_cmd("login", registry.host, "--password-stdin"),
        input="secret\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Username" not in result.stdout, "it prompted for a username"
    assert usage_error(result) == "modelfs: --password-stdin needs --username (-u)"


def test_logout_removes_only_that_hosts_credentials(
    basic_registry: RegistryProcess, small_gguf: Path, env: dict[str, str], tmp_path: Path
) -> None:
    host = basic_registry.host
    name = f"{host}/library/small:logout"
    config = Path(env["DOCKER_CONFIG"]) / "config.json"
    other = base64.b64encode(b"bob:hunter2").decode()
    config.write_text(
        json.dumps(
            {"auths": {"other.example:5000": {"auth": other}}, "credsStore": "", "x": [1, 2]}
        )
    )
    login = subprocess.run(
        modelfs_cmd("login", host, "-u", "alice", "--password-stdin"),
        input="secret\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    create(name, small_gguf, env)
    run_modelfs("push", name, env=env)

    out = run_modelfs("logout", host, env=env).stdout
    assert out.strip() == f"removed the credentials for {host} from {config}"
    doc = json.loads(config.read_text())
    assert doc["auths"] == {"other.example:5000": {"auth": other}}
    assert doc["x"] == [1, 2], "logout rewrote settings that are not credentials"
    line = one_line_error(run_modelfs("push", name, env=env, check=False))
    assert f"modelfs login {host}" in line, "the registry was still given credentials"

    again = run_modelfs("logout", host, env=env)
    assert again.stdout.strip() == f"not logged in to {host} (no credentials for it in {config})"


def manifest_digest(name: str, env: dict[str, str], tmp_path: Path) -> str:
    cache = tmp_path / "probe"
    run_modelfs("pull", name, "--cache", str(cache), env=env)
    raw = BlobCache(cache).read_manifest(parse_name(name))
    assert raw is not None
    return str(parse_manifest(raw).digest)


def test_pull_by_digest_invents_no_tag(
    smollm2_pushed: str, env: dict[str, str], tmp_path: Path
) -> None:
    digest = manifest_digest(smollm2_pushed, env, tmp_path)
    repo = smollm2_pushed.rpartition(":")[0]
    cache = BlobCache(tmp_path / "cache")

    line = usage_error(run_modelfs("pull", f"{repo}@{digest}", env=env, check=False))
    assert f"{repo}:TAG@{digest}" in line, line
    assert cache.read_manifest(parse_name(f"{repo}:latest")) is None
    assert cache.read_manifest(parse_name(f"{repo}:latest"), pending=True) is None

    run_modelfs("pull", f"{repo}:pinned@{digest}", env=env)
    raw = cache.read_manifest(parse_name(f"{repo}:pinned"))
    assert raw is not None and str(parse_manifest(raw).digest) == digest
    assert cache.read_manifest(parse_name(f"{repo}:latest")) is None, "a :latest was written"
    ls = run_modelfs("ls", env=env).stdout
    assert ":pinned" in ls and "latest" not in ls


def wait_for(predicate, what: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def saved_bytes(cache: Path, name: str) -> int:
    """Bytes of the model the cache holds checked and saved (what ``ls`` counts as present)."""
    bc = BlobCache(cache)
    raw = bc.read_manifest(parse_name(name), pending=True)
    if raw is None:
        return 0
    return sum(present_bytes(bc, layer) for layer in parse_manifest(raw).blobs)


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_slow_pull_at_once_and_the_next_pull_resumes(
    proxy: Proxy, smollm2_pushed: str, env: dict[str, str], tmp_path: Path
) -> None:
    name = f"{proxy.host}/library/smollm2:135m"
    # 1 MB/s per connection: the whole model takes minutes.
    proxy.set_faults([{"path": "/blobs/", "trickle_bps": 1_000_000}])
    cache = tmp_path / "cache"
    pull = subprocess.Popen(
        modelfs_cmd("pull", name, "--insecure-registry", proxy.host, "--cache", str(cache)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # As from a terminal: a suite started in the background by a shell (`… &`) ignores
        # SIGINT, and a child inherits that (POSIX; Python then installs no handler).
        preexec_fn=_sigint_as_from_a_terminal,
    )
    try:
        # Some of the model is in (a chunk checked and saved), far from all of it.
        wait_for(lambda: saved_bytes(cache, name) >= 4 << 20, "the pull to save a chunk")
        pull.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            _, stderr = pull.communicate(timeout=INTERRUPT_SECONDS * 4)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the pull was still running {INTERRUPT_SECONDS * 4:.0f}s after Ctrl-C"
            ) from None
        took = time.monotonic() - sent
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.communicate()
    assert took < INTERRUPT_SECONDS, f"the pull took {took:.1f}s to stop after Ctrl-C"
    assert pull.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "modelfs: interrupted", stderr
    assert "Traceback" not in stderr
    assert BlobCache(cache).read_manifest(parse_name(name)) is None, "the pull had finished"
    kept = saved_bytes(cache, name)
    assert kept >= 4 << 20, "the interrupted pull lost what it had fetched"

    proxy.clear_faults()
    proxy.reset()
    run_modelfs("pull", name, "--insecure-registry", proxy.host, "--cache", str(cache), env=env)
    raw = BlobCache(cache).read_manifest(parse_name(name))
    assert raw is not None
    total = parse_manifest(raw).total_bytes
    again = proxy.blob_bytes()
    assert again <= total - kept, (
        f"the second pull fetched {again} bytes of a {total}-byte model of which "
        f"{kept} were kept: it did not resume"
    )


def test_mount_help_says_what_a_size_unit_means() -> None:
    text = " ".join(run_modelfs("mount", "--help").stdout.split())
    assert "500MB = 500,000,000 bytes" in text and "500MiB or 500M = 500 * 2^20" in text, text


# A value each option takes, for the check that what mount --help lists is what mount reads.
OPTION_SAMPLES = {
    "registries": "a.lan+b.lan:5000",
    "insecure_registry": "reg.lan:5000",
    "stall_seconds": "30",
    "min_rate": "64K",
    "lookup_ttl": "30",
    "streams": "4",
    "chunk_kb": "4096",
    "read_ahead_kb": "4096",
    "max_background": "64",
    "cache_max": "500MB",
    "min_free": "10%",
    "metrics": "127.0.0.1:9100",
}


def test_mount_help_lists_every_option_mount_reads() -> None:
    """Before: 9 of the options, in a hand-written line that did not follow new ones."""
    from modelfs.blobs.fetchcontext import MAX_STREAMS
    from modelfs.errors import UsageError
    from modelfs.fs.mount_options import MOUNT_OPTIONS, parse_mount_options

    text = run_modelfs("mount", "--help").stdout
    listed = text.split("mount options (-o OPT[,OPT...]; also in fstab):\n", 1)[1].splitlines()
    usages = [line.split()[0] for line in listed if line.startswith("  ")]
    assert usages == [o.usage for o in MOUNT_OPTIONS]
    assert len(usages) >= 19
    for usage in usages:
        key, eq, values = usage.partition("=")
        if not eq:
            opt = key
        elif "|" in values and key not in OPTION_SAMPLES:
            opt = f"{key}={values.split('|')[0]}"
        else:
            opt = f"{key}={OPTION_SAMPLES[key]}"
        assert parse_mount_options([opt]), f"mount --help lists {usage} but -o {opt} is refused"
    streams = next(line for line in listed if line.split()[:1] == ["streams=N"])
    assert f"(default {MAX_STREAMS})" in streams, streams
    with pytest.raises(UsageError):
        parse_mount_options(["allow_other=1"])
