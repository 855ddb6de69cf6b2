"""Attacks through the real mount (issue: security), each shown to fail.

A victim model lives on the real docker-registry; hostile registries are hand-written
(support.hostile). Under ``allow_other`` the attacker is another local user (uid 65534),
reading through the mount with ``cat`` in a process of its own.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from support.hostile import HostileRegistry, build_chunk_index, build_manifest, sha256_digest
from support.mount import Mount, run_modelfs, sha256_path
from support.registry import RegistryProcess

from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.manifest import MEDIA_TYPE_CHUNK_INDEX, MEDIA_TYPE_MODEL

VICTIM_BYTES = 24 << 20
OTHER_UID = 65534  # nobody
# The documented bound for a read whatever a registry does (docs/reliability.md), with margin.
READ_BOUND_SECONDS = 60.0
LIVENESS_SECONDS = 3 * READ_BOUND_SECONDS


@pytest.fixture(scope="module")
def victim_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("victim") / "victim.gguf"
    write_synthetic_gguf(path, VICTIM_BYTES, seed=41)
    return path


@pytest.fixture(scope="module")
def victims(
    registry: RegistryProcess, victim_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The victim model pushed twice: with a chunk index, and without (as Ollama pushes)."""
    work = tmp_path_factory.mktemp("victim-src")
    names = {
        "indexed": f"{registry.host}/victim/m:v1",
        "noindex": f"{registry.host}/victim/m:noindex",
    }
    run_modelfs("create", names["indexed"], "--gguf", str(victim_gguf), "--cache", str(work / "a"))
    run_modelfs(
        "create",
        names["noindex"],
        "--gguf",
        str(victim_gguf),
        "--no-chunk-index",
        "--cache",
        str(work / "b"),
    )
    run_modelfs("push", names["indexed"], "--cache", str(work / "a"))
    run_modelfs("push", names["noindex"], "--cache", str(work / "b"))
    shutil.rmtree(work)
    return names


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    with HostileRegistry() as reg:
        yield reg


@pytest.fixture(autouse=True)
def _shared_roots() -> Iterator[list[Path]]:
    """Removes the shared roots a test made. Autouse, so set up before ``mount_factory`` and
    torn down after it: a root is removed only once its mounts are unmounted (a mounted
    ``mnt`` cannot be removed, and was left behind)."""
    roots: list[Path] = []
    yield roots
    for root in roots:
        shutil.rmtree(root)


@pytest.fixture
def shared_root(_shared_roots: list[Path]) -> Path:
    """A mount root another user can reach (pytest's own temp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="modelfs-security-", dir="/tmp"))
    root.chmod(0o755)
    _shared_roots.append(root)
    return root


def path_of(m: Mount, name: str) -> Path:
    host, rest = name.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    return m.mountpoint / host / repo / tag


def poison(hostile: HostileRegistry, digest: str, size: int, *, with_index: bool) -> bytes:
    """evil/m:latest on ``hostile`` claims the victim's layer ``digest``; returns its bytes."""
    evil = (b"EVILEVIL" * (size // 8 + 1))[:size]
    hostile.put_blob(evil, digest)  # served under a digest it does not own
    layers = [(MEDIA_TYPE_MODEL, digest, size)]
    if with_index:
        index = build_chunk_index({digest: evil})  # vouches for the evil chunks
        layers.append((MEDIA_TYPE_CHUNK_INDEX, hostile.put_blob(index), len(index)))
    config = b'{"model_format":"gguf"}'
    hostile.put_blob(config)
    hostile.put_manifest("evil/m", "latest", build_manifest(config, layers))
    return evil


def as_other_user(*argv: str, timeout: float = LIVENESS_SECONDS) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), user=OTHER_UID, group=OTHER_UID, capture_output=True, timeout=timeout
    )


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def expect_poison_logs(m: Mount) -> None:
    # The attacker's own bytes fail the whole-blob check when its blob completes.
    m.expect_log(r"whole-blob sha256 is .* discarding the fetched data")
    m.expect_log(r"does not match the chunk index")
    m.expect_log(r"read: blob .* does not match its digest")
    m.expect_log(r"chunks .* failed: .*does not match")


@pytest.mark.parametrize("victim_kind", ["indexed", "noindex"])
@pytest.mark.parametrize("attacker_index", [True, False], ids=["evil-index", "evil-noindex"])
def test_a_registry_claiming_a_victims_digest_cannot_change_what_the_victim_reads(
    hostile, victims, victim_gguf, mount_factory, victim_kind, attacker_index
):
    good = victim_gguf.read_bytes()
    digest = sha256_digest(good)
    evil = poison(hostile, digest, len(good), with_index=attacker_index)
    # Chunks pushed into the page cache must go only to the inodes of the manifest that
    # vouched for them: one combination runs with -o push=yes.
    push = "push=yes" if attacker_index and victim_kind == "indexed" else "push=no"
    m = mount_factory(("verify=deferred" if not attacker_index else "verify=strict") + "," + push)
    expect_poison_logs(m)
    attacker = m.mountpoint / hostile.host / "evil/m/latest/model.gguf"
    victim = path_of(m, victims[victim_kind]) / "model.gguf"

    # The attacker's name is looked up and read first, and stays open while the victim reads.
    with open(attacker, "rb") as a:
        head = a.read(1 << 20)
        if attacker_index or not head:
            # Its own manifest's index vouches for its own bytes: those are its readers' business.
            assert head in (evil[: 1 << 20], b"")
        else:
            assert head == evil[: 1 << 20]  # verify=deferred serves before the whole check
        # Before the victim's blob is published (then every name shares it, by design).
        assert os.stat(attacker).st_ino != os.stat(victim).st_ino, (
            "the attacker's file and the victim's share an inode (and so a page cache)"
        )
        with open(victim, "rb") as v:
            assert v.read(1 << 20) == good[: 1 << 20], (
                "the victim's model.gguf began with bytes another registry's manifest vouched for"
            )
        assert sha256_path(victim) == digest.split(":")[1], (
            "the victim's model.gguf returned bytes another registry's manifest vouched for"
        )
    drop_caches()
    data = victim.read_bytes()
    assert data == good, "after drop_caches the victim read the attacker's bytes"
    assert b"EVILEVIL" not in data[: 1 << 20]
    # Nothing foreign was published under the victim's digest.
    blob = m.cache / "blobs" / f"sha256-{digest.split(':')[1]}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest.split(":")[1]


def test_a_poisoned_partial_left_on_disk_is_not_trusted_after_a_restart(
    hostile, victims, victim_gguf, mount_factory, tmp_path
):
    good = victim_gguf.read_bytes()
    digest = sha256_digest(good)
    poison(hostile, digest, len(good), with_index=True)
    m = mount_factory("verify=strict", root=tmp_path / "m")
    expect_poison_logs(m)
    with open(m.mountpoint / hostile.host / "evil/m/latest/model.gguf", "rb") as a:
        a.read(2 * CHUNK_BYTES)  # evil chunks land in the blob's partial file
    m.stop()
    m2 = mount_factory("verify=strict", root=tmp_path / "m")
    expect_poison_logs(m2)
    m2.expect_log(r"chunk \d+ on disk does not match the chunk index; refetching")
    assert (path_of(m2, victims["indexed"]) / "model.gguf").read_bytes() == good
    m3 = mount_factory(root=tmp_path / "m3", env={**os.environ})
    assert (path_of(m3, victims["noindex"]) / "model.gguf").read_bytes() == good


def test_under_allow_other_another_user_cannot_reach_an_unknown_registry(
    hostile, victims, victim_gguf, mount_factory, shared_root
):
    good = victim_gguf.read_bytes()
    poison(hostile, sha256_digest(good), len(good), with_index=True)
    m = mount_factory("allow_other", root=shared_root)
    attacker = m.mountpoint / hostile.host / "evil/m/latest/model.gguf"
    r = as_other_user("cat", str(attacker))
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r
    assert not hostile.requests, "the daemon connected to a registry another user named"
    assert (path_of(m, victims["indexed"]) / "model.gguf").read_bytes() == good


def test_under_allow_other_another_users_poisoning_registry_changes_nothing_for_root(
    hostile, victims, victim_gguf, registry, mount_factory, shared_root
):
    good = victim_gguf.read_bytes()
    evil = poison(hostile, sha256_digest(good), len(good), with_index=True)
    # Both registries allowed: the attack reaches the daemon and still fails.
    m = mount_factory(f"allow_other,registries={registry.host}+{hostile.host}", root=shared_root)
    expect_poison_logs(m)
    attacker = m.mountpoint / hostile.host / "evil/m/latest/model.gguf"
    r = as_other_user("head", "-c", str(1 << 20), str(attacker))
    assert r.returncode == 0 and r.stdout == evil[: 1 << 20], r.stderr
    assert hostile.blob_requests(), "the attacker's read never reached its registry"
    victim = path_of(m, victims["indexed"]) / "model.gguf"
    assert victim.read_bytes() == good, "root read bytes another user's registry vouched for"
    drop_caches()
    assert victim.read_bytes() == good


def write_docker_config(where: Path, host: str) -> dict[str, str]:
    where.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(b"alice:secret").decode()
    (where / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {**os.environ, "DOCKER_CONFIG": str(where)}


@pytest.fixture
def private_model(basic_registry, victim_gguf, tmp_path) -> tuple[str, dict[str, str]]:
    env = write_docker_config(tmp_path / "docker", basic_registry.host)
    name = f"{basic_registry.host}/private/m:v1"
    src = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(victim_gguf), "--cache", str(src), env=env)
    run_modelfs("push", name, "--cache", str(src), env=env)
    shutil.rmtree(src)
    return name, env


def test_under_allow_other_another_user_gets_no_credentials(
    private_model, basic_registry, victim_gguf, mount_factory, shared_root
):
    name, env = private_model
    m = mount_factory(f"allow_other,registries={basic_registry.host}", root=shared_root, env=env)
    m.expect_log(r"needs a username and password")
    tag = path_of(m, name)
    r = as_other_user("cat", str(tag / "model.gguf"))
    assert r.returncode != 0 and b"Permission denied" in r.stderr, (
        f"another user read a credential-protected model: {r}"
    )
    # The owner's credentials work for the owner, after the other user's refusal.
    assert sha256_path(tag / "model.gguf") == hashlib.sha256(victim_gguf.read_bytes()).hexdigest()


def test_share_credentials_lends_them_on_purpose(
    private_model, basic_registry, victim_gguf, mount_factory, shared_root
):
    name, env = private_model
    m = mount_factory(
        f"allow_other,share_credentials,registries={basic_registry.host}",
        root=shared_root,
        env=env,
    )
    r = as_other_user("cat", str(path_of(m, name) / "model.gguf"))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(victim_gguf.read_bytes()).digest()


def hostile_model(hostile: HostileRegistry, repo: str, data: bytes) -> str:
    """A model on ``hostile`` whose bytes are genuine (so only its speed is hostile)."""
    digest = hostile.put_blob(data)
    index = build_chunk_index({digest: data})
    config = b'{"model_format":"gguf"}'
    hostile.put_blob(config)
    layers = [
        (MEDIA_TYPE_MODEL, digest, len(data)),
        (MEDIA_TYPE_CHUNK_INDEX, hostile.put_blob(index), len(index)),
    ]
    hostile.put_manifest(repo, "latest", build_manifest(config, layers))
    return digest


def test_trickling_registries_cannot_starve_a_healthy_one_and_every_read_ends(
    hostile, victims, victim_gguf, mount_factory
):
    good = victim_gguf.read_bytes()
    # Five models on a registry that sends 2 KiB/s, one that never answers its blob requests.
    slow = []
    for i in range(5):
        data = (bytes([i + 1]) * 4096) * (VICTIM_BYTES // 4096)
        slow.append((hostile_model(hostile, f"slow/m{i}", data), data))
        hostile.trickle(2048, slow[-1][0])
    hung_digest = hostile_model(hostile, "slow/hung", b"\7" * VICTIM_BYTES)
    hostile.hang(hung_digest)
    m = mount_factory("stall_seconds=2,min_rate=64K")
    m.expect_log(r"stalled: .* below the minimum")
    m.expect_log(r"chunks .* failed")
    m.expect_log(r"read: .*(stalled|no data after)")

    outcomes: dict[str, object] = {}

    def read(label: str, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                outcomes[label] = f.read(2 << 20)
        except OSError as e:
            outcomes[label] = e.errno

    threads = [
        threading.Thread(
            target=read,
            args=(f"m{i}", m.mountpoint / hostile.host / f"slow/m{i}/latest/model.gguf"),
        )
        for i in range(5)
    ]
    threads.append(
        threading.Thread(
            target=read, args=("hung", m.mountpoint / hostile.host / "slow/hung/latest/model.gguf")
        )
    )
    for t in threads:
        t.start()
    hostile.wait_for(
        lambda: (
            sum(bool(hostile.blob_requests(d)) for d, _ in slow) == 5 and hostile.in_flight >= 5
        ),
        timeout_seconds=30,
    )
    # While the hostile registry holds its streams, the healthy registry is served.
    assert (path_of(m, victims["indexed"]) / "model.gguf").read_bytes() == good
    for t in threads:
        t.join(LIVENESS_SECONDS)
    assert not any(t.is_alive() for t in threads), "a read from a trickling registry never ended"
    for i, (_d, data) in enumerate(slow):
        assert outcomes[f"m{i}"] in (errno.EIO, data[: 2 << 20]), outcomes[f"m{i}"]
    assert outcomes["hung"] == errno.EIO


def test_the_daemon_exits_at_once_while_transfers_are_stuck(hostile, mount_factory):
    digest = hostile_model(hostile, "slow/m", b"\3" * VICTIM_BYTES)
    hostile.trickle(2048, digest)  # below the rate, but never silent: a worker thread stays in recv
    # The default stall window (30 s): stuck for the whole test. Ended by the shutdown, not
    # failed: nothing to log above INFO.
    m = mount_factory()
    reader = subprocess.Popen(
        ["cat", str(m.mountpoint / hostile.host / "slow/m/latest/model.gguf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        hostile.wait_for(
            lambda: bool(hostile.blob_requests(digest)) and hostile.in_flight >= 1,
            timeout_seconds=30,
        )
        pid = m.pid()
        assert pid is not None
        # What `systemctl stop` and a signal to `modelfs mount --foreground` do.
        os.kill(pid, signal.SIGTERM)
        # Half the stall window: only ending the stuck transfers at shutdown gets it out.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the daemon kept running on stuck transfers"
        assert reader.wait(30) != 0, "the blocked reader got data from a trickle"
    finally:
        reader.kill()
        reader.wait(30)
    assert not os.path.ismount(m.mountpoint)


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/1"])
def test_a_redirect_to_another_scheme_is_eio_at_once(hostile, mount_factory, location):
    digest = hostile_model(hostile, "redir/m", b"\5" * VICTIM_BYTES)
    hostile.redirect(location, digest)
    m = mount_factory()
    m.expect_log(r"redirect to a (file|gopher) URL refused")
    with pytest.raises(OSError) as info:
        (m.mountpoint / hostile.host / "redir/m/latest/model.gguf").read_bytes()
    assert info.value.errno == errno.EIO
    # A permanent error: asked once per chunk run, never retried as if transient.
    first = len(hostile.blob_requests(digest))
    assert 1 <= first <= 2, hostile.blob_requests(digest)
