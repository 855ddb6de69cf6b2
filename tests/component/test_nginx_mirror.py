"""The shipped read mirror (mirror/nginx.conf): nginx caching blobs in 4 MiB slices.

nginx runs the file in the repository (placeholders filled in by support/nginx.py), in front of
a real docker-registry; the counting proxy (support/proxy.py) sits between nginx and the
registry, so every byte the registry serves the mirror is on record. Clients are plain HTTP
(http.client): what a node sees of the mirror, whatever reads it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from support.httpserver import QuietHandler, Served
from support.nginx import NginxMirror
from support.ollama_front import CDN
from support.proxy import Proxy, Record
from support.registry import RegistryProcess, image_manifest

from modelfs.formats.digest import Digest
from modelfs.formats.names import parse_name
from modelfs.registry.client import BlobRange, Registry, RegistryConfig
from modelfs.registry.config import load_config

SLICE_BYTES = 4 << 20  # `slice 4m` in mirror/nginx.conf: modelfs's chunk size
BLOB_BYTES = 5 * SLICE_BYTES + 1234  # six slices, the last one short
CLIENTS = 8
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


# -- clients and pushes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    header_list: list[tuple[str, str]]
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; a repeated header's last value."""
        return {k.lower(): v for k, v in self.header_list}

    def challenge(self) -> str:
        """The one WWW-Authenticate header (a client would have to merge two)."""
        found = [v for k, v in self.header_list if k.lower() == "www-authenticate"]
        assert len(found) == 1, f"{len(found)} WWW-Authenticate headers: {found}"
        return found[0]


def request(
    host: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Answer:
    name, _, port = host.partition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return Answer(r.status, r.getheaders(), body)
    finally:
        conn.close()


def ranged(start: int, end: int) -> dict[str, str]:
    """The Range header for bytes [start, end)."""
    return {"Range": f"bytes={start}-{end - 1}"}


def at_once(n: int, call: Callable[[], Answer]) -> list[Answer]:
    """``call`` from ``n`` threads released together."""
    barrier = threading.Barrier(n)

    def one() -> Answer:
        barrier.wait(30)
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: one(), range(n)))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(host: str, repo: str, data: bytes, headers: dict[str, str] | None = None) -> str:
    """Upload ``data`` straight to the registry (POST, then PUT ?digest=); its digest."""
    digest = digest_of(data)
    start = request(host, f"/v2/{repo}/blobs/uploads/", headers, method="POST")
    assert start.status == 202, f"upload of {digest} refused: {start.status} {start.body!r}"
    location = urllib.parse.urlsplit(start.headers["location"])
    query = f"{location.query}&" if location.query else ""
    name, _, port = host.partition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    try:
        conn.request(
            "PUT",
            f"{location.path}?{query}digest={digest}",
            body=data,
            headers={**(headers or {}), "Content-Type": "application/octet-stream"},
        )
        r = conn.getresponse()
        r.read()
        assert r.status == 201, f"upload of {digest}: {r.status}"
    finally:
        conn.close()
    return digest


def push_manifest(host: str, repo: str, tag: str, layer: bytes) -> bytes:
    """A config, one layer and a schema 2 manifest tagged ``tag``; the manifest's bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (config, layer):
        push_blob(host, repo, blob)
    manifest = image_manifest(config, layer)
    name, _, port = host.partition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    try:
        conn.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            body=manifest,
            headers={"Content-Type": MANIFEST_V2},
        )
        r = conn.getresponse()
        r.read()
        assert r.status == 201, f"manifest PUT: {r.status}"
    finally:
        conn.close()
    return manifest


def slice_span(record: Record) -> tuple[int, int]:
    """The slice a request to the registry asked for, checking it is one whole slice."""
    span = record.span
    assert span is not None, f"the mirror asked the registry for a whole blob: {record}"
    start, end = span
    assert start % SLICE_BYTES == 0 and end - start == SLICE_BYTES, (
        f"the mirror asked the registry for {record.range}, not one {SLICE_BYTES}-byte slice"
    )
    return start, end


def slices_fetched(records: list[Record]) -> list[int]:
    """Indexes of the blob slices the registry served, in order, repeats kept."""
    return sorted(
        slice_span(r)[0] // SLICE_BYTES
        for r in records
        if r.method == "GET" and "/blobs/" in r.path and r.status in (200, 206)
    )


def bytes_served(counter: Proxy) -> int:
    """Blob bytes the registry served (error bodies left out)."""
    return sum(r.body_bytes for r in counter.blob_records() if r.status in (200, 206))


def heads(records: list[Record]) -> list[Record]:
    return [r for r in records if r.method == "HEAD" and "/blobs/" in r.path]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[..., NginxMirror]]:
    """``make(origin host:port)`` → the shipped mirror, started; all stopped after the test,
    which fails if nginx logged an error."""
    started: list[NginxMirror] = []

    def make(origin: str, **options: str) -> NginxMirror:
        mirror = NginxMirror(tmp_path / f"nginx-{len(started)}", origin, **options)
        started.append(mirror)
        return mirror.start()

    yield make
    for mirror in started:
        mirror.stop()
    problems = [line for mirror in started for line in mirror.problems()]
    assert not problems, "nginx logged errors:\n" + "\n".join(problems)


@dataclass(frozen=True)
class Counted:
    registry: RegistryProcess
    counter: Proxy  # between nginx and the registry
    mirror: NginxMirror


@pytest.fixture
def counted(
    fresh_registry: RegistryProcess, nginx_factory: Callable[..., NginxMirror]
) -> Iterator[Counted]:
    counter = Proxy(fresh_registry.host).start()
    try:
        yield Counted(fresh_registry, counter, nginx_factory(counter.host))
    finally:
        counter.stop()


@pytest.fixture
def blob() -> bytes:
    return os.urandom(BLOB_BYTES)


# -- (a) a herd on a cold range --------------------------------------------------------------


def test_eight_clients_on_the_same_cold_range_cost_the_registry_each_slice_once(counted, blob):
    digest = push_blob(counted.registry.host, "library/herd", blob)
    path = f"/v2/library/herd/blobs/{digest}"
    start, end = SLICE_BYTES, 4 * SLICE_BYTES  # a modelfs run: chunks 1 to 3

    answers = at_once(CLIENTS, lambda: request(counted.mirror.host, path, ranged(start, end)))

    for a in answers:
        assert a.status == 206, f"a client got {a.status}, not 206"
        assert a.headers["content-range"] == f"bytes {start}-{end - 1}/{BLOB_BYTES}"
        assert a.body == blob[start:end], "a client got the wrong bytes"
    records = counted.counter.records()
    assert slices_fetched(records) == [1, 2, 3], (
        f"{CLIENTS} clients made the registry serve slices {slices_fetched(records)}"
    )
    assert counted.counter.blob_bytes() == end - start
    # Each client's right to the blob was asked of the registry, with no body.
    assert len(heads(records)) == CLIENTS
    assert all(r.body_bytes == 0 for r in heads(records))


# -- (b) ranges that are not slices ------------------------------------------------------------


def test_ranges_not_aligned_to_slices_are_served_exactly(counted, blob):
    digest = push_blob(counted.registry.host, "library/ranges", blob)
    path = f"/v2/library/ranges/blobs/{digest}"
    size = BLOB_BYTES
    spans = [
        (10, 21),  # inside the first slice
        (SLICE_BYTES - 100, SLICE_BYTES + 100),  # across a slice boundary
        (2 * SLICE_BYTES + 7, 4 * SLICE_BYTES + 5000),  # across three
        (size - 10, size),  # the end of the short last slice
        (size - 1, size),  # the last byte
    ]
    for start, end in spans:
        a = request(counted.mirror.host, path, ranged(start, end))
        assert a.status == 206, f"bytes {start}-{end - 1}: {a.status}"
        assert a.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert a.body == blob[start:end], f"bytes {start}-{end - 1} came back wrong"

    past_end = request(counted.mirror.host, path, {"Range": f"bytes={size - 5}-{size + 100}"})
    assert (past_end.status, past_end.body) == (206, blob[size - 5 :])
    assert past_end.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
    open_ended = request(counted.mirror.host, path, {"Range": f"bytes={3 * SLICE_BYTES + 1}-"})
    assert (open_ended.status, open_ended.body) == (206, blob[3 * SLICE_BYTES + 1 :])
    suffix = request(counted.mirror.host, path, {"Range": "bytes=-300"})
    assert (suffix.status, suffix.body) == (206, blob[-300:])
    whole = request(counted.mirror.host, path)
    assert (whole.status, whole.body) == (200, blob)
    assert whole.headers["content-length"] == str(size)

    # The registry was asked for whole slices only, each once, whatever the clients asked.
    assert slices_fetched(counted.counter.records()) == [0, 1, 2, 3, 4, 5]
    assert counted.counter.blob_bytes() == size


# -- (c) the second round ----------------------------------------------------------------------


def test_a_second_round_is_served_from_the_cache_with_no_upstream_bytes(counted, blob):
    digest = push_blob(counted.registry.host, "library/again", blob)
    path = f"/v2/library/again/blobs/{digest}"
    assert request(counted.mirror.host, path).body == blob  # the first round: every slice
    assert counted.counter.blob_bytes() == BLOB_BYTES
    counted.counter.reset()

    spans = [(i * SLICE_BYTES // 2, i * SLICE_BYTES // 2 + SLICE_BYTES) for i in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS)

    def client(span: tuple[int, int]) -> Answer:
        barrier.wait(30)
        return request(counted.mirror.host, path, ranged(*span))

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(client, spans))
    for (start, end), a in zip(spans, answers, strict=True):
        assert (a.status, a.body == blob[start:end]) == (206, True), f"bytes {start}-{end - 1}"
    assert counted.counter.blob_bytes() == 0, "the second round cost the registry bytes"

    # The same digest under another repository is the same cached bytes.
    push_blob(counted.registry.host, "other/name", blob)
    counted.counter.reset()
    other = request(counted.mirror.host, f"/v2/other/name/blobs/{digest}", ranged(0, BLOB_BYTES))
    assert (other.status, other.body == blob) == (206, True)

    assert [r.method for r in counted.counter.records()] == ["HEAD"], (
        "the registry was asked more than whether the client may read the blob"
    )


# -- (d) manifests pass through ----------------------------------------------------------------


def test_manifests_and_everything_else_pass_through_uncached(counted):
    host, mirror = counted.registry.host, counted.mirror.host
    accept = {"Accept": MANIFEST_V2}
    first = push_manifest(host, "library/moving", "latest", b"layer one")
    a = request(mirror, "/v2/library/moving/manifests/latest", accept)
    assert (a.status, a.body) == (200, first)
    assert a.headers["docker-content-digest"] == digest_of(first)

    second = push_manifest(host, "library/moving", "latest", b"layer two")
    b = request(mirror, "/v2/library/moving/manifests/latest", accept)
    assert b.body == second, "the mirror served the tag's old manifest after a re-push"
    assert b.headers["docker-content-digest"] == digest_of(second)
    manifest_gets = [r for r in counted.counter.records() if "/manifests/" in r.path]
    assert len(manifest_gets) == 2, "each manifest request went to the registry"

    counted.counter.reset()
    assert request(mirror, "/v2/").status == 200
    tags = request(mirror, "/v2/library/moving/tags/list")
    assert json.loads(tags.body)["tags"] == ["latest"]
    head = request(mirror, f"/v2/library/moving/blobs/{digest_of(b'layer two')}", method="HEAD")
    assert (head.status, head.headers["content-length"]) == (200, str(len(b"layer two")))
    missing = request(mirror, f"/v2/library/moving/blobs/{digest_of(b'never pushed')}")
    assert missing.status == 404, "a blob the registry lacks is the registry's 404"
    assert [(r.method, r.path.rsplit("/", 2)[-2]) for r in counted.counter.records()] == [
        ("GET", "v2"),
        ("GET", "tags"),
        ("HEAD", "blobs"),
        ("HEAD", "blobs"),  # the mirror asks before serving a GET ...
        ("GET", "blobs"),  # ... and a no sends the request on, for the registry's own answer
    ]
    assert counted.mirror.cached_files() == []

    # Read-only: a push through the mirror is refused before it reaches the registry.
    counted.counter.reset()
    assert request(mirror, "/v2/library/moving/blobs/uploads/", method="POST").status == 405
    assert counted.counter.records() == []


# -- (e) credentials ---------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_bearer_tokens_pass_through_and_the_registry_decides_who_gets_cached_bytes(
    token_registry, nginx_factory, blob
):
    issuer, registry = token_registry.issuer, token_registry.registry
    repo = "private/weights"
    pull = f"repository:{repo}:pull"
    push = issuer.fetch(f"repository:{repo}:pull,push", user="alice", password="secret")
    digest = push_blob(registry.host, repo, blob, bearer(push))
    counter = Proxy(registry.host).start()
    try:
        mirror = nginx_factory(counter.host)
        path = f"/v2/{repo}/blobs/{digest}"
        span = (SLICE_BYTES, 3 * SLICE_BYTES)

        anonymous = request(mirror.host, path, ranged(*span))
        assert anonymous.status == 401, "a client without a token was not challenged"
        challenge = anonymous.challenge()
        assert challenge.startswith(f'Bearer realm="{issuer.realm}"'), challenge
        assert f'scope="{pull}"' in challenge
        assert bytes_served(counter) == 0

        alice = request(
            mirror.host,
            path,
            {**ranged(*span), **bearer(issuer.fetch(pull, user="alice", password="secret"))},
        )
        assert (alice.status, alice.body == blob[span[0] : span[1]]) == (206, True)
        assert slices_fetched(counter.records()) == [1, 2]

        # Another token, another client: the cached bytes, once the registry says yes.
        counter.reset()
        again = request(
            mirror.host,
            path,
            {**ranged(*span), **bearer(issuer.fetch(pull, user="alice", password="secret"))},
        )
        assert (again.status, again.body == blob[span[0] : span[1]]) == (206, True)
        assert bytes_served(counter) == 0
        assert [r.method for r in counter.records()] == ["HEAD"]

        # The bytes are cached now; knowing the digest does not open them.
        counter.reset()
        for who, headers in [
            ("no token", {}),
            (
                "bob, whose token grants nothing here",
                bearer(issuer.fetch(pull, user="bob", password="hunter2")),
            ),
            ("a forged token", bearer("not.a.token")),
        ]:
            a = request(mirror.host, path, {**ranged(*span), **headers})
            assert a.status == 401, f"{who}: {a.status}"
            assert a.challenge().startswith("Bearer realm="), who
            assert blob[span[0] : span[0] + 4096] not in a.body, f"{who} got the blob's bytes"
        bob_library = issuer.fetch("repository:library/any:pull", user="bob", password="hunter2")
        elsewhere = request(
            mirror.host, f"/v2/library/any/blobs/{digest}", {**ranged(*span), **bearer(bob_library)}
        )
        assert elsewhere.status == 404, "a repository without the blob served it from the cache"
        # A path that names one repository to the registry's check and another to the cache:
        # nginx asks about the path it matched, dot segments resolved.
        dotted = request(
            mirror.host,
            f"/v2/library/any/../../{repo}/blobs/{digest}",
            {**ranged(*span), **bearer(bob_library)},
        )
        assert dotted.status != 206, "a path with dot segments got the cached blob"
        assert blob[span[0] : span[0] + 4096] not in dotted.body
        assert bytes_served(counter) == 0
    finally:
        counter.stop()


def test_basic_credentials_pass_through(basic_registry, nginx_factory, blob):
    def basic(user: str, password: str) -> dict[str, str]:
        return {
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        }

    alice = basic("alice", "secret")
    digest = push_blob(basic_registry.host, "team/model", blob, alice)
    mirror = nginx_factory(basic_registry.host)
    path = f"/v2/team/model/blobs/{digest}"
    ok = request(mirror.host, path, {**ranged(0, 100), **alice})
    assert (ok.status, ok.body) == (206, blob[:100])
    for headers in ({}, basic("alice", "wrong")):
        refused = request(mirror.host, path, {**ranged(0, 100), **headers})
        assert refused.status == 401
        assert refused.challenge().startswith('Basic realm="modelfs-test"')
        assert refused.body != blob[:100]


# -- (f) redirects ---------------------------------------------------------------------------


class Redirector(Served):
    """A registry that keeps its blobs elsewhere: every blob GET and HEAD is a 307 to a
    presigned URL on ``cdn`` (another host); ``/v2/`` is 200; the rest 404."""

    def __init__(self, cdn: CDN) -> None:
        super().__init__(_RedirectHandler, "redirector")
        self.cdn = cdn
        self.requests: list[tuple[str, str, bool]] = []  # method, path, had Authorization
        self.lock = threading.Lock()


class _RedirectHandler(QuietHandler):
    def _answer(self) -> None:
        owner: Redirector = self.server.owner  # type: ignore[assignment]
        with owner.lock:
            owner.requests.append((self.command, self.path, "Authorization" in self.headers))
        m = re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]{64})", self.path)
        if m is not None:
            self.send_response(307)
            self.send_header("Location", owner.cdn.presign(m[2], m[1], 3600))
        else:
            self.send_response(200 if self.path == "/v2/" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer


def test_a_redirect_to_another_host_is_followed_by_the_mirror_and_cached(
    fresh_registry, nginx_factory, blob
):
    digest = push_blob(fresh_registry.host, "library/far", blob)
    counter = Proxy(fresh_registry.host).start()  # what the CDN takes from the storage
    cdn = CDN(counter.host).start()
    redirector = Redirector(cdn).start()
    try:
        mirror = nginx_factory(redirector.host)
        path = f"/v2/library/far/blobs/{digest}"
        span = (0, 3 * SLICE_BYTES + 10)
        token = bearer("for-the-registry-only")

        answers = at_once(CLIENTS, lambda: request(mirror.host, path, {**ranged(*span), **token}))
        for a in answers:
            assert a.status == 206, f"a client got {a.status}: the redirect was not followed"
            assert "location" not in a.headers
            assert a.body == blob[span[0] : span[1]]
        assert slices_fetched(counter.records()) == [0, 1, 2, 3], "each slice once, from the CDN"
        cdn_gets = [r for r in cdn.requests if r.method == "GET"]
        assert len(cdn_gets) == 4
        assert not any("Authorization" in r.headers for r in cdn.requests), (
            "the registry's token went to the CDN"
        )
        assert all(had_auth for _, _, had_auth in redirector.requests)

        # The second round: from the cache, nothing from the CDN.
        counter.reset()
        cdn.reset()
        again = request(mirror.host, path, {**ranged(*span), **token})
        assert (again.status, again.body == blob[span[0] : span[1]]) == (206, True)
        assert counter.blob_bytes() == 0
        assert cdn.requests == []
    finally:
        redirector.stop()
        cdn.stop()
        counter.stop()


# -- (e) credentials, on the modelfs side -------------------------------------------------------


@pytest.mark.parametrize("credentials", ["origin", "mirror"])
async def test_modelfs_sends_the_origins_credentials_only_to_a_mirror_configured_for_it(
    token_registry, nginx_factory, blob, tmp_path, caplog, credentials
):
    """A private repository read through the mirror: with ``credentials = "origin"`` modelfs
    gets its token from the origin's realm with the origin's login and sends it to the mirror,
    which passes it through; by default it sends the mirror nothing it holds for the origin,
    is refused, and reads from the origin instead."""
    issuer, registry = token_registry.issuer, token_registry.registry
    repo = "private/weights"
    push = issuer.fetch(f"repository:{repo}:pull,push", user="alice", password="secret")
    digest = push_blob(registry.host, repo, blob, bearer(push))
    counter = Proxy(registry.host).start()  # counts what reaches the registry through nginx
    try:
        mirror = nginx_factory(counter.host)
        docker = tmp_path / "docker.json"
        login = base64.b64encode(b"alice:secret").decode()
        docker.write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
        endpoint = f"http://{mirror.host}"
        path = tmp_path / "config.toml"
        path.write_text(
            f'[[mirror]]\nhost = "{registry.host}"\nendpoints = ["{endpoint}"]\n'
            f'credentials = "{credentials}"\n'
        )
        file = load_config(path)
        client = Registry(
            RegistryConfig(
                docker_config=docker,
                mirrors=file.mirrors,
                origin_credentials=file.origin_credentials,
            )
        )
        name = parse_name(f"{registry.host}/{repo}:latest")
        got = bytearray()
        span = (SLICE_BYTES, 3 * SLICE_BYTES)
        try:
            await client.fetch_range(
                BlobRange(
                    name,
                    Digest.parse(digest),
                    *span,
                    1 << 20,
                    lambda _offset, view: got.extend(view),
                ),
                limiter=trio.CapacityLimiter(1),
            )
        finally:
            await client.aclose()
        assert bytes(got) == blob[span[0] : span[1]]
        through_mirror = slices_fetched(counter.records())
        refused = [
            r for r in caplog.records if "mirror" in r.getMessage() and "failed" in r.message
        ]
        if credentials == "origin":
            assert through_mirror == [1, 2]
            assert refused == []
        else:
            assert through_mirror == [], "the mirror served a private blob without a token"
            assert refused and "401" in refused[0].message
    finally:
        counter.stop()
