"""What a server needs of a mount: mount(8)'s helper call (an fstab line of type fuse.modelfs),
SIGHUP reloading the configuration file (mirrors, cache bounds) without unmounting, a file that
does not read on reload keeping the old settings."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from mount.test_mount import TAG_DIR, wait_for
from support.mount import modelfs_cmd, run_modelfs, sha256_path

from modelfs.fs.mountctl import blobs_view_path, find_mount

MOUNT_SECONDS = 60


def mount_id(mnt: Path) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == str(mnt):
            return line.split()[0]
    return None


def test_mount_helper_call_mounts_and_returns_once_live(
    tmp_path: Path, registry, smollm2_pushed, model_hex
) -> None:
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "run").mkdir()
    # Exactly what mount.fuse3 runs for `modelfs MNT fuse.modelfs ro,_netdev,nofail,allow_other,
    # cache=…` in fstab (it drops _netdev and nofail and adds dev,suid): the source, the mount
    # point and -o.
    options = f"ro,allow_other,cache={cache},log={tmp_path / 'modelfs.log'},dev,suid"
    try:
        result = subprocess.run(
            modelfs_cmd("modelfs", str(mnt), "-o", options),
            env=env,
            capture_output=True,
            text=True,
            timeout=MOUNT_SECONDS,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt), "the helper returned before the mount was live"
        model = mnt / registry.host / TAG_DIR / "model.gguf"
        assert sha256_path(model) == model_hex
        assert (cache / "blobs").is_dir(), "cache= was not the cache"
        # Complete: a link into the read-only view of blobs/, bound outside the mount...
        wait_for(model.is_symlink, "model.gguf to become a link")
        view = blobs_view_path(mnt)
        assert os.readlink(model) == f"{view}/sha256-{model_hex}"
        # ...so that umount(8), as systemd and people call it, works; the view goes after it.
        umount = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, check=False)
        assert umount.returncode == 0, umount.stderr
        wait_for(lambda: find_mount(view) is None, "the daemon to unbind the view as it exits")
    finally:
        if os.path.ismount(mnt):
            run_modelfs("umount", str(mnt), env=env, check=False)
    assert not os.path.ismount(mnt)

    bad = subprocess.run(
        modelfs_cmd("modelfs", str(mnt), "-o", "ro,no_such_option"),
        env=env,
        capture_output=True,
        text=True,
        timeout=MOUNT_SECONDS,
        check=False,
    )
    assert bad.returncode == 2 and "no_such_option" in bad.stderr
    assert not os.path.ismount(mnt)


def sighup(m) -> None:
    pid = m.pid()
    assert pid is not None
    before = m.log_text().count("SIGHUP:")
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: m.log_text().count("SIGHUP:") > before, "the daemon to reload")


def test_sighup_reloads_mirrors_and_cache_bounds_without_unmounting(
    tmp_path: Path, mount_factory, registry, proxy, smollm2_pushed, smollm2_noindex_pushed
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    m = mount_factory(env={**os.environ, "MODELFS_CONFIG": str(config)})
    mounted = mount_id(m.mountpoint)
    tag = m.mountpoint / registry.host / TAG_DIR
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    proxy.reset()

    # A mirror for the registry: lookups of names not yet resolved go to it first.
    config.write_text(
        f'[[mirror]]\nhost = "{registry.host}"\nendpoints = ["http://{proxy.host}"]\n'
    )
    sighup(m)
    assert "SIGHUP: reloaded the configuration" in m.log_text()
    noindex = m.mountpoint / registry.host / "library/smollm2/noindex"
    assert "model.gguf" in os.listdir(noindex)
    assert any("/manifests/noindex" in r.path for r in proxy.records()), proxy.records()
    assert mount_id(m.mountpoint) == mounted

    # A file that does not read keeps the settings in use.
    m.expect_log(r"SIGHUP: keeping the configuration in use")
    config.write_text("this is [not toml\n")
    sighup(m)
    assert "SIGHUP: keeping the configuration in use" in m.log_text()
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'

    # Cache bounds: the models read through the mount are evictable; a bound of one byte
    # evicts them (nothing has them open).
    blobs = m.cache / "blobs"
    wait_for(lambda: len(list(blobs.iterdir())) > 0, "blobs in the cache")
    config.write_text('cache_max = "1"\nmin_free = "0"\n')
    sighup(m)
    deadline = time.monotonic() + 30
    while list(blobs.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(blobs.iterdir()), "the reloaded bound did not evict"
    assert mount_id(m.mountpoint) == mounted
