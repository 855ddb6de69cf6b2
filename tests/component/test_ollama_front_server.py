"""The fake registry.ollama.ai (support.ollama_front) itself, driven by a hand-written client."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import re
import secrets
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.ollama_front import CDN, PUSH_DENIED, TOO_OLD, OllamaFront

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
UA = "ollama/0.5.7 (amd64 linux) Go/go1.23.4"
CHALLENGE = re.compile(r'^Bearer realm="([^"]+)",service="([^"]+)",scope="([^"]+)"$')


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Key:
    """An Ollama identity: ed25519 key, public key as OpenSSH wire form in base64."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        wire = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + raw
        self.pub = base64.b64encode(wire).decode()
        line = self.private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        assert line.split()[1].decode() == self.pub  # our wire form is OpenSSH's

    def authorization(self, url: str) -> str:
        empty = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
        sig = self.private.sign(f"GET,{url},{empty}".encode())
        return f"{self.pub}:{base64.b64encode(sig).decode()}"


def token_url(realm: str, scope: str, service: str = "ollama.com", **override: str) -> str:
    params = {"nonce": secrets.token_urlsafe(16), "scope": scope, "service": service}
    params["ts"] = str(int(time.time()))
    params.update(override)
    return f"{realm}?{urllib.parse.urlencode(params)}"


class Client:
    """Just enough of the Ollama client: answer Bearer challenges with signed token requests."""

    def __init__(self, key: Key, front: OllamaFront) -> None:
        self.key = key
        self.front = front
        self.http = httpx.Client(timeout=30, headers={"User-Agent": UA})
        self.bearer: str | None = None

    def close(self) -> None:
        self.http.close()

    def get_token(self, challenge: str) -> str:
        m = CHALLENGE.match(challenge)
        assert m, challenge
        realm, service, scope = m.groups()
        url = token_url(realm, scope, service)
        r = self.http.get(url, headers={"Authorization": self.key.authorization(url)})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def request(self, method: str, url: str, **kw: object) -> httpx.Response:
        if not url.startswith("http"):
            url = f"{self.front.url}{url}"
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        if self.bearer is not None:  # the last token, as Ollama reuses it
            headers["Authorization"] = f"Bearer {self.bearer}"
        r = self.http.request(method, url, headers=headers, **kw)  # type: ignore[arg-type]
        if r.status_code == 401 and "WWW-Authenticate" in r.headers:
            self.bearer = self.get_token(r.headers["WWW-Authenticate"])
            headers["Authorization"] = f"Bearer {self.bearer}"
            r = self.http.request(method, url, headers=headers, **kw)  # type: ignore[arg-type]
        return r

    def push_blob(self, repo: str, data: bytes) -> httpx.Response:
        digest = sha256(data)
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if r.status_code == 200:
            return r
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        if r.status_code != 202:
            return r
        location = r.headers["Location"]
        assert location.startswith(self.front.url), location  # rewritten to the front
        half = len(data) // 2
        for start, piece in ((0, data[:half]), (half, data[half:])):
            r = self.request(
                "PATCH",
                location,
                content=piece,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(piece) - 1}",
                },
            )
            assert r.status_code == 202, r.text
            location = r.headers["Location"]
            assert location.startswith(self.front.url), location
        sep = "&" if "?" in location else "?"
        return self.request("PUT", f"{location}{sep}digest={digest}")

    def push_model(self, repo: str, tag: str, layer: bytes) -> bytes:
        config = b'{"model_format":"gguf","model_family":"test"}'
        for blob in (config, layer):
            r = self.push_blob(repo, blob)
            assert r.status_code in (200, 201), (r.status_code, r.text)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_V2,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": MANIFEST_V2},
        )
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == sha256(manifest)
        return manifest


@pytest.fixture
def client_factory(ollama_front: tuple[OllamaFront, CDN]) -> Iterator:
    clients: list[Client] = []

    def make(key: Key | None = None) -> Client:
        c = Client(key or Key(), ollama_front[0])
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def unique_repo(namespace: str = "alice") -> str:
    return f"{namespace}/tiny-{uuid.uuid4().hex[:8]}"


def test_push_then_pull_via_redirect_and_cdn(ollama_front, client_factory):
    front, cdn = ollama_front
    alice = client_factory()
    front.allow_push(alice.key.pub, "alice")
    repo = unique_repo()
    layer = bytes(range(256)) * 40
    manifest = alice.push_model(repo, "latest", layer)

    puller = client_factory()  # any key may pull
    r = puller.request("GET", f"/v2/{repo}/manifests/latest", headers={"Accept": MANIFEST_V2})
    assert r.status_code == 200
    assert r.content == manifest
    assert r.headers["Docker-Content-Digest"] == sha256(manifest)
    assert r.headers["Content-Type"] == MANIFEST_V2

    digest = sha256(layer)
    r = puller.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(layer))
    assert r.headers["Docker-Content-Digest"] == digest

    r = puller.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 307
    url = r.headers["Location"]
    assert url.startswith(f"http://{cdn.host}/blobs/{digest}?expires=")
    assert front.redirects[digest] == 1

    # The CDN is another host: no Authorization goes there.
    r = puller.http.get(url, headers={"Range": "bytes=100-1099"})
    assert r.status_code == 206
    assert r.content == layer[100:1100]
    assert r.headers["Content-Range"] == f"bytes 100-1099/{len(layer)}"
    r = puller.http.get(url)
    assert r.status_code == 200
    assert r.content == layer
    assert len(cdn.requests) == 2
    assert all("Authorization" not in headers for _, _, headers in cdn.requests)
    assert cdn.requests[0].headers["range"] == "bytes=100-1099"  # looked up case-insensitively

    # Every /v2/ request first came without a token, then with one.
    v2 = [r for r in front.requests if r.path.startswith("/v2/")]
    assert {r.status for r in v2 if not r.authorized} == {401}
    assert all(r.user_agent == UA for r in front.requests)
    assert [t.status for t in front.token_requests] == [200] * len(front.token_requests)


def test_challenge_names_realm_service_and_scope(ollama_front, client_factory):
    front, _ = ollama_front
    http = client_factory().http
    cases = [
        ("GET", "/v2/alice/m/manifests/latest", "pull"),
        ("HEAD", f"/v2/alice/m/blobs/{sha256(b'x')}", "pull"),
        ("POST", "/v2/alice/m/blobs/uploads/", "push,pull"),
        ("PUT", "/v2/alice/m/manifests/latest", "push,pull"),
        ("DELETE", f"/v2/alice/m/manifests/{sha256(b'x')}", "delete"),
    ]
    for method, path, action in cases:
        r = http.request(method, f"{front.url}{path}", content=b"{}" if method == "PUT" else None)
        assert r.status_code == 401, (method, path)
        assert r.headers["WWW-Authenticate"] == (
            f'Bearer realm="http://{front.host}/token",service="ollama.com",'
            f'scope="repository:alice/m:{action}"'
        )
    # A bogus or expired token is challenged the same way.
    r = http.get(
        f"{front.url}/v2/alice/m/manifests/latest", headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"

    front.realm = "http://127.0.0.2:9/token"
    r = http.get(f"{front.url}/v2/alice/m/manifests/latest")
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="http://127.0.0.2:9/token",')


def test_token_endpoint_rejects_bad_signature_reused_nonce_and_skew(ollama_front, client_factory):
    front, _ = ollama_front
    key = Key()
    http = client_factory(key).http
    realm, scope = front.realm, "repository:alice/m:pull"

    def ask(url: str, authorization: str) -> httpx.Response:
        return http.get(url, headers={"Authorization": authorization})

    url = token_url(realm, scope)
    good = key.authorization(url)
    assert ask(url, good).status_code == 200

    # The same request again: the nonce was used.
    r = ask(url, good)
    assert r.status_code == 401
    assert r.json() == {"errors": [{"code": "UNAUTHORIZED", "message": "nonce already used"}]}

    # Signed by another key, or signed over another URL.
    url = token_url(realm, scope)
    impostor = Key()
    assert ask(url, f"{key.pub}:{impostor.authorization(url).split(':')[1]}").status_code == 401
    assert ask(url, key.authorization(url.replace("pull", "push"))).status_code == 401
    assert ask(url, "garbage").status_code == 401
    assert http.get(url).status_code == 401

    # A timestamp six minutes off either way.
    for skew in (-360, 360):
        url = token_url(realm, scope, ts=str(int(time.time()) + skew))
        r = ask(url, key.authorization(url))
        assert r.status_code == 401
        assert "clock" in r.json()["errors"][0]["message"]

    reasons = [t.reason for t in front.token_requests]
    assert reasons[0] is None
    assert reasons[1] == "nonce already used"
    assert reasons.count("invalid signature") == 2


def test_unregistered_key_pulls_but_cannot_push(ollama_front, client_factory):
    front, _ = ollama_front
    alice = client_factory()
    front.allow_push(alice.key.pub, "alice")
    repo = unique_repo()
    layer = b"public weights" * 10
    alice.push_model(repo, "v1", layer)

    mallory = client_factory()
    r = mallory.request("GET", f"/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_V2})
    assert r.status_code == 200

    r = mallory.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 401
    assert r.json() == {"errors": [{"code": "UNAUTHORIZED", "message": PUSH_DENIED}]}
    assert front.token_requests[-1].granted == f"repository:{repo}:pull"

    r = mallory.request("PUT", f"/v2/{repo}/manifests/v1", content=b"{}")
    assert r.status_code == 401
    assert r.json()["errors"][0]["message"] == PUSH_DENIED

    r = mallory.request("DELETE", f"/v2/{repo}/manifests/v1")
    assert r.status_code == 401

    # Alice can push to alice/ but not to bob/.
    r = alice.request("POST", f"/v2/{unique_repo('bob')}/blobs/uploads/")
    assert r.status_code == 401
    assert r.json()["errors"][0]["message"] == PUSH_DENIED


def test_expired_token_is_challenged_again(ollama_front, client_factory):
    front, _ = ollama_front
    c = client_factory()
    path = f"{front.url}/v2/library/none/manifests/latest"
    r = c.request("GET", path)
    assert r.status_code == 404  # authorized, and the registry does not know it
    bearer = r.request.headers["Authorization"]
    assert c.http.get(path, headers={"Authorization": bearer}).status_code == 404
    front.expire_tokens()
    r = c.http.get(path, headers={"Authorization": bearer})
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers

    front.token_ttl_seconds = -1  # tokens issued from now on are born expired
    r = c.request("GET", path)
    assert r.status_code == 401


def test_expire_all_invalidates_cdn_urls_and_a_new_redirect_works(ollama_front, client_factory):
    front, cdn = ollama_front
    alice = client_factory()
    front.allow_push(alice.key.pub, "alice")
    repo = unique_repo()
    layer = b"0123456789" * 100
    alice.push_model(repo, "latest", layer)
    digest = sha256(layer)

    old = alice.request("GET", f"/v2/{repo}/blobs/{digest}").headers["Location"]
    assert alice.http.get(old, headers={"Range": "bytes=0-9"}).content == b"0123456789"

    cdn.expire_all()
    r = alice.http.get(old, headers={"Range": "bytes=0-9"})
    assert r.status_code == 403
    assert r.headers["Content-Type"] == "application/xml"
    assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in r.text

    new = alice.request("GET", f"/v2/{repo}/blobs/{digest}").headers["Location"]
    assert new != old
    r = alice.http.get(new, headers={"Range": "bytes=990-999"})
    assert r.status_code == 206
    assert r.content == b"0123456789"
    assert front.redirects[digest] == 2

    # A tampered URL and an expired one are refused too.
    tampered = re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 64, new)
    assert alice.http.get(tampered).status_code == 403
    front.cdn_ttl_seconds = -10
    stale = alice.request("GET", f"/v2/{repo}/blobs/{digest}").headers["Location"]
    r = alice.http.get(stale)
    assert r.status_code == 403
    assert "Request has expired" in r.text

    # An unknown blob is the registry's 404, not a redirect.
    r = alice.request("GET", f"/v2/{repo}/blobs/{sha256(b'nothing')}")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_old_user_agent_gets_412_with_a_message(ollama_front, client_factory):
    front, _ = ollama_front
    front.reject_user_agent = r"^ollama/0\.[0-4]\."
    http = client_factory().http
    old = {"User-Agent": "ollama/0.1.32 (amd64 linux) Go/go1.22.0"}
    for path in ("/v2/library/m/manifests/latest", "/token?nonce=1&scope=x&service=y&ts=0"):
        r = http.get(f"{front.url}{path}", headers=old)
        assert r.status_code == 412
        assert r.json() == {"errors": [{"code": "PRECONDITION_FAILED", "message": TOO_OLD}]}
    front.error_form = "single"
    r = http.get(f"{front.url}/v2/library/m/manifests/latest", headers=old)
    assert r.status_code == 412
    assert r.json() == {"code": "PRECONDITION_FAILED", "message": TOO_OLD}
    # A current client is not refused.
    assert http.get(f"{front.url}/v2/library/m/manifests/latest").status_code == 401


def test_streamed_upload_parallel_ranges_and_clean_stop(registry, client_factory):
    before = set(threading.enumerate())
    cdn = CDN(registry.host).start()
    front = OllamaFront(registry.host, cdn=cdn).start()
    try:
        c = Client(Key(), front)
        front.allow_push(c.key.pub, "alice")
        repo = unique_repo()
        data = secrets.token_bytes(9 << 20)
        digest = sha256(data)

        # A chunked PATCH (no Content-Length) streamed through the front.
        r = c.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202
        pieces = (data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
        r = c.request("PATCH", r.headers["Location"], content=pieces)
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{len(data) - 1}"
        r = c.request("PUT", f"{r.headers['Location']}&digest={digest}")
        assert r.status_code == 201, r.text
        assert r.headers["Location"].startswith(front.url)

        # A monolithic upload: POST, then PUT with the whole body.
        small = b"monolithic"
        r = c.request("POST", f"/v2/{repo}/blobs/uploads/")
        r = c.request("PUT", f"{r.headers['Location']}&digest={sha256(small)}", content=small)
        assert r.status_code == 201, r.text

        url = c.request("GET", f"/v2/{repo}/blobs/{digest}").headers["Location"]
        c.close()
        step = len(data) // 16

        def fetch(i: int) -> bytes:
            with httpx.Client(timeout=30) as h:
                end = len(data) - 1 if i == 15 else (i + 1) * step - 1
                r = h.get(url, headers={"Range": f"bytes={i * step}-{end}"})
                assert r.status_code == 206
                return r.content

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert b"".join(pool.map(fetch, range(16))) == data
        assert len(cdn.requests) == 16
        assert front.redirects[digest] == 1

        # A client still connected (keep-alive) does not keep stop() waiting.
        idle = httpx.Client(timeout=30)
        idle.get(f"{front.url}/v2/")
        idle.get(url, headers={"Range": "bytes=0-0"})
    finally:
        front.stop()
        cdn.stop()
    idle.close()
    assert set(threading.enumerate()) <= before
