"""systemd/modelfs@.service under a real systemd 252: start, crash, stop, reload, verify.

Each test boots a fresh container (support/nspawn.py), copies the unit files that ship in
``systemd/`` into its /etc/systemd/system unchanged, and mounts the session registry's SmolLM2
at /mnt/models through ``modelfs@mnt-models.service``. The registries run on the host's
loopback, which the container shares.
"""

from __future__ import annotations

import json
import syslog
from collections.abc import Callable

from support.nspawn import Container, daemon_problems, install_units, journal
from support.proxy import Proxy
from support.registry import RegistryProcess

from modelfs.fs.mountctl import BLOBS_VIEWS_DIR

UNIT = "modelfs@mnt-models.service"
MNT = "/mnt/models"
TAG_DIR = "library/smollm2/135m"
PARAMS = '{"temperature":0.2}'
SYSTEM = "You are helpful."
CACHE = "/var/lib/modelfs/models"  # the unit's OLLAMA_MODELS
ENV_FILE = "/etc/modelfs/modelfs.env"
CONFIG = "/etc/modelfs/config.toml"
RESTART_SECONDS = 60

Boot = Callable[..., Container]


# The unit's own default MODELFS_ARGS is what test_start_returns_once_the_mount_is_readable
# runs with; the other tests set it in the env file, as an administrator would.
ALLOW_OTHER_ENV = "MODELFS_ARGS=-o allow_other\n"


def booted(container_factory: Boot, env: str | None = None) -> Container:
    container = container_factory()
    if env is not None:
        container.write(ENV_FILE, env)
    assert "modelfs@.service" in install_units(container)
    return container


def start(container: Container) -> None:
    result = container.run("systemctl", "start", UNIT, check=False)
    assert result.returncode == 0, f"systemctl start {UNIT} failed:\n{journal(container, UNIT)}"


def reload(container: Container) -> None:
    result = container.run("systemctl", "reload", UNIT, check=False)
    assert result.returncode == 0, f"systemctl reload {UNIT} failed:\n{journal(container, UNIT)}"


def tag_file(host: str, name: str) -> str:
    return f"{MNT}/{host}/{TAG_DIR}/{name}"


def cat(container: Container, path: str) -> str:
    return container.run("cat", path).stdout


def sha256_in(container: Container, path: str) -> str:
    return container.run("sha256sum", path).stdout.split()[0]


def assert_no_daemon_problems(container: Container) -> None:
    problems = daemon_problems(container)
    assert not problems, "the daemon logged problems to the journal:\n" + "\n".join(problems)


def test_start_returns_once_the_mount_is_readable(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    # The unit as it ships: no env file, no config file (loopback registries are plain http),
    # and a mount point that is a filesystem's root (a lost+found), as a server's may be.
    c = booted(container_factory)
    c.sh(f"mkdir -p {MNT}/lost+found")
    start(c)
    # Right after start returns: no waiting, no retry.
    read = c.run("cat", tag_file(registry.host, "params.json"), check=False)
    assert (read.returncode, read.stdout) == (0, PARAMS), (
        f"systemctl start returned before the mount could serve a read: {read.stderr}"
    )
    assert c.show(UNIT, "ActiveState") == "active"
    mount = c.mount_at(MNT)
    assert mount is not None and mount.fstype.startswith("fuse"), c.mounts()
    assert c.show(UNIT, "StatusText"), "the daemon told systemd no STATUS="
    assert_no_daemon_problems(c)
    c.run("systemctl", "stop", UNIT)
    assert c.path(f"{MNT}/lost+found").is_dir(), "lost+found is gone after stop"


def test_a_killed_daemon_is_restarted_and_keeps_its_cache(
    container_factory: Boot,
    registry: RegistryProcess,
    smollm2_pushed: str,
    proxy: Proxy,
    model_hex: str,
) -> None:
    c = booted(container_factory, env=ALLOW_OTHER_ENV)
    start(c)
    model = tag_file(proxy.host, "model.gguf")  # through the counting proxy
    assert sha256_in(c, model) == model_hex
    blob = f"{CACHE}/blobs/sha256-{model_hex}"
    assert sha256_in(c, blob) == model_hex, "the model read whole is not complete in the cache"
    fetched = proxy.blob_bytes(model_hex)
    assert fetched > 0

    killed = c.show(UNIT, "MainPID")
    c.sh(f"kill -9 {killed}")  # the shell's kill: the image has no procps

    def restarted() -> bool:
        return c.show(UNIT, "ActiveState") == "active" and c.show(UNIT, "MainPID") not in (
            "0",
            killed,
        )

    c.wait_for(f"{UNIT} restarted after kill -9", restarted, RESTART_SECONDS)
    assert c.show(UNIT, "NRestarts") == "1"
    mount = c.mount_at(MNT)
    assert mount is not None and mount.fstype.startswith("fuse"), c.mounts()
    assert cat(c, tag_file(registry.host, "params.json")) == PARAMS
    assert sha256_in(c, model) == model_hex, "the model read after the restart differs"
    assert sha256_in(c, blob) == model_hex, "the restart lost the cached model"
    assert proxy.blob_bytes(model_hex) == fetched, (
        "the model complete in the cache before the kill was fetched again after the restart"
    )
    assert_no_daemon_problems(c)


def test_after_kill_9_the_unit_leaves_neither_a_dead_mount_nor_a_view_of_blobs(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    """A crash the unit is not restarted after (Restart=no here, or a start limit hit): what
    ExecStopPost leaves is what stays. The view of blobs/ left bound kept the cache's
    filesystem busy (it could not be unmounted) until the next start of the same mount."""
    c = booted(container_factory, env=ALLOW_OTHER_ENV)
    c.write(f"/etc/systemd/system/{UNIT}.d/no-restart.conf", "[Service]\nRestart=no\n")
    c.run("systemctl", "daemon-reload")
    start(c)
    assert cat(c, tag_file(registry.host, "params.json")) == PARAMS

    def views() -> list:
        return [m for m in c.mounts() if m.point.startswith(f"{BLOBS_VIEWS_DIR}/")]

    assert views(), "the daemon bound no read-only view of blobs/"
    c.sh(f"kill -9 {c.show(UNIT, 'MainPID')}")  # the shell's kill: the image has no procps
    c.wait_for(
        f"{UNIT} stopped after kill -9",
        lambda: c.show(UNIT, "ActiveState") in ("failed", "inactive"),
        RESTART_SECONDS,
    )
    assert c.mount_at(MNT) is None, f"{MNT} is still mounted after the crash: {c.mounts()}"
    assert not views(), f"the read-only view of blobs/ outlived the crash: {views()}"


def test_stop_leaves_no_mount_and_no_process(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    c = booted(container_factory, env=ALLOW_OTHER_ENV)
    start(c)
    assert cat(c, tag_file(registry.host, "params.json")) == PARAMS
    daemon = c.show(UNIT, "MainPID")
    c.run("systemctl", "stop", UNIT)
    assert c.show(UNIT, "ActiveState") == "inactive"
    assert c.show(UNIT, "Result") == "success", journal(c, UNIT)
    assert c.show(UNIT, "ExecMainStatus") == "0", "the daemon did not exit 0 on SIGTERM"
    assert c.mount_at(MNT) is None, f"{MNT} is still mounted after stop: {c.mounts()}"
    assert not any(m.point.startswith(f"{MNT}/") for m in c.mounts()), c.mounts()
    views = [m for m in c.mounts() if m.point.startswith(f"{BLOBS_VIEWS_DIR}/")]
    assert not views, f"the read-only view of blobs/ outlived the mount: {views}"
    assert not c.path(f"/proc/{daemon}").exists(), "the daemon outlived systemctl stop"
    assert_no_daemon_problems(c)


def test_reload_picks_up_a_new_mirror_without_remounting(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str, proxy: Proxy
) -> None:
    c = booted(container_factory, env=ALLOW_OTHER_ENV)
    start(c)
    assert cat(c, tag_file(registry.host, "params.json")) == PARAMS
    before = c.mount_at(MNT)
    daemon = c.show(UNIT, "MainPID")
    assert before is not None
    assert proxy.records() == [], "nothing should reach the proxy before it is a mirror"

    c.write(
        CONFIG,
        f'[[mirror]]\nhost = "{registry.host}"\nendpoints = ["http://{proxy.host}"]\n',
    )
    reload(c)
    # ExecReload only sends SIGHUP: the daemon says in the journal when it has read the file.
    c.wait_for(
        "the daemon logged that it reloaded the configuration",
        lambda: "reloaded the configuration" in journal(c, UNIT),
    )
    assert cat(c, tag_file(registry.host, "system")) == SYSTEM
    assert proxy.blob_records(), (
        f"reading a blob not yet fetched after the reload did not go through the new mirror; "
        f"the proxy saw {proxy.records()}"
    )
    after = c.mount_at(MNT)
    assert after is not None and after.mount_id == before.mount_id, "reload remounted"
    assert c.show(UNIT, "MainPID") == daemon, "reload restarted the daemon"
    assert c.show(UNIT, "ActiveState") == "active"
    assert_no_daemon_problems(c)


def test_shipped_units_verify_clean(container_factory: Boot) -> None:
    c = booted(container_factory)
    for name in install_units(c):
        # A template is verified through an instance of it.
        unit = name.replace("@.", "@mnt-models.") if "@." in name else name
        result = c.run("systemd-analyze", "verify", "--man=no", unit, check=False)
        assert (result.returncode, result.stderr) == (0, ""), (
            f"systemd-analyze verify {unit} complained:\n{result.stderr}"
        )


def test_a_bad_config_on_reload_is_a_warning_in_the_journal_and_the_mount_stays(
    container_factory: Boot, registry: RegistryProcess, smollm2_pushed: str
) -> None:
    c = booted(container_factory, env=ALLOW_OTHER_ENV)
    start(c)
    before = c.mount_at(MNT)
    c.write(CONFIG, "[[mirror]\nthis is not toml\n")
    reload(c)
    c.wait_for("the daemon logged a problem", lambda: bool(daemon_problems(c)))
    entries = [
        json.loads(line)
        for line in c.run(
            "journalctl", "-q", "-o", "json", "SYSLOG_IDENTIFIER=modelfs"
        ).stdout.splitlines()
    ]
    warnings = [e for e in entries if CONFIG in str(e.get("MESSAGE"))]
    assert warnings, f"no journal entry names {CONFIG}: {[e.get('MESSAGE') for e in entries]}"
    (warning,) = warnings
    assert warning["PRIORITY"] == str(syslog.LOG_WARNING), (
        f"a WARNING reached the journal at priority {warning['PRIORITY']}: {warning['MESSAGE']}"
    )
    assert not str(warning["MESSAGE"]).startswith("<"), warning["MESSAGE"]
    assert any(e["PRIORITY"] == str(syslog.LOG_INFO) for e in entries), (
        "the daemon logged nothing at INFO (as it starts and serves)"
    )
    # The mount goes on with the configuration it had.
    assert cat(c, tag_file(registry.host, "params.json")) == PARAMS
    after = c.mount_at(MNT)
    assert before is not None and after is not None and after.mount_id == before.mount_id
    assert c.show(UNIT, "ActiveState") == "active"
