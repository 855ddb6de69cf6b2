"""Real FUSE mounts (the daemon in its own process) reading from a real registry via a proxy."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support.mount import run_modelfs
from support.proxy import Record

from modelfs.blobs.partial import decode_state
from modelfs.formats.chunks import CHUNK_BYTES, ChunkLayout
from modelfs.formats.digest import Digest

TAG_DIR = "library/smollm2/135m"
WAIT_SECONDS = 30.0


def wait_for(predicate, what: str, seconds: float = WAIT_SECONDS):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def model_records(proxy, digest_hex: str) -> list[Record]:
    return [r for r in proxy.blob_records() if digest_hex in r.path]


def saved_chunks(state: Path, digest_hex: str, size: int) -> set[int]:
    """The chunks a partial blob's state file says are present (none while it has none)."""
    try:
        raw = state.read_bytes()  # renamed into place whole: never half written
    except FileNotFoundError:
        return set()
    doc = json.loads(raw)
    layout = ChunkLayout(size, int(doc["chunkBytes"]))
    bitmap = decode_state(raw, Digest(digest_hex), layout, bool(doc["indexed"]))
    assert bitmap is not None, f"unreadable state: {raw[:200]!r}"
    return {i for i in range(layout.count) if bitmap[i >> 3] & (1 << (i & 7))}


@pytest.fixture
def tag(proxy, mount_factory, smollm2_pushed) -> Path:
    m = mount_factory()
    return m.mountpoint / proxy.host / TAG_DIR


def test_ls_fetches_no_blob_bytes(tag, proxy, source):
    entries = {e.name: e.stat() for e in os.scandir(tag)}
    assert set(entries) == {
        "model.gguf",
        "chunks.json",
        "template",
        "system",
        "params.json",
        "config.json",
        "manifest.json",
    }
    assert entries["model.gguf"].st_size == len(source)
    assert all(e.st_mode & 0o777 == 0o444 for e in entries.values())
    assert proxy.blob_bytes() == 0, "ls -l fetched blob bytes"
    assert any("/manifests/135m" in r.path for r in proxy.records())


def test_cat_and_sha256sum(tag, proxy, source, smollm2_pushed):
    assert (tag / "params.json").read_text() == '{"temperature":0.2}'
    assert (tag / "system").read_text() == "You are helpful."
    manifest = json.loads((tag / "manifest.json").read_bytes())
    assert manifest["schemaVersion"] == 2
    out = subprocess.run(
        ["sha256sum", str(tag / "model.gguf")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split()[0] == hashlib.sha256(source).hexdigest()
    config = json.loads((tag / "config.json").read_bytes())
    assert config["model_family"] == "llama"


def test_mmap_random_reads_match_the_source(tag, source):
    rng = random.Random(7)
    with open(tag / "model.gguf", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert len(mm) == len(source)
        for _ in range(300):
            off = rng.randrange(len(source))
            n = rng.choice([1, 7, 4096, 65536, 1 << 20])
            assert mm[off : off + n] == source[off : off + n], f"mmap bytes differ at {off}"


def test_sixteen_readers_of_one_cold_chunk_make_one_request(tag, proxy, source, model_hex):
    chunk = 9
    base = chunk * CHUNK_BYTES
    slice_bytes = CHUNK_BYTES // 16
    results: dict[int, bytes] = {}
    barrier = threading.Barrier(16)

    def reader(i: int) -> None:
        with open(tag / "model.gguf", "rb") as f:
            barrier.wait()
            results[i] = os.pread(f.fileno(), slice_bytes, base + i * slice_bytes)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(16):
        off = base + i * slice_bytes
        assert results[i] == source[off : off + slice_bytes]
    covering = [r for r in model_records(proxy, model_hex) if (s := r.span) and s[0] <= base < s[1]]
    assert len(covering) == 1, f"chunk {chunk} was fetched {len(covering)} times"


def test_concurrent_readers_of_the_whole_file_all_get_the_right_bytes(tag, model_hex):
    digests: list[str] = []

    def reader() -> None:
        h = hashlib.sha256()
        with open(tag / "model.gguf", "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digests.append(h.hexdigest())

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert digests == [model_hex] * 6


def test_first_4k_fetches_only_the_chunk_it_touches(tag, proxy, source, model_hex):
    with open(tag / "model.gguf", "rb") as f:
        assert f.read(4096) == source[:4096]
    fetched = sum(r.body_bytes for r in model_records(proxy, model_hex))
    assert 0 < fetched <= CHUNK_BYTES, f"reading 4 KiB fetched {fetched} bytes of the model"


def test_gguf_header_and_metadata_fetch_at_most_two_chunks(tag, proxy, model_hex):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from modelfs.formats.gguf import read_gguf_file

    info = read_gguf_file(tag / "model.gguf")
    assert info.architecture == "llama"
    fetched = sum(r.body_bytes for r in model_records(proxy, model_hex))
    assert fetched <= 2 * CHUNK_BYTES


def test_unknown_and_invalid_names_are_enoent(tag, proxy):
    root = tag.parents[2]  # <mnt>/<host>
    for rel in (
        "library/nope/latest",
        "library/smollm2/nope",
        "..x/y/z",
        "library/a b/c",
        "library/smollm2/135m/nofile",
    ):
        with pytest.raises(FileNotFoundError):
            os.stat(root / rel)
    with pytest.raises(FileNotFoundError):
        os.stat(root.parent / "not a host")


def test_names_compare_case_insensitively(tag, proxy):
    upper = tag.parents[2] / "Library" / "SmolLM2" / "135M"
    assert os.getxattr(upper / "model.gguf", "user.modelfs.digest") == os.getxattr(
        tag / "model.gguf", "user.modelfs.digest"
    )
    assert os.stat(upper / "model.gguf").st_ino == os.stat(tag / "model.gguf").st_ino


def test_read_only_and_xattrs(tag, model_hex):
    for attempt in (
        lambda: os.open(tag / "model.gguf", os.O_RDWR),
        lambda: os.open(tag / "new", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(tag / "d"),
        lambda: os.unlink(tag / "params.json"),
        lambda: os.rename(tag / "params.json", tag / "p"),
        lambda: os.setxattr(tag / "params.json", "user.x", b"1"),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert os.getxattr(tag / "model.gguf", "user.modelfs.digest") == f"sha256:{model_hex}".encode()
    assert os.getxattr(tag / "model.gguf", "user.modelfs.media_type") == (
        b"application/vnd.ollama.image.model"
    )
    assert set(os.listxattr(tag / "params.json")) == {
        "user.modelfs.digest",
        "user.modelfs.media_type",
        "user.modelfs.verify",
    }
    assert os.getxattr(tag / "params.json", "user.modelfs.verify") in (b"whole", b"complete")


def test_a_byte_flipped_once_is_fetched_again_and_never_served(
    proxy, mount_factory, smollm2_pushed, source
):
    m = mount_factory()
    m.expect_log(r"does not match the chunk index \(index\); fetching it once more")
    tag = m.mountpoint / proxy.host / TAG_DIR
    bad = 11 * CHUNK_BYTES + 12345
    proxy.set_faults([{"path": "/blobs/", "flip_at": bad, "times": 1}])
    with open(tag / "model.gguf", "rb") as f:
        assert os.pread(f.fileno(), 4096, bad - 100) == source[bad - 100 : bad - 100 + 4096]


def test_flipped_byte_is_eio_and_never_wrong_bytes(proxy, mount_factory, smollm2_pushed, source):
    m = mount_factory()
    m.expect_log(r"does not match the chunk index")
    m.expect_log(r"failed its check twice; not trusting the index")
    m.expect_log(r"whole-blob sha256 is .*; discarding the fetched data")
    m.expect_log(r"does not match its digest")
    tag = m.mountpoint / proxy.host / TAG_DIR
    bad = 11 * CHUNK_BYTES + 12345
    proxy.set_faults([{"path": "/blobs/", "flip_at": bad}])
    with open(tag / "model.gguf", "rb") as f:
        with pytest.raises(OSError) as info:
            os.pread(f.fileno(), 4096, bad - 100)
        assert info.value.errno == errno.EIO
        # Twice wrong: the index is not trusted for this blob any more, and it is checked
        # whole before anything more is served. While the bytes stay wrong, that is EIO.
        with pytest.raises(OSError) as info:
            os.pread(f.fileno(), 4096, 0)
        assert info.value.errno == errno.EIO
        proxy.clear_faults()
        # Once the registry serves its blob right again, the same open file reads it: a
        # failed fetch is not sticky for the descriptor that saw it.
        try:
            got = os.pread(f.fileno(), 4096, bad - 100)
        except OSError as e:
            raise AssertionError(
                f"the open file stayed EIO once the registry was honest: {e}"
            ) from e
        assert got == source[bad - 100 : bad - 100 + 4096]
        assert os.pread(f.fileno(), 4096, 0) == source[:4096]
    # And so does a new open.
    with open(tag / "model.gguf", "rb") as f:
        assert os.pread(f.fileno(), 4096, bad - 100) == source[bad - 100 : bad - 100 + 4096]
        assert os.pread(f.fileno(), 4096, 0) == source[:4096]


def test_restart_keeps_partial_chunks(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
):
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / TAG_DIR
    region = (3 * CHUNK_BYTES, 6 * CHUNK_BYTES)
    with open(tag / "model.gguf", "rb") as f:
        assert (
            os.pread(f.fileno(), region[1] - region[0], region[0]) == source[region[0] : region[1]]
        )
    m.stop()
    state = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}.state"
    assert state.exists(), "no chunk state was saved at unmount"

    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")
    tag = m2.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert (
            os.pread(f.fileno(), region[1] - region[0], region[0]) == source[region[0] : region[1]]
        )
    refetched = [
        r
        for r in model_records(proxy, model_hex)
        if (s := r.span) and s[0] < region[1] and s[1] > region[0]
    ]
    assert not refetched, f"chunks kept across a restart were fetched again: {refetched}"


def test_kill_9_keeps_saved_chunks(
    proxy, mount_factory, smollm2_pushed, source, model_hex, tmp_path
):
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        os.pread(f.fileno(), 2 * CHUNK_BYTES, 5 * CHUNK_BYTES)
    state = m.cache / ".modelfs" / "partial" / f"sha256-{model_hex}.state"
    # Not merely saved: saved with both chunks. A save is due a second after the first chunk
    # lands; one landing later than that is in the next save.
    wait_for(
        lambda: {5, 6} <= saved_chunks(state, model_hex, len(source)),
        "chunks 5 and 6 to be saved",
    )
    m.kill()
    with pytest.raises(OSError) as info:
        os.listdir(m.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    # Nothing unverified was published.
    assert not (m.cache / "blobs" / f"sha256-{model_hex}").exists()

    proxy.reset()
    m2 = mount_factory(root=tmp_path / "a")  # detaches the dead mount and mounts again
    tag = m2.mountpoint / proxy.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert (
            os.pread(f.fileno(), 2 * CHUNK_BYTES, 5 * CHUNK_BYTES)
            == (source[5 * CHUNK_BYTES : 7 * CHUNK_BYTES])
        )
    refetched = [
        r
        for r in model_records(proxy, model_hex)
        if (s := r.span) and s[0] < 7 * CHUNK_BYTES and s[1] > 5 * CHUNK_BYTES
    ]
    assert not refetched


def test_full_read_publishes_blob_and_manifest_then_works_offline(
    mount_factory, fresh_registry, smollm2_gguf, source, model_hex, tmp_path
):
    name = f"{fresh_registry.host}/library/smollm2:135m"
    src = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(smollm2_gguf), "--system", "s", "--cache", str(src))
    run_modelfs("push", name, "--cache", str(src))
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / fresh_registry.host / TAG_DIR
    assert hashlib.sha256((tag / "model.gguf").read_bytes()).hexdigest() == model_hex
    manifest = m.cache / "manifests" / fresh_registry.host / TAG_DIR
    wait_for(manifest.exists, "the manifest to be written once every blob is published")
    assert (m.cache / "blobs" / f"sha256-{model_hex}").stat().st_size == len(source)
    ls = run_modelfs("ls", "--cache", str(m.cache)).stdout
    assert "100.0%" in ls
    m.stop()

    fresh_registry.stop()
    m2 = mount_factory(root=tmp_path / "a")
    tag = m2.mountpoint / fresh_registry.host / TAG_DIR
    assert (tag / "system").read_text() == "s"
    assert hashlib.sha256((tag / "model.gguf").read_bytes()).hexdigest() == model_hex
    assert os.listdir(m2.mountpoint / fresh_registry.host / "library") == ["smollm2"]


def test_cached_partial_model_is_listed_and_readable_offline(
    mount_factory, fresh_registry, smollm2_gguf, source, tmp_path
):
    name = f"{fresh_registry.host}/library/smollm2:135m"
    src = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(smollm2_gguf), "--cache", str(src))
    run_modelfs("push", name, "--cache", str(src))
    m = mount_factory(root=tmp_path / "a")
    tag = m.mountpoint / fresh_registry.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert f.read(1 << 20) == source[: 1 << 20]
    m.stop()
    fresh_registry.stop()
    m2 = mount_factory(root=tmp_path / "a")
    m2.expect_log(r"chunks \d+-\d+ failed: .*Connection refused")
    assert os.listdir(m2.mountpoint) == [fresh_registry.host]
    tag = m2.mountpoint / fresh_registry.host / TAG_DIR
    with open(tag / "model.gguf", "rb") as f:
        assert f.read(1 << 20) == source[: 1 << 20]
        with pytest.raises(OSError) as info:
            os.pread(f.fileno(), 10, len(source) - 10)  # a chunk never fetched: no network now
        assert info.value.errno == errno.EIO


def test_a_model_directory_lists_the_tags_the_registry_lists(
    proxy, registry, mount_factory, smollm2_pushed, smollm2_noindex_pushed
):
    m = mount_factory()  # an empty cache: the tags can only come from the registry
    with urllib.request.urlopen(f"{registry.url}/v2/library/smollm2/tags/list") as r:
        listed = json.load(r)["tags"]
    assert {"135m", "noindex"} <= set(listed)
    model = m.mountpoint / proxy.host / "library" / "smollm2"
    assert sorted(os.listdir(model)) == sorted(listed)
    assert (model / "noindex" / "model.gguf").stat().st_size > 0
    assert proxy.blob_bytes() == 0, "listing tags fetched blob bytes"


def test_names_the_registry_does_not_have_are_enoent_and_remembered(
    proxy, mount_factory, smollm2_pushed
):
    m = mount_factory()
    # Not a registry host: no dot, no port, not localhost (and not in the cache).
    with pytest.raises(FileNotFoundError):
        os.stat(m.mountpoint / "wat")
    host = m.mountpoint / proxy.host
    # A misspelt namespace: the registry answers NAME_UNKNOWN for library's cousin.
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.stat(host / "librar" / "smollm2")
    asked = [r for r in proxy.records() if r.path.endswith("/librar/smollm2/tags/list")]
    assert len(asked) == 1, f"the registry's 'no such repository' was not remembered: {asked}"
    with pytest.raises(FileNotFoundError):
        os.listdir(host / "library" / "nosuchmodel")
    assert os.path.isdir(host / "library" / "smollm2" / "135m")


def test_rm_while_the_mount_reads_stays_removed_and_frees_the_blob(
    proxy, mount_factory, smollm2_pushed, source
):
    m = mount_factory()
    name = f"{proxy.host}/library/smollm2:135m"
    library = m.mountpoint / proxy.host / "library"
    tag = library / "smollm2" / "135m"

    def views() -> tuple[str, str, int]:
        ls = run_modelfs("ls", "--cache", str(m.cache))
        du = run_modelfs("du", "--cache", str(m.cache)).stdout.splitlines()[-1]
        status = json.loads(run_modelfs("status", str(m.mountpoint), "--json", env=m.env).stdout)
        return ls.stdout + ls.stderr, du, status["cache"]["bytes"]

    with open(tag / "model.gguf", "rb") as f:
        assert f.read(8 << 20) == source[: 8 << 20]
        run_modelfs("rm", name, "--cache", str(m.cache))
        # Open files keep reading: the bytes come from the network again where needed.
        assert f.read(1 << 20) == source[8 << 20 : 9 << 20]
        assert os.listdir(library) == [], "the mount listed the removed model again"
    ls, du, _ = views()
    # Until the mount lets go, what it still holds is counted, as a partial of no model.
    assert "smollm2" not in ls, f"ls listed the removed model: {ls}"

    # Nothing reads the blob any more: its bytes are freed (empty lock files stay).
    def freed() -> bool:
        return views()[2] < (64 << 10)

    wait_for(freed, "the removed model's partial blob to be freed")
    ls, du, _ = views()
    assert ls == "no models in the cache\n"
    assert du.split()[1:3] == ["0", "B"], du
    partial = [p.name for p in (m.cache / ".modelfs" / "partial").iterdir() if p.suffix != ".lock"]
    assert partial == []
    assert os.listdir(library) == []

    # Read through the mount again: fetched again, the model is in the cache again, and
    # rm removes it again.
    assert (tag / "system").read_text() == "You are helpful."
    ls, du, used = views()
    assert "library/smollm2:135m" in ls
    assert du.split()[1:] != ["0", "B"] and used > 0
    run_modelfs("rm", name, "--cache", str(m.cache))
    assert os.listdir(library) == []
