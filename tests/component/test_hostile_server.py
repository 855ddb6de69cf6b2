"""The hostile registry (support.hostile) itself, driven by plain httpx and http.client.

These tests check the fixture, not modelfs: that it serves what it is told (bytes under digests
they do not hash to, ranges of them), misbehaves on request (trickles, redirects, hangs), lets go
of every thread at once when stopped, and that its builders write what modelfs parses.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from support.hostile import (
    TRICKLE_PIECE_BYTES,
    HostileRegistry,
    build_chunk_index,
    build_manifest,
    parse_range,
    sha256_digest,
)

from modelfs.formats.chunks import (
    MIN_CHUNK_BYTES,
    chunk_count,
    chunk_hash,
    chunk_span,
    parse_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_TEMPLATE,
    parse_manifest,
)

# A stopped server must let go of its clients at once, whatever they were waiting for.
STOP_SECONDS = 1.0
CONFIG = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    """A started hostile registry; at teardown no thread or socket of it is left."""
    threads, fds = set(threading.enumerate()), _fds()
    reg = HostileRegistry().start()
    try:
        yield reg
    finally:
        reg.stop()
    left = [t for t in threading.enumerate() if t not in threads]
    for t in left:
        t.join(STOP_SECONDS)
    assert not [t for t in left if t.is_alive()], "the stopped hostile registry left threads"
    assert _fds() <= fds, "the stopped hostile registry left sockets open"


@pytest.fixture
def client(hostile: HostileRegistry) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile.url, timeout=5.0) as c:
        yield c


def _stream(reg: HostileRegistry, path: str) -> tuple[http.client.HTTPConnection, object]:
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=5.0)
    conn.request("GET", path)
    return conn, conn.getresponse()


# -- the API root and manifests ------------------------------------------------------------


def test_it_listens_on_loopback_only(hostile: HostileRegistry, client: httpx.Client) -> None:
    assert hostile.host == f"127.0.0.1:{hostile.port}"
    assert hostile._server is not None and hostile._server.server_address[0] == "127.0.0.1"
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_manifest_by_tag_and_by_digest(hostile: HostileRegistry, client: httpx.Client) -> None:
    raw = build_manifest(CONFIG, [(MEDIA_TYPE_MODEL, sha256_digest(b"m"), 1)])
    digest = hostile.put_manifest("library/m", "latest", raw)
    assert digest == sha256_digest(raw)
    for ref in ("latest", digest):
        r = client.get(f"/v2/library/m/manifests/{ref}")
        assert r.status_code == 200
        assert r.content == raw
        assert r.headers["Content-Type"] == MEDIA_TYPE_DOCKER_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        h = client.head(f"/v2/library/m/manifests/{ref}")
        assert h.status_code == 200 and h.content == b""
        assert h.headers["Content-Length"] == str(len(raw))
        assert h.headers["Docker-Content-Digest"] == digest

    hostile.put_manifest("library/m", "oci", raw, media_type=MEDIA_TYPE_OCI_MANIFEST)
    assert client.get("/v2/library/m/manifests/oci").headers["Content-Type"] == (
        MEDIA_TYPE_OCI_MANIFEST
    )


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/library/m/manifests/other", "MANIFEST_UNKNOWN"),
        ("/v2/library/nobody/manifests/latest", "NAME_UNKNOWN"),
        (f"/v2/library/m/blobs/{sha256_digest(b'absent')}", "BLOB_UNKNOWN"),
        ("/v2/library/m/tags/list", "NOT_FOUND"),
        ("/elsewhere", "NOT_FOUND"),
    ],
)
def test_unknown_things_get_registry_errors(
    hostile: HostileRegistry, client: httpx.Client, path: str, code: str
) -> None:
    hostile.put_manifest("library/m", "latest", build_manifest(CONFIG, []))
    r = client.get(path)
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["errors"][0]["code"] == code


def test_writes_are_refused_after_reading_the_body(client: httpx.Client) -> None:
    r = client.put("/v2/library/m/manifests/latest", content=b"x" * 100_000)
    assert r.status_code == 405
    assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert client.get("/v2/").status_code == 200  # the connection is still good


# -- blobs and ranges ----------------------------------------------------------------------


def test_blob_whole_head_and_any_repo(hostile: HostileRegistry, client: httpx.Client) -> None:
    data = os.urandom(3000)
    digest = hostile.put_blob(data)
    assert digest == sha256_digest(data)
    for repo in ("library/m", "someone/else/deep"):
        r = client.get(f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200
        assert r.content == data
        assert r.headers["Content-Length"] == "3000"
        assert r.headers["Docker-Content-Digest"] == digest
    h = client.head(f"/v2/library/m/blobs/{digest}")
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Length"] == "3000"


@pytest.mark.parametrize(
    ("value", "span"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=10-19", (10, 20)),
        ("bytes=2990-5000", (2990, 3000)),  # clipped to the end
        ("bytes=2000-", (2000, 3000)),
        ("bytes=-100", (2900, 3000)),
        ("bytes=-5000", (0, 3000)),
    ],
)
def test_blob_ranges(
    hostile: HostileRegistry, client: httpx.Client, value: str, span: tuple[int, int]
) -> None:
    data = os.urandom(3000)
    digest = hostile.put_blob(data)
    r = client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": value})
    assert r.status_code == 206
    assert r.content == data[span[0] : span[1]]
    assert r.headers["Content-Length"] == str(span[1] - span[0])
    assert r.headers["Content-Range"] == f"bytes {span[0]}-{span[1] - 1}/3000"
    [req] = hostile.blob_requests(digest)
    assert req.bytes_sent == span[1] - span[0]
    assert req.status == 206


@pytest.mark.parametrize("value", ["bytes=3000-3001", "bytes=5000-", "bytes=-0"])
def test_unsatisfiable_range(hostile: HostileRegistry, client: httpx.Client, value: str) -> None:
    digest = hostile.put_blob(os.urandom(3000))
    r = client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": value})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == "bytes */3000"


@pytest.mark.parametrize("value", ["bytes=20-10", "bytes=0-1,5-6", "items=0-1", "bytes=-"])
def test_unusable_range_is_ignored(value: str) -> None:
    assert parse_range(value, 3000) is None


def test_any_bytes_under_any_digest(hostile: HostileRegistry, client: httpx.Client) -> None:
    claimed = sha256_digest(b"the real thing")
    hostile.put_blob(b"something else entirely", digest=claimed)
    r = client.get(f"/v2/library/m/blobs/{claimed}")
    assert r.content == b"something else entirely"
    assert r.headers["Docker-Content-Digest"] == claimed
    # Even names no registry would accept: the path segment is taken as it is.
    hostile.put_blob(b"odd", digest="sha256:not-hex")
    assert client.get("/v2/library/m/blobs/sha256:not-hex").content == b"odd"


# -- the worked example: a manifest naming the victim's digest, served the evil bytes -------


def test_evil_bytes_under_the_victims_digest_with_a_matching_chunk_index(
    hostile: HostileRegistry, client: httpx.Client
) -> None:
    chunk_bytes = MIN_CHUNK_BYTES
    size = 4 * chunk_bytes + 1234  # a short last chunk
    victim = os.urandom(size)
    evil = os.urandom(size)
    d = sha256_digest(victim)
    index = build_chunk_index({d: evil}, chunk_bytes)  # vouches for the evil bytes
    hostile.put_blob(evil, digest=d)
    hostile.put_blob(index)
    hostile.put_blob(CONFIG)
    raw = build_manifest(
        CONFIG,
        [(MEDIA_TYPE_MODEL, d, size), (MEDIA_TYPE_CHUNK_INDEX, sha256_digest(index), len(index))],
    )
    hostile.put_manifest("library/victim", "latest", raw)

    manifest = parse_manifest(client.get("/v2/library/victim/manifests/latest").content)
    [model] = manifest.layers_of_type(MEDIA_TYPE_MODEL)
    [index_layer] = manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX)
    assert (str(model.digest), model.size) == (d, size)
    config = client.get(f"/v2/library/victim/blobs/{manifest.config.digest}").content
    assert config == CONFIG
    index_raw = client.get(f"/v2/library/victim/blobs/{index_layer.digest}").content
    chunks = parse_chunk_index(index_raw, manifest.layers).blobs[model.digest]

    for i in range(chunk_count(size, chunk_bytes)):
        start, end = chunk_span(i, size, chunk_bytes)
        r = client.get(
            f"/v2/library/victim/blobs/{d}", headers={"Range": f"bytes={start}-{end - 1}"}
        )
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert r.content == evil[start:end]
        assert chunks.verify(i, r.content), "the index does not vouch for the evil chunk"
        assert not chunks.verify(i, victim[start:end])
    whole = client.get(f"/v2/library/victim/blobs/{d}").content
    assert len(whole) == size and whole == evil
    assert Digest.of_bytes(whole) != model.digest  # only a whole-blob check can tell


# -- builders round-trip through modelfs ---------------------------------------------------


def test_build_manifest_is_what_modelfs_parses() -> None:
    model, template = sha256_digest(b"model"), sha256_digest(b"template")
    raw = build_manifest(CONFIG, [(MEDIA_TYPE_MODEL, model, 5), (MEDIA_TYPE_TEMPLATE, template, 8)])
    m = parse_manifest(raw)
    assert m.raw == raw and m.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    assert (m.config.digest, m.config.media_type, m.config.size) == (
        Digest.of_bytes(CONFIG),
        MEDIA_TYPE_DOCKER_CONFIG,
        len(CONFIG),
    )
    assert [(str(x.digest), x.media_type, x.size) for x in m.layers] == [
        (model, MEDIA_TYPE_MODEL, 5),
        (template, MEDIA_TYPE_TEMPLATE, 8),
    ]


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_build_chunk_index_is_what_modelfs_parses(algorithm: str) -> None:
    chunk_bytes = MIN_CHUNK_BYTES
    big, small, empty = os.urandom(3 * chunk_bytes), b"tiny", b""
    blobs = {sha256_digest(b): b for b in (big, small, empty)}
    index = build_chunk_index(blobs, chunk_bytes, algorithm)
    raw = build_manifest(CONFIG, [(MEDIA_TYPE_MODEL, d, len(b)) for d, b in blobs.items()])
    parsed = parse_chunk_index(index, parse_manifest(raw).layers)
    assert parsed.chunk_bytes == chunk_bytes
    assert json.loads(index)["algorithm"] == algorithm
    for d, data in blobs.items():
        entry = parsed.blobs[Digest.parse(d)]
        assert entry.size == len(data)
        assert len(entry.hashes) == chunk_count(len(data), chunk_bytes)
        for i, h in enumerate(entry.hashes):
            start, end = chunk_span(i, len(data), chunk_bytes)
            assert h == chunk_hash(algorithm, data[start:end])


# -- behaviours ----------------------------------------------------------------------------


def test_trickle_paces_only_its_blob(hostile: HostileRegistry, client: httpx.Client) -> None:
    slow = hostile.put_blob(os.urandom(8 * TRICKLE_PIECE_BYTES))
    fast = hostile.put_blob(os.urandom(1 << 20))
    hostile.trickle(20 * TRICKLE_PIECE_BYTES, digest=slow)  # 8 KiB at 20 KiB/s: 0.35 s at least
    t0 = time.monotonic()
    r = client.get(f"/v2/library/m/blobs/{slow}")
    took = time.monotonic() - t0
    assert r.status_code == 200 and len(r.content) == 8 * TRICKLE_PIECE_BYTES
    assert 0.3 <= took < 2.0, f"8 KiB at 20 KiB/s took {took:.2f} s"
    t0 = time.monotonic()
    assert len(client.get(f"/v2/library/m/blobs/{fast}").content) == 1 << 20
    assert time.monotonic() - t0 < 0.3, "an untrickled blob was slow"
    hostile.clear()
    t0 = time.monotonic()
    client.get(f"/v2/library/m/blobs/{slow}")
    assert time.monotonic() - t0 < 0.3, "clear() left the trickle on"


def test_trickle_applies_to_ranges_and_every_blob(
    hostile: HostileRegistry, client: httpx.Client
) -> None:
    digest = hostile.put_blob(os.urandom(64 * TRICKLE_PIECE_BYTES))
    hostile.trickle(10 * TRICKLE_PIECE_BYTES)
    t0 = time.monotonic()
    r = client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": "bytes=0-4095"})
    assert r.status_code == 206 and len(r.content) == 4096
    assert time.monotonic() - t0 >= 0.25


def test_stop_ends_a_trickle_at_once(hostile: HostileRegistry) -> None:
    digest = hostile.put_blob(os.urandom(1 << 20))
    hostile.trickle(1024)  # 1 MiB would take 17 minutes
    conn, resp = _stream(hostile, f"/v2/library/m/blobs/{digest}")
    try:
        assert resp.status == 200  # type: ignore[attr-defined]
        assert len(resp.read(50)) == 50  # type: ignore[attr-defined]
        t0 = time.monotonic()
        hostile.stop()
        assert time.monotonic() - t0 < STOP_SECONDS
        with pytest.raises((http.client.IncompleteRead, OSError)):
            resp.read()  # type: ignore[attr-defined]
    finally:
        conn.close()


def test_a_trickle_ends_when_the_client_hangs_up(hostile: HostileRegistry) -> None:
    digest = hostile.put_blob(os.urandom(1 << 20))
    hostile.trickle(1024, digest=digest)
    conn, resp = _stream(hostile, f"/v2/library/m/blobs/{digest}")
    assert len(resp.read(50)) == 50  # type: ignore[attr-defined]
    resp.close()  # type: ignore[attr-defined]
    conn.close()
    hostile.wait_for(lambda: hostile.in_flight == 0, timeout_seconds=STOP_SECONDS)
    [req] = hostile.blob_requests(digest)
    assert 50 <= req.bytes_sent < 4096


@pytest.mark.parametrize("location", ["gopher://127.0.0.1/x", "file:///etc/passwd"])
def test_redirect_to_hostile_schemes(
    hostile: HostileRegistry, client: httpx.Client, location: str
) -> None:
    target = hostile.put_blob(b"target")
    other = hostile.put_blob(b"other")
    hostile.redirect(location, digest=target)
    for method in ("GET", "HEAD"):
        r = client.request(method, f"/v2/library/m/blobs/{target}")
        assert r.status_code == 307
        assert r.headers["Location"] == location
        assert r.headers["Content-Length"] == "0"
    assert client.get(f"/v2/library/m/blobs/{other}").content == b"other"


def test_redirect_every_blob_with_a_status_and_a_per_digest_override(
    hostile: HostileRegistry, client: httpx.Client
) -> None:
    a = hostile.put_blob(b"a")
    b = hostile.put_blob(b"b")
    hostile.redirect("http://127.0.0.1:1/everything", status=302)
    hostile.redirect("file:///etc/passwd", digest=b, status=301)
    r = client.get(f"/v2/library/m/blobs/{a}")
    assert (r.status_code, r.headers["Location"]) == (302, "http://127.0.0.1:1/everything")
    r = client.get(f"/v2/library/m/blobs/{b}")
    assert (r.status_code, r.headers["Location"]) == (301, "file:///etc/passwd")
    # Unknown blobs are redirected too: a redirect never looks at what is stored.
    r = client.get(f"/v2/library/m/blobs/{sha256_digest(b'absent')}")
    assert r.status_code == 302
    hostile.clear()
    assert client.get(f"/v2/library/m/blobs/{a}").content == b"a"


def test_hang_never_answers_until_the_client_gives_up(
    hostile: HostileRegistry, client: httpx.Client
) -> None:
    stuck = hostile.put_blob(b"stuck")
    fine = hostile.put_blob(b"fine")
    hostile.hang(digest=stuck)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v2/library/m/blobs/{stuck}", timeout=0.3)
    # The client gives up after 0.3 s whether or not the server has taken the request in
    # yet (a loaded machine): wait until it has, and has let it go.
    hostile.wait_for(lambda: bool(hostile.blob_requests(stuck)) and hostile.in_flight == 0)
    [req] = hostile.blob_requests(stuck)
    assert (req.status, req.bytes_sent) == (0, 0)
    assert client.get(f"/v2/library/m/blobs/{fine}").content == b"fine"
    hostile.clear()
    assert client.get(f"/v2/library/m/blobs/{stuck}").content == b"stuck"


def test_stop_releases_a_hung_client_at_once(hostile: HostileRegistry) -> None:
    hostile.hang()
    conn = http.client.HTTPConnection("127.0.0.1", hostile.port, timeout=5.0)
    try:
        conn.request("GET", f"/v2/library/m/blobs/{sha256_digest(b'x')}")
        hostile.wait_for(lambda: hostile.in_flight == 1)
        t0 = time.monotonic()
        hostile.stop()
        assert time.monotonic() - t0 < STOP_SECONDS
        with pytest.raises((http.client.RemoteDisconnected, OSError)):
            conn.getresponse()
    finally:
        conn.close()


def test_hang_beats_redirect_beats_trickle(hostile: HostileRegistry, client: httpx.Client) -> None:
    digest = hostile.put_blob(b"x" * 4096)
    hostile.trickle(1024)
    hostile.redirect("file:///etc/passwd", digest=digest)
    assert client.get(f"/v2/library/m/blobs/{digest}").status_code == 307
    hostile.hang(digest=digest)
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v2/library/m/blobs/{digest}", timeout=0.2)


# -- the request log -----------------------------------------------------------------------


def test_request_log_records_headers_and_bytes(
    hostile: HostileRegistry, client: httpx.Client
) -> None:
    digest = hostile.put_blob(os.urandom(5000))
    client.get("/v2/")
    client.get(f"/v2/library/m/blobs/{digest}", headers={"Range": "bytes=0-999"})
    client.head(f"/v2/library/m/blobs/{digest}")
    client.get(f"/v2/library/m/blobs/{digest}", headers={"Authorization": "Bearer leaked"})

    log = hostile.requests
    assert [(r.method, r.path) for r in log] == [
        ("GET", "/v2/"),
        ("GET", f"/v2/library/m/blobs/{digest}"),
        ("HEAD", f"/v2/library/m/blobs/{digest}"),
        ("GET", f"/v2/library/m/blobs/{digest}"),
    ]
    method, path, headers, sent = log[1]  # a plain 4-tuple too
    assert (method, path, sent) == ("GET", f"/v2/library/m/blobs/{digest}", 1000)
    assert headers["range"] == "bytes=0-999"
    assert "Authorization" not in headers
    assert [r.bytes_sent for r in log[2:]] == [0, 5000]
    assert log[3].headers["authorization"] == "Bearer leaked"
    assert len(hostile.blob_requests(digest)) == 2
    assert len(hostile.blob_requests(method="HEAD")) == 1
    hostile.clear_requests()
    assert hostile.requests == []


def test_request_log_is_safe_under_concurrent_clients(hostile: HostileRegistry) -> None:
    digest = hostile.put_blob(os.urandom(10_000))

    def fetch() -> None:
        with httpx.Client(base_url=hostile.url, timeout=5.0) as c:
            for _ in range(10):
                assert len(c.get(f"/v2/library/m/blobs/{digest}").content) == 10_000

    workers = [threading.Thread(target=fetch) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    hostile.wait_for(lambda: hostile.in_flight == 0)
    reqs = hostile.blob_requests(digest)
    assert len(reqs) == 40
    assert all(r.bytes_sent == 10_000 and r.status == 200 for r in reqs)
