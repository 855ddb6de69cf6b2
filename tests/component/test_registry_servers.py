"""The test servers themselves (auth, tokens, TLS, mirrors) behave as a real registry does.

Plain httpx only: these tests check the fixtures, not modelfs.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import httpx
import pytest
from support.registry import PullThrough, RegistryProcess, image_manifest
from support.tokens import Access, TokenIssuer, parse_scope

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client: httpx.Client, base: str, repo: str, data: bytes) -> httpx.Response:
    """The monolithic upload: POST for a session, PUT the bytes with ?digest=."""
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    if start.status_code != 202:
        return start
    location = start.headers["Location"]
    # httpx's params= would replace the Location's own query (its _state), so append by hand.
    sep = "&" if "?" in location else "?"
    return client.put(
        f"{location}{sep}digest={digest_of(data)}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )


def push_image(client: httpx.Client, base: str, repo: str, tag: str, layer: bytes) -> bytes:
    """A config blob, one layer and a schema 2 manifest; returns the manifest's bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (config, layer):
        assert push_blob(client, base, repo, blob).status_code == 201
    manifest = image_manifest(config, layer)
    put = client.put(
        f"{base}/v2/{repo}/manifests/{tag}",
        content=manifest,
        headers={"Content-Type": MANIFEST_V2},
    )
    assert put.status_code == 201, put.text
    return manifest


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params = {}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip().strip('"')
    return scheme, params


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- htpasswd


def test_basic_registry_challenges_then_accepts_the_right_password(basic_registry):
    with httpx.Client() as client:
        anonymous = client.get(f"{basic_registry.url}/v2/")
        wrong = client.get(f"{basic_registry.url}/v2/", auth=("alice", "wrong"))
        right = client.get(f"{basic_registry.url}/v2/", auth=("alice", "secret"))
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="modelfs-test"'
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert basic_registry.htpasswd.users == {"alice": "secret"}


def test_basic_registry_accepts_a_push_with_credentials(basic_registry):
    data = secrets.token_bytes(100)
    repo = "library/basic"
    with httpx.Client(auth=("alice", "secret")) as client:
        assert push_blob(client, basic_registry.url, repo, data).status_code == 201
        got = client.get(f"{basic_registry.url}/v2/{repo}/blobs/{digest_of(data)}")
    assert got.status_code == 200
    assert got.content == data


# -- token auth


def test_token_registry_challenges_with_bearer_realm_service_and_scope(token_registry):
    reg, issuer = token_registry.registry, token_registry.issuer
    with httpx.Client() as client:
        root = client.get(f"{reg.url}/v2/")
        manifest = client.get(f"{reg.url}/v2/library/model/manifests/latest")
    assert root.status_code == 401
    scheme, params = parse_challenge(root.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params == {"realm": issuer.realm, "service": issuer.service}
    assert manifest.status_code == 401
    scheme, params = parse_challenge(manifest.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params == {
        "realm": issuer.realm,
        "service": issuer.service,
        "scope": "repository:library/model:pull",
    }


def test_alice_pushes_and_reads_back_a_blob_bob_only_reads(token_registry):
    reg, issuer = token_registry.registry, token_registry.issuer
    repo = "library/model"
    data = secrets.token_bytes(1000)
    scope = f"repository:{repo}:pull,push"
    alice = issuer.fetch(scope, user="alice", password="secret")
    bob = issuer.fetch(scope, user="bob", password="hunter2")
    with httpx.Client(headers=bearer(alice)) as client:
        assert client.get(f"{reg.url}/v2/").status_code == 200
        assert push_blob(client, reg.url, repo, data).status_code == 201
        got = client.get(f"{reg.url}/v2/{repo}/blobs/{digest_of(data)}")
    assert got.status_code == 200
    assert got.content == data
    with httpx.Client(headers=bearer(bob)) as client:
        refused = push_blob(client, reg.url, repo, b"bob was here")
        read = client.get(f"{reg.url}/v2/{repo}/blobs/{digest_of(data)}")
    assert refused.status_code in (401, 403)
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert read.content == data


def test_issuer_grants_the_intersection_of_request_and_policy(token_registry):
    issuer = token_registry.issuer
    assert issuer.grant("bob", ["repository:library/a:pull,push", "repository:other/b:pull"]) == [
        Access("repository", "library/a", ("pull",))
    ]
    assert issuer.grant("alice", ["repository:x/y:pull,push,delete"]) == [
        Access("repository", "x/y", ("pull", "push", "delete"))
    ]
    assert issuer.grant(None, ["repository:library/a:pull"]) == []
    assert parse_scope("repository:127.0.0.1:5000/a/b:pull") == Access(
        "repository", "127.0.0.1:5000/a/b", ("pull",)
    )


def test_issuer_answers_with_the_spec_fields_and_records_requests(token_registry):
    issuer = token_registry.issuer
    params = [
        ("service", issuer.service),
        ("scope", "repository:library/a:pull"),
        ("scope", "repository:library/b:pull,push"),
    ]
    with httpx.Client() as client:
        ok = client.get(issuer.realm, params=params, auth=("bob", "hunter2"))
        wrong = client.get(issuer.realm, params=params, auth=("bob", "nope"))
        anonymous = client.get(issuer.realm, params=params)
        issuer.anonymous_policy = {"library/*": ["pull"]}
        allowed = client.get(issuer.realm, params=params)
    assert ok.status_code == 200
    body = ok.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    assert wrong.status_code == 401
    assert anonymous.status_code == 401
    assert allowed.status_code == 200
    records = issuer.requests
    assert [(r.status, r.authorization, r.user) for r in records] == [
        (200, True, "bob"),
        (401, True, "bob"),
        (401, False, None),
        (200, False, None),
    ]
    assert records[0].path == "/token"
    assert records[0].service == issuer.service
    assert records[0].scopes == ["repository:library/a:pull", "repository:library/b:pull,push"]


def test_issuer_can_refuse_everything(token_registry):
    issuer = token_registry.issuer
    issuer.refuse_status = 503
    with httpx.Client() as client:
        refused = client.get(issuer.realm, auth=("alice", "secret"))
    assert refused.status_code == 503
    issuer.refuse_status = None
    assert issuer.fetch("repository:a/b:pull", user="alice", password="secret")


def test_distribution_allows_a_minute_of_clock_skew_past_exp(token_registry):
    """A token 29 s past its exp still works: distribution 2.8 adds 60 s of leeway."""
    reg, issuer = token_registry.registry, token_registry.issuer
    issuer.expires_in = 1
    issuer.claims_offset = -30
    token = issuer.fetch("repository:library/a:pull", user="alice", password="secret")
    with httpx.Client(headers=bearer(token)) as client:
        assert client.get(f"{reg.url}/v2/").status_code == 200


def test_expired_token_is_refused(token_registry):
    reg, issuer = token_registry.registry, token_registry.issuer
    # exp 90 s ago as the registry sees it; the JSON still says expires_in=30 from now.
    issuer.expires_in = 30
    issuer.claims_offset = -120
    token = issuer.fetch("repository:library/a:pull", user="alice", password="secret")
    with httpx.Client(headers=bearer(token)) as client:
        refused = client.get(f"{reg.url}/v2/library/a/tags/list")
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_tokens_from_an_untrusted_signer_or_for_another_service_are_refused(
    token_registry, token_issuer_factory
):
    reg, issuer = token_registry.registry, token_registry.issuer
    access = [Access("repository", "library/a", ("pull",))]
    stranger: TokenIssuer = token_issuer_factory()  # same names, another key
    good = issuer.mint("alice", access)
    untrusted = stranger.mint("alice", access)
    other_service = issuer.mint("alice", access, service="elsewhere")
    with httpx.Client() as client:
        url = f"{reg.url}/v2/library/a/tags/list"
        assert client.get(url, headers=bearer(good)).status_code == 404  # no such repository
        assert client.get(url, headers=bearer(untrusted)).status_code == 401
        assert client.get(url, headers=bearer(other_service)).status_code == 401


# -- TLS


def test_tls_registry_is_trusted_through_its_ca_only(tls_registry, wrong_ca):
    reg, tls = tls_registry.registry, tls_registry.tls
    assert reg.url.startswith("https://")
    with httpx.Client(verify=tls.ssl_context()) as client:
        assert client.get(f"{reg.url}/v2/").status_code == 200
        assert client.get(f"https://localhost:{reg.port}/v2/").status_code == 200
    for verify in (True, wrong_ca.ssl_context()):
        with httpx.Client(verify=verify) as client, pytest.raises(httpx.ConnectError) as failed:
            client.get(f"{reg.url}/v2/")
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)


def test_plain_http_to_the_tls_registry_fails(tls_registry):
    with httpx.Client() as client:
        answer = client.get(f"http://{tls_registry.registry.host}/v2/")
    assert answer.status_code == 400  # Go's "client sent an HTTP request to an HTTPS server"


def test_tls_and_token_auth_together(registry_factory, token_issuer_factory, tls_material):
    issuer = token_issuer_factory(tls=tls_material)
    reg = registry_factory(tls=tls_material, token=issuer.registry_auth())
    assert issuer.realm.startswith("https://")
    token = issuer.fetch("repository:library/a:pull", user="alice", password="secret")
    with httpx.Client(verify=tls_material.ssl_context()) as client:
        assert client.get(f"{reg.url}/v2/").status_code == 401
        assert client.get(f"{reg.url}/v2/", headers=bearer(token)).status_code == 200


# -- mirrors


def test_mirror_serves_what_the_origin_has(registry, mirror_registry):
    repo = f"mirrortest/m{secrets.token_hex(4)}"
    layer = secrets.token_bytes(4096)
    with httpx.Client() as client:
        manifest = push_image(client, registry.url, repo, "v1", layer)
        got = client.get(
            f"{mirror_registry.url}/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_V2}
        )
        blob = client.get(f"{mirror_registry.url}/v2/{repo}/blobs/{digest_of(layer)}")
        push = client.post(f"{mirror_registry.url}/v2/{repo}/blobs/uploads/")
    assert got.status_code == 200
    assert got.content == manifest
    assert got.headers["Docker-Content-Digest"] == digest_of(manifest)
    assert blob.status_code == 200
    assert blob.content == layer
    assert push.status_code == 405  # a pull-through cache takes no pushes


def test_mirror_of_a_registry_with_token_auth(registry_factory, token_registry):
    origin, issuer = token_registry.registry, token_registry.issuer
    repo = "library/private"
    layer = secrets.token_bytes(512)
    token = issuer.fetch(f"repository:{repo}:pull,push", user="alice", password="secret")
    with httpx.Client(headers=bearer(token)) as client:
        push_image(client, origin.url, repo, "latest", layer)
    mirror: RegistryProcess = registry_factory(
        pull_through=PullThrough(origin.url, username="alice", password="secret")
    )
    issuer.clear_requests()
    with httpx.Client() as client:
        got = client.get(
            f"{mirror.url}/v2/{repo}/manifests/latest", headers={"Accept": MANIFEST_V2}
        )
        blob = client.get(f"{mirror.url}/v2/{repo}/blobs/{digest_of(layer)}")
    assert got.status_code == 200
    assert blob.content == layer
    assert {r.user for r in issuer.requests} == {"alice"}


def test_mirror_of_a_tls_registry_trusts_the_given_ca(registry_factory, tls_registry):
    origin, tls = tls_registry.registry, tls_registry.tls
    repo = "library/tls"
    layer = secrets.token_bytes(256)
    with httpx.Client(verify=tls.ssl_context()) as client:
        push_image(client, origin.url, repo, "v1", layer)
    mirror = registry_factory(pull_through=PullThrough(origin.url, ca_cert=tls.ca_cert))
    with httpx.Client() as client:
        got = client.get(f"{mirror.url}/v2/{repo}/manifests/v1", headers={"Accept": MANIFEST_V2})
        blob = client.get(f"{mirror.url}/v2/{repo}/blobs/{digest_of(layer)}")
    assert got.status_code == 200
    assert blob.content == layer
