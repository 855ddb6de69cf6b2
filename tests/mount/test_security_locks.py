"""The lock files of a shared cache, attacked through real mounts (issue: security).

modelfs processes of one cache coordinate through open-file-description locks on
``.modelfs/partial/sha256-<hex>.lock``. Another local user must not be able to open those
files at all (uid 65534, with ``setpriv``); a process of the owner's that holds their locks
without letting go — a helper process (tests/support/lock_holder.py), or a real ``modelfs
pull`` stopped with SIGSTOP — delays a read by at most the claim wait, never past the read
bound, and never keeps the daemon from stopping.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount.test_mount import TAG_DIR, wait_for
from support import lock_holder
from support.mount import modelfs_cmd, sha256_path

from modelfs.blobs import sharing
from modelfs.blobs.fetchcontext import CLAIM_WAIT_SECONDS, READ_WAIT_SECONDS

OTHER_UID = 65534  # nobody
# A holder lets go after this long: a read that waited for it took longer than the bound.
HOLD_SECONDS = READ_WAIT_SECONDS + 30


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A root (mount and cache) another user can reach, as a cache in a home directory is:
    pytest's own temp dirs are 0700. Removed after the mounts in it, so a test names it
    before ``mount_factory`` (fixtures are torn down in the reverse order of their set-up);
    a root that cannot be removed fails the test rather than staying in /tmp."""
    root = Path(tempfile.mkdtemp(prefix="modelfs-locks-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The shipped unit's UMask=0022 (the daemon inherits the umask of ``modelfs mount``)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def hold(procs: list[subprocess.Popen[str]], path: Path, *spans: int | str, **kw: object) -> str:
    proc, line = lock_holder.start(path, *spans, seconds=HOLD_SECONDS, **kw)  # type: ignore[arg-type]
    procs.append(proc)
    return line


def layer_digests(tag: Path) -> dict[str, str]:
    """Media type -> digest hex of the model's layers (from its manifest.json)."""
    manifest = json.loads((tag / "manifest.json").read_bytes())
    return {layer["mediaType"]: layer["digest"].split(":")[1] for layer in manifest["layers"]}


def system_hex(tag: Path) -> str:
    return next(d for t, d in layer_digests(tag).items() if t.endswith(".system"))


class _Flock(ctypes.Structure):
    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


def claimed_chunks(lock: Path, count: int) -> int:
    """How many of the first ``count`` chunk bytes of a lock file another process has locked."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        n = 0
        for i in range(count):
            probe = _Flock(fcntl.F_RDLCK, os.SEEK_SET, sharing.CHUNKS + i, 1, 0)
            raw = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, bytes(probe))
            n += _Flock.from_buffer_copy(raw).l_type != fcntl.F_UNLCK
        return n
    finally:
        os.close(fd)


def waits_in_the_mount(pid: int) -> bool:
    """Whether process ``pid`` is blocked in a FUSE request (waiting for the daemon)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return "fuse" in wchan or "request_wait_answer" in wchan


def timed_read(path: Path, what: str, out: dict[str, object]) -> None:
    began = time.monotonic()
    try:
        out[what] = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        out[what] = e
    out[f"{what} seconds"] = time.monotonic() - began


# -- 1. modelfs's own state is private -----------------------------------------------------


def test_another_user_cannot_open_the_lock_files_or_any_state(
    shared_root, proxy, mount_factory, smollm2_pushed, model_hex, umask_022, holders
) -> None:
    proxy.set_faults([{"path": model_hex, "trickle_bps": 4 << 20}])  # stays partial a while
    m = mount_factory(root=shared_root)
    tag = m.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert len(f.read(1 << 20)) == 1 << 20
    lock = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}.lock"
    assert lock.exists()
    # What the attack did: open the lock file read-only and hold a read lock on it.
    line = hold(holders, lock, sharing.MEMBER, read=True, uid=OTHER_UID)
    assert line.startswith("cannot open"), f"another user opened {lock.name}: {line}"
    for path in (m.cache / ".modelfs", lock.parent, lock.with_suffix(".state"), lock):
        r = subprocess.run(
            [
                "setpriv",
                f"--reuid={OTHER_UID}",
                f"--regid={OTHER_UID}",
                "--clear-groups",
                "ls" if path.is_dir() else "cat",
                str(path),
            ],
            capture_output=True,
            timeout=30,
        )
        assert r.returncode != 0 and b"Permission denied" in r.stderr, (path, r)
    state = m.cache / ".modelfs"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for top, dirs, files in os.walk(state):
        for n in dirs + files:
            mode = stat.S_IMODE(os.lstat(Path(top) / n).st_mode)
            assert not mode & 0o077, f"{Path(top) / n} is {oct(mode)} under a umask of 022"
    # Ollama's layout keeps its modes: another user may read published blobs.
    assert stat.S_IMODE((m.cache / "blobs").stat().st_mode) & 0o005 == 0o005


def test_an_existing_cache_is_tightened_when_mounted(shared_root, mount_factory, umask_022) -> None:
    cache = shared_root / "cache"
    index = cache / ".modelfs" / "indexes" / f"sha256-{'ab' * 32}.json"
    index.parent.mkdir(parents=True)
    index.write_text("{}")
    for p in (cache / ".modelfs", index.parent):
        p.chmod(0o755)
    index.chmod(0o644)
    mount_factory(root=shared_root)
    assert stat.S_IMODE((cache / ".modelfs").stat().st_mode) == 0o700
    assert stat.S_IMODE(index.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(index.stat().st_mode) == 0o600


# -- 2. no wait is unbounded, whoever holds the other end ------------------------------------


def test_lock_files_held_by_another_process_delay_reads_only_within_the_bound(
    proxy, mount_factory, smollm2_pushed, source, model_hex, holders
) -> None:
    m = mount_factory()
    m.expect_log(r"held its lock file for")  # INFO, but named: it is the point of the test
    tag = m.mountpoint / proxy.host / TAG_DIR
    partial = m.cache / ".modelfs" / "partial"
    small = system_hex(tag)
    # A process of the owner's holds the model's lock file alone (joining it, and as the
    # only member), and the small blob's claim, and never lets go.
    assert (
        hold(holders, partial / f"sha256-{model_hex}.lock", sharing.JOIN, sharing.MEMBER) == "held"
    )
    assert hold(holders, partial / f"sha256-{small}.lock", sharing.SMALL) == "held"
    out: dict[str, object] = {}
    readers = [
        threading.Thread(target=timed_read, args=(tag / "model.gguf", "model", out)),
        threading.Thread(target=timed_read, args=(tag / "system", "system", out)),
    ]
    for t in readers:
        t.start()
    for t in readers:
        t.join(HOLD_SECONDS + 60)
    assert out["model"] == model_hex, out
    assert out["system"] == hashlib.sha256(b"You are helpful.").hexdigest(), out
    for what in ("model", "system"):
        took = out[f"{what} seconds"]
        assert isinstance(took, float) and took < READ_WAIT_SECONDS, (
            f"reading {what} waited {took:.0f}s for another process's locks"
        )
    # Fetched privately, checked and published all the same.
    wait_for((m.cache / "blobs" / f"sha256-{model_hex}").exists, "the model to be published")
    assert sha256_path(m.cache / "blobs" / f"sha256-{model_hex}") == model_hex


def test_a_killed_reader_leaves_and_the_daemon_stops_while_another_process_holds_the_locks(
    proxy, mount_factory, smollm2_pushed, model_hex, holders
) -> None:
    m = mount_factory()
    m.expect_log(r"held its lock file for")
    tag = m.mountpoint / proxy.host / TAG_DIR
    lock = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}.lock"
    assert hold(holders, lock, sharing.JOIN) == "held"
    os.stat(tag / "model.gguf")  # looked up: the reader's wait is its open, in the daemon
    reader = subprocess.Popen(["cat", str(tag / "model.gguf")], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: waits_in_the_mount(reader.pid), "the reader to wait for the lock", 10)
        reader.kill()
        began = time.monotonic()
        reader.wait(READ_WAIT_SECONDS)
        took = time.monotonic() - began
        assert took < CLAIM_WAIT_SECONDS + 10, f"a killed reader stayed {took:.0f}s"
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(HOLD_SECONDS)
    # A second reader waits again; the daemon stops at once all the same.
    waiting = subprocess.Popen(
        ["cat", str(tag / "model.gguf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: waits_in_the_mount(waiting.pid), "the reader to wait for the lock", 10)
        pid = m.pid()
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        began = time.monotonic()
        while time.monotonic() - began < 10 and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "SIGTERM did not end the daemon in 10s"
    finally:
        waiting.kill()
        waiting.wait(60)


def test_a_stopped_pull_holding_chunk_claims_does_not_fail_a_mounts_reads(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
) -> None:
    cache = tmp_path / "cache"
    m = mount_factory(root=tmp_path / "m", cache=cache)
    m.expect_log(r"made no progress")
    proxy.set_faults([{"path": model_hex, "trickle_bps": 2 << 20}])
    name = smollm2_pushed.replace(smollm2_pushed.split("/")[0], proxy.host, 1)
    pull = subprocess.Popen(
        modelfs_cmd("pull", name, "--cache", str(cache)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = cache / ".modelfs" / "partial" / f"sha256-{model_hex}.lock"
    try:
        wait_for(lambda: claimed_chunks(lock, 8) > 0, "the pull to claim chunks", 60)
        pull.send_signal(signal.SIGSTOP)
        claimed = claimed_chunks(lock, 64)
        proxy.clear_faults()
        out: dict[str, object] = {}
        timed_read(m.mountpoint / proxy.host / TAG_DIR / "model.gguf", "model", out)
        assert out["model"] == model_hex, (
            f"with a stopped pull holding {claimed} chunk claims the mount read {out['model']!r}"
        )
        assert out["model seconds"] < READ_WAIT_SECONDS + CLAIM_WAIT_SECONDS
    finally:
        pull.kill()
        pull.send_signal(signal.SIGCONT)
        pull.wait(60)


# -- 3. lock files do not outlive their blob ------------------------------------------------


def test_nothing_of_a_published_blob_is_left_in_partial(
    proxy, mount_factory, smollm2_pushed, source, model_hex
) -> None:
    m = mount_factory()
    tag = m.mountpoint / proxy.host / TAG_DIR
    assert (tag / "system").read_text() == "You are helpful."
    assert sha256_path(tag / "model.gguf") == model_hex
    partial = m.cache / ".modelfs" / "partial"
    wait_for((m.cache / "blobs" / f"sha256-{model_hex}").exists, "the model to be published")
    # Closed once no handle reads it and its tasks ended: the lock file goes with it.
    wait_for(lambda: not any(partial.iterdir()), "partial/ to be empty", 30)


def test_a_partial_held_during_rm_is_counted_then_removed_once_let_go(
    proxy, mount_factory, smollm2_pushed, model_hex, tmp_path, holders
) -> None:
    proxy.set_faults([{"path": model_hex, "trickle_bps": 4 << 20}])
    cache = tmp_path / "cache"
    m = mount_factory(root=tmp_path / "a", cache=cache)
    with open(m.mountpoint / proxy.host / TAG_DIR / "model.gguf", "rb") as f:
        assert len(f.read(1 << 20)) == 1 << 20
    data = cache / ".modelfs" / "partial" / f"sha256-{model_hex}"
    lock = data.with_name(data.name + ".lock")
    # Another process of the owner's uses the partial (a pull, a second mount) during rm.
    assert hold(holders, lock, sharing.MEMBER, read=True) == "held"
    m.stop()
    name = smollm2_pushed.replace(smollm2_pushed.split("/")[0], proxy.host, 1)
    rm = subprocess.run(
        modelfs_cmd("rm", name, "--cache", str(cache)), capture_output=True, text=True, timeout=60
    )
    assert rm.returncode == 0, rm.stderr
    assert data.exists(), "rm removed a partial another process was filling"
    du = subprocess.run(
        modelfs_cmd("du", "--cache", str(cache)), capture_output=True, text=True, timeout=60
    )
    assert "(partial, no model)" in du.stdout, f"du does not count the partial:\n{du.stdout}"
    ls = subprocess.run(
        modelfs_cmd("ls", "--cache", str(cache)), capture_output=True, text=True, timeout=60
    )
    assert "(partial, no model)" in ls.stdout, f"ls does not show the partial:\n{ls.stdout}"
    for p in holders:
        p.kill()
        p.communicate(timeout=30)
    holders.clear()
    # The next modelfs process of the cache (here a mount; a running mount's evictor does the
    # same every 30 s) removes what no manifest names and nobody uses.
    mount_factory(root=tmp_path / "b", cache=cache)
    left = sorted(p.name for p in data.parent.iterdir())
    assert left == [], f"left in partial/ after rm: {left}"
