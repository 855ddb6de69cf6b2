"""Where a registry's credentials go when it redirects a control request (httpx: manifests,
tag lists, pushes, deletes, token requests) or hands out a URL (a tag list's next page, an
upload session's ``Location``).

Every server is a real one on loopback that records the headers it receives
(support/recorder.py); 127.0.0.2 stands for another host. The rule asserted throughout: the
password (or a token, or the Ollama key's signature) reaches only the scheme, host and port it
was given for, and the token realm the registry itself names; a redirect to http from https,
to another port or to another host carries none of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from component.test_credential_scope import REPO, docker_config, mirror_config, tls_client
from support.recorder import Recorded, Recorder, Reply, basic
from support.tls import TLSMaterial

from modelfs.errors import ModelfsError
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name, parse_name
from modelfs.registry.client import Registry, RegistryConfig

PASSWORD = basic("alice", "secret")
UNAUTHORIZED = Reply(401, {"WWW-Authenticate": 'Basic realm="modelfs-test"'})
MANIFEST = b'{"schemaVersion": 2}'
MANIFEST_DIGEST = Digest.of_bytes(MANIFEST)


def json_reply(doc: object, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()
    )


# -- a tag list's next page --------------------------------------------------------------------


async def test_a_mounted_tag_listing_sends_no_credentials_to_a_next_page_over_plain_http(
    tmp_path: Path, tls_material: TLSMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    """The listing a mount shows for a repository (``repository_tags``) of an https registry
    with Basic auth, whose first page links the next over plain http on its own host and port:
    that page gets neither the password nor anything else of alice's, and the listing keeps
    the first page's tags, the log saying why."""

    def answer(req: Recorded) -> Reply:
        if req.scheme == "http":
            return json_reply({"name": REPO, "tags": ["b"]})
        if req.headers.get("Authorization") != PASSWORD:
            return UNAUTHORIZED
        page = f'<http://{registry.host}/v2/{REPO}/tags/list?last=a>; rel="next"'
        return json_reply({"name": REPO, "tags": ["a"]}, {"Link": page})

    with Recorder(answer, tls=tls_material) as registry:
        where = registry.host
        client = tls_client(tmp_path, registry, tls_material)
        try:
            listed = await client.repository_tags(parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
    assert PASSWORD in registry.authorizations("https")
    assert registry.authorizations("http") == [], (
        f"alice's password for https://{where} went in clear to http://{where} "
        "with the next page of a tag list"
    )
    assert listed == ["a"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "next page over http, not https" in warning, warning


# -- redirects of control requests -------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of control request: what the client calls, and what a server that finally
    serves it answers."""

    call: Callable[[Registry, Name], Awaitable[object]]
    served: Callable[[Recorded], Reply]


def manifest_served(req: Recorded) -> Reply:
    return Reply(
        200,
        {"Content-Type": "application/json", "Docker-Content-Digest": str(MANIFEST_DIGEST)},
        MANIFEST,
    )


KINDS = {
    "manifest": Kind(lambda c, n: c.get_manifest(n), manifest_served),
    "manifest-head": Kind(lambda c, n: c.manifest_digest(n), manifest_served),
    "tag-list": Kind(lambda c, n: c.tags(n), lambda _r: json_reply({"name": REPO, "tags": ["a"]})),
    "manifest-put": Kind(lambda c, n: c.put_manifest(n, MANIFEST), lambda _r: Reply(201)),
    "blob-head": Kind(lambda c, n: c.has_blob(n, MANIFEST_DIGEST), lambda _r: Reply(200)),
    "cross-repo-mount": Kind(
        lambda c, n: c.offer_mount(n, MANIFEST_DIGEST, parse_name(f"{n.host}/other/repo:x")),
        lambda _r: Reply(201),
    ),
    "delete": Kind(lambda c, n: c.delete_manifest(n, MANIFEST_DIGEST), lambda _r: Reply(202)),
    "delete-tag": Kind(lambda c, n: c.delete_tag(n), lambda _r: Reply(202)),
    "login": Kind(lambda c, n: c.check_login(n.host, "alice", "secret"), lambda _r: Reply(200)),
}


def redirecting(target: Callable[[Recorded], str], kind: Kind) -> Callable[[Recorded], Reply]:
    """An https registry with Basic auth that, once alice's password came, redirects every
    request to ``target(req)``; what reaches its port over plain http is served."""

    def answer(req: Recorded) -> Reply:
        if req.scheme == "http":
            return kind.served(req)
        if req.headers.get("Authorization") != PASSWORD:
            return UNAUTHORIZED
        return Reply(307, {"Location": target(req)})

    return answer


@pytest.mark.parametrize("kind", KINDS, ids=list(KINDS))
@pytest.mark.parametrize("to", ["http-same-port", "another-port", "another-host"])
async def test_a_redirected_control_request_carries_no_credentials_off_its_origin(
    tmp_path: Path, tls_material: TLSMaterial, kind: str, to: str
) -> None:
    """An https registry with Basic auth redirects a manifest GET/HEAD, a tag list, a manifest
    PUT, a blob HEAD, a cross-repository mount, a delete of a manifest or a tag (``modelfs rm
    --remote``) or a login's check to plain http on its own port, to another port of its host,
    or to another host: the request is followed there (its answer served), without alice's
    password."""
    served = KINDS[kind]
    with (
        Recorder(served.served, tls=tls_material) as other_port,
        Recorder(served.served, address="127.0.0.2") as other_host,
    ):
        targets = {
            "http-same-port": lambda req: f"http://{registry.host}{req.path}",
            "another-port": lambda req: f"{other_port.url}{req.path}",
            "another-host": lambda req: f"{other_host.url}{req.path}",
        }
        with Recorder(redirecting(targets[to], served), tls=tls_material) as registry:
            client = tls_client(tmp_path, registry, tls_material)
            try:
                await served.call(client, parse_name(f"{registry.host}/{REPO}:latest"))
            finally:
                await client.aclose()
        reached = {
            "http-same-port": registry.authorizations("http"),
            "another-port": other_port.authorizations(),
            "another-host": other_host.authorizations(),
        }[to]
    assert PASSWORD in registry.authorizations("https")
    assert reached, "the redirect was not followed"
    assert reached == [None] * len(reached), f"alice's password went with a {kind} to {to}"


@pytest.mark.parametrize("kind", KINDS, ids=list(KINDS))
@pytest.mark.parametrize(
    ("location", "says"),
    [("loop", "redirected too many times"), ("ftp", "unsupported URL scheme")],
    ids=["redirect-loop", "ftp-location"],
)
async def test_a_control_request_redirected_in_a_loop_or_off_http_fails_in_one_line(
    tmp_path: Path, tls_material: TLSMaterial, kind: str, location: str, says: str
) -> None:
    """A registry that redirects a request to itself for ever, or to a non-http URL: the
    request fails with one line saying so (no retries, no traceback), and nothing is sent
    anywhere else."""
    served = KINDS[kind]

    def target(req: Recorded) -> str:
        if location == "loop":
            return f"https://{registry.host}{req.path}"
        return f"ftp://{registry.host}{req.path}"

    with Recorder(redirecting(target, served), tls=tls_material) as registry:
        client = tls_client(tmp_path, registry, tls_material)
        try:
            with pytest.raises(ModelfsError) as failed:
                await served.call(client, parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
    message = str(failed.value)
    assert says in message and "\n" not in message, message
    assert registry.authorizations("http") == []
    # One attempt (21 requests at most for a loop: httpx's limit is 20 redirects), not retries.
    assert len(registry.requests) <= 2 + 21, len(registry.requests)


@pytest.mark.parametrize("lends", [False, True], ids=["its-own-password", "the-origins"])
async def test_a_mirror_that_redirects_a_manifest_sends_no_password_off_its_origin(
    tmp_path: Path, tls_material: TLSMaterial, lends: bool
) -> None:
    """An https mirror with Basic auth (its own password, or the origin's lent to it with
    ``credentials = "origin"``) redirects a manifest to another host: the manifest is read
    there, without the password."""
    mirror_password = PASSWORD if lends else basic("mia", "m-secret")
    with (
        Recorder(manifest_served, address="127.0.0.2") as other_host,
        Recorder(lambda _r: Reply(404), address="127.0.0.3") as origin,
    ):

        def answer(req: Recorded) -> Reply:
            if req.headers.get("Authorization") != mirror_password:
                return UNAUTHORIZED
            return Reply(307, {"Location": f"{other_host.url}{req.path}"})

        with Recorder(answer, tls=tls_material) as mirror:
            config = mirror_config(
                tmp_path,
                f'[[mirror]]\nhost = "{origin.host}"\nendpoints = ["{mirror.url}"]\n'
                + ('credentials = "origin"\n' if lends else ""),
            )
            logins = {origin.host: ("alice", "secret"), mirror.host: ("mia", "m-secret")}
            client = Registry(
                replace(
                    config,
                    ca_file=str(tls_material.ca_cert),
                    docker_config=docker_config(tmp_path, logins),
                )
            )
            try:
                got = await client.get_manifest(parse_name(f"{origin.host}/{REPO}:latest"))
            finally:
                await client.aclose()
        assert got == MANIFEST
        assert mirror_password in mirror.authorizations(), "the mirror did not take its password"
        assert origin.requests == [], "the mirror did not serve the read"
        assert other_host.authorizations() == [None], "the mirror's password went off its origin"


# -- token requests ----------------------------------------------------------------------------


TOKEN = "Bearer realm-token"


def token_served(_req: Recorded) -> Reply:
    return json_reply({"token": "realm-token"})


def token_registry(
    tls: TLSMaterial, realm: Callable[[], str], at_realm: Callable[[Recorded], Reply]
) -> Recorder:
    """An https registry whose 401 names the token realm ``realm()`` and which serves the
    manifest to ``TOKEN``; requests for ``/token`` on its port (either scheme) are answered by
    ``at_realm``."""

    def answer(req: Recorded) -> Reply:
        if req.path.startswith("/token"):
            return at_realm(req)
        if req.headers.get("Authorization") != TOKEN:
            return Reply(401, {"WWW-Authenticate": f'Bearer realm="{realm()}",service="svc"'})
        return manifest_served(req)

    return Recorder(answer, tls=tls)


@pytest.mark.parametrize("to", ["http-same-port", "another-port", "another-host"])
@pytest.mark.parametrize("credential", ["password", "ollama-key"])
async def test_a_redirected_token_request_carries_no_credential_off_the_realm(
    tmp_path: Path, tls_material: TLSMaterial, to: str, credential: str
) -> None:
    """The token realm of an https registry (on the registry itself) takes alice's password
    (or, without one, a signature with the Ollama key), then redirects the token request to
    plain http on its port, to another port or to another host: the token is fetched there
    without the credential, and the manifest read with it."""

    def at_realm(req: Recorded) -> Reply:
        if req.scheme == "http":
            return token_served(req)
        if req.headers.get("Authorization") is None:
            return Reply(401)
        target = {
            "http-same-port": f"http://{registry.host}",
            "another-port": other_port.url,
            "another-host": other_host.url,
        }[to]
        return Reply(307, {"Location": f"{target}{req.path}"})

    with (
        Recorder(token_served, tls=tls_material) as other_port,
        Recorder(token_served, address="127.0.0.2") as other_host,
        token_registry(tls_material, lambda: f"{registry.url}/token", at_realm) as registry,
    ):
        client = (
            tls_client(tmp_path, registry, tls_material)
            if credential == "password"
            else Registry(
                RegistryConfig(
                    tls_hosts=(registry.host,),
                    ca_file=str(tls_material.ca_cert),
                    docker_config=docker_config(tmp_path, {}),
                    key_path=tmp_path / "id_ed25519",
                )
            )
        )
        try:
            got = await client.get_manifest(parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
        reached = {
            "http-same-port": registry.authorizations("http"),
            "another-port": other_port.authorizations(),
            "another-host": other_host.authorizations(),
        }[to]
        at_the_realm = [
            r.headers.get("Authorization")
            for r in registry.requests
            if "/token" in r.path and r.scheme == "https"
        ]
    assert got == MANIFEST
    [sent] = at_the_realm
    if credential == "password":
        assert sent == PASSWORD
    else:
        assert sent is not None and not sent.startswith(("Basic ", "Bearer ")), sent
    assert reached == [None], f"the {credential} went with the token request to {to}"


@pytest.mark.parametrize(
    ("location", "says"),
    [("loop", "redirected too many times"), ("ftp", "unsupported URL scheme")],
    ids=["redirect-loop", "ftp-location"],
)
async def test_a_token_request_redirected_in_a_loop_or_off_http_fails_in_one_line(
    tmp_path: Path, tls_material: TLSMaterial, location: str, says: str
) -> None:
    """A token realm that redirects to itself for ever, or to a non-http URL: the read fails
    with one line saying so."""

    def at_realm(req: Recorded) -> Reply:
        scheme = "https" if location == "loop" else "ftp"
        return Reply(307, {"Location": f"{scheme}://{registry.host}{req.path}"})

    with token_registry(tls_material, lambda: f"{registry.url}/token", at_realm) as registry:
        client = tls_client(tmp_path, registry, tls_material)
        try:
            with pytest.raises(ModelfsError) as failed:
                await client.get_manifest(parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
    message = str(failed.value)
    assert says in message and "\n" not in message, message
    assert registry.authorizations("http") == []


@pytest.mark.parametrize(
    ("realm", "gets_the_password"),
    [
        ("http-same-port", False),
        ("http-another-host", False),
        ("https-another-host", True),
    ],
)
async def test_the_password_goes_to_the_realm_the_registry_names_only_over_https(
    tmp_path: Path, tls_material: TLSMaterial, realm: str, gets_the_password: bool
) -> None:
    """An https registry names its token realm: over plain http (on its own port, or on
    another host) the realm gets an anonymous token request, nothing of alice's; over https
    on another host (a token service beside the registry, as auth.docker.io is Docker Hub's)
    it gets the password, as docker's and containerd's clients send it."""
    with (
        Recorder(token_served, address="127.0.0.2") as http_host,
        # "localhost" is another host name than 127.0.0.1, with a certificate of its own.
        Recorder(token_served, tls=tls_material) as https_host,
    ):
        where = {
            "http-same-port": lambda: f"http://{registry.host}/token",
            "http-another-host": lambda: f"{http_host.url}/token",
            "https-another-host": lambda: f"https://localhost:{https_host.port}/token",
        }[realm]
        with token_registry(tls_material, where, token_served) as registry:
            client = tls_client(tmp_path, registry, tls_material)
            try:
                got = await client.get_manifest(parse_name(f"{registry.host}/{REPO}:latest"))
            finally:
                await client.aclose()
        asked = {
            "http-same-port": registry.authorizations("http"),
            "http-another-host": http_host.authorizations(),
            "https-another-host": https_host.authorizations(),
        }[realm]
    assert got == MANIFEST
    assert asked == [PASSWORD if gets_the_password else None], asked


# -- upload sessions the registry hands out ------------------------------------------------------


def upload_served(req: Recorded) -> Reply:
    """An upload session: a PATCH takes the bytes (202, the session's next URL), a PUT
    completes it (201), a DELETE cancels it (204)."""
    if req.method == "PATCH":
        return Reply(202, {"Location": req.path})
    return Reply({"PUT": 201, "DELETE": 204}.get(req.method, 405))


def uploading_registry(tls: TLSMaterial, location: Callable[[Recorded], str]) -> Recorder:
    """An https registry with Basic auth whose POST (an upload, or a cross-repository mount it
    cannot do) opens a session at ``location(req)``; sessions on its own port are its own."""

    def answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != PASSWORD:
            return UNAUTHORIZED
        if req.method == "POST":
            return Reply(202, {"Location": location(req)})
        return upload_served(req)

    return Recorder(answer, tls=tls)


async def upload(client: Registry, host: str, tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.write_bytes(MANIFEST)
    name = parse_name(f"{host}/{REPO}:latest")
    await client.upload_blob(name, MANIFEST_DIGEST, layer, len(MANIFEST))


@pytest.mark.parametrize("where", ["relative", "absolute"])
async def test_an_upload_session_on_the_registrys_own_origin_gets_its_password(
    tmp_path: Path, tls_material: TLSMaterial, where: str
) -> None:
    """The session a registry opens at a relative ``Location``, or at an absolute one on its
    own scheme, host and port, is the registry's: the PATCH and the PUT carry the password."""
    path = f"/v2/{REPO}/blobs/uploads/1"

    def location(_req: Recorded) -> str:
        return path if where == "relative" else f"https://{registry.host}{path}"

    with uploading_registry(tls_material, location) as registry:
        client = tls_client(tmp_path, registry, tls_material)
        try:
            await upload(client, registry.host, tmp_path)
        finally:
            await client.aclose()
    sent = {r.method: r.headers.get("Authorization") for r in registry.requests if r.path != "/"}
    assert sent == {"POST": PASSWORD, "PATCH": PASSWORD, "PUT": PASSWORD}, sent


@pytest.mark.parametrize("to", ["another-port", "another-host"])
@pytest.mark.parametrize("handed_out_by", ["POST", "PATCH"])
async def test_an_upload_session_elsewhere_gets_none_of_the_registrys_credentials(
    tmp_path: Path, tls_material: TLSMaterial, to: str, handed_out_by: str
) -> None:
    """A registry whose upload session (the POST's ``Location``, or the PATCH's for the
    final PUT) is on another port of its host or on another host (a storage front end): the
    bytes go there, the password does not."""
    with Recorder(upload_served, tls=tls_material) as elsewhere:
        # Another host: "localhost", another name than 127.0.0.1, over https as the registry.
        host = elsewhere.host if to == "another-port" else f"localhost:{elsewhere.port}"
        session = f"https://{host}/v2/{REPO}/blobs/uploads/1"

        def location(_req: Recorded) -> str:
            return session if handed_out_by == "POST" else f"/v2/{REPO}/blobs/uploads/1"

        def answer(req: Recorded) -> Reply:
            if req.headers.get("Authorization") != PASSWORD:
                return UNAUTHORIZED
            if req.method == "POST":
                return Reply(202, {"Location": location(req)})
            if req.method == "PATCH":
                return Reply(202, {"Location": session})
            return upload_served(req)

        with Recorder(answer, tls=tls_material) as registry:
            client = tls_client(tmp_path, registry, tls_material)
            try:
                await upload(client, registry.host, tmp_path)
            finally:
                await client.aclose()
        got = [(r.method, r.headers.get("Authorization")) for r in elsewhere.requests]
    expected = [("PATCH", None), ("PUT", None)] if handed_out_by == "POST" else [("PUT", None)]
    assert got == expected, f"{got}: alice's password went to an upload session on {to}"


async def test_a_mount_session_elsewhere_is_cancelled_without_the_registrys_credentials(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """A cross-repository mount the registry cannot do opens an upload session on another
    host instead (202): modelfs cancels it there (DELETE) without the password."""
    with Recorder(upload_served, tls=tls_material) as other_host:

        def location(_req: Recorded) -> str:
            return f"https://localhost:{other_host.port}/v2/{REPO}/blobs/uploads/1"

        with uploading_registry(tls_material, location) as registry:
            client = tls_client(tmp_path, registry, tls_material)
            name = parse_name(f"{registry.host}/{REPO}:latest")
            try:
                mounted = await client.mount_blob(
                    name, MANIFEST_DIGEST, parse_name(f"{registry.host}/other/repo:x")
                )
            finally:
                await client.aclose()
        got = [(r.method, r.headers.get("Authorization")) for r in other_host.requests]
    assert mounted is False
    assert got == [("DELETE", None)], got


async def test_an_upload_session_of_an_http_registry_upgraded_to_https_keeps_its_password(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """A plain-http registry whose upload session is on https on its own host and port (it
    upgrades the upload): the password, given for http and sent there already, goes with it;
    TLS protects it better, and it reaches the same host and port."""
    path = f"/v2/{REPO}/blobs/uploads/1"
    with uploading_registry(tls_material, lambda _r: f"https://{registry.host}{path}") as registry:
        client = Registry(
            RegistryConfig(
                ca_file=str(tls_material.ca_cert),
                docker_config=docker_config(tmp_path, {registry.host: ("alice", "secret")}),
            )
        )
        try:
            await upload(client, registry.host, tmp_path)
        finally:
            await client.aclose()
    sent = [(r.scheme, r.method, r.headers.get("Authorization")) for r in registry.requests]
    assert ("http", "POST", PASSWORD) in sent, sent
    assert [s for s in sent if s[1] != "POST"] == [
        ("https", "PATCH", PASSWORD),
        ("https", "PUT", PASSWORD),
    ], sent


async def test_an_upload_session_at_a_non_http_url_fails_in_one_line(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """A registry that opens an upload session at an ``ftp:`` URL: the upload fails with one
    line saying so; nothing is sent anywhere."""
    location = f"ftp://127.0.0.1/v2/{REPO}/blobs/uploads/1"
    with uploading_registry(tls_material, lambda _r: location) as registry:
        client = tls_client(tmp_path, registry, tls_material)
        try:
            with pytest.raises(ModelfsError) as failed:
                await upload(client, registry.host, tmp_path)
        finally:
            await client.aclose()
    message = str(failed.value)
    assert "unsupported URL scheme" in message and "\n" not in message, message
    assert {r.method for r in registry.requests} == {"POST"}


async def test_a_redirect_that_upgrades_to_https_on_the_same_port_carries_no_credentials(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """A plain-http registry with Basic auth that redirects a manifest to https on its own
    (non-default) port: the Authorization stays behind (only http:80 to https:443 keeps it),
    and when the https side asks for credentials the read fails saying where it was sent,
    not that the registry refused alice's password."""

    def answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != PASSWORD:
            return UNAUTHORIZED
        return Reply(307, {"Location": f"https://{registry.host}{req.path}"})

    with Recorder(answer, tls=tls_material) as registry:
        where = registry.host
        client = Registry(
            RegistryConfig(
                ca_file=str(tls_material.ca_cert),
                docker_config=docker_config(tmp_path, {registry.host: ("alice", "secret")}),
            )
        )
        try:
            with pytest.raises(ModelfsError) as failed:
                await client.get_manifest(parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
    assert PASSWORD in registry.authorizations("http")
    assert set(registry.authorizations("https")) == {None}
    message = str(failed.value)
    assert f"redirected the request to https://{where}" in message, message
    assert "refused" not in message, message


@pytest.mark.parametrize("to", ["its-own-origin", "another-host"])
async def test_a_redirected_upload_body_fails_in_one_line_without_credentials_elsewhere(
    tmp_path: Path, tls_material: TLSMaterial, to: str
) -> None:
    """A registry that answers the upload's streamed PATCH with a 307 (to its own origin, or
    to another host): a streamed body cannot be sent twice, so the upload fails with one line
    of the modelfs error tree saying so (not httpx's StreamConsumed), and the other host gets
    nothing of alice's."""
    with Recorder(upload_served, address="127.0.0.2") as other_host:

        def answer(req: Recorded) -> Reply:
            if req.headers.get("Authorization") != PASSWORD:
                return UNAUTHORIZED
            if req.method == "POST":
                return Reply(202, {"Location": f"/v2/{REPO}/blobs/uploads/1"})
            if req.method == "PATCH":
                base = other_host.url if to == "another-host" else ""
                return Reply(307, {"Location": f"{base}/v2/{REPO}/blobs/uploads/2"})
            return upload_served(req)

        with Recorder(answer, tls=tls_material) as registry:
            client = tls_client(tmp_path, registry, tls_material)
            try:
                with pytest.raises(ModelfsError) as failed:
                    await upload(client, registry.host, tmp_path)
            finally:
                await client.aclose()
        assert PASSWORD not in other_host.authorizations()
    message = str(failed.value)
    assert "redirected" in message and "\n" not in message, message


# -- cookies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["http-same-port", "another-port"])
async def test_a_session_cookie_of_the_registry_goes_nowhere(
    tmp_path: Path, tls_material: TLSMaterial, to: str
) -> None:
    """An https registry that sets a session cookie (as some registries' front ends do, valid
    for its host on any port and, without ``Secure``, any scheme) with the redirect of an
    authenticated manifest read, to plain http on its port or to another port: modelfs keeps
    no cookies (docker's and containerd's clients keep none either), so the cookie is sent
    neither there nor back."""
    cookie = "session=alice-s3cret"

    def answer(req: Recorded) -> Reply:
        if req.scheme == "http":
            return manifest_served(req)
        if req.headers.get("Authorization") != PASSWORD:
            return UNAUTHORIZED
        target = f"http://{registry.host}" if to == "http-same-port" else other_port.url
        return Reply(307, {"Location": f"{target}{req.path}", "Set-Cookie": f"{cookie}; Path=/"})

    with (
        Recorder(manifest_served, tls=tls_material) as other_port,
        Recorder(answer, tls=tls_material) as registry,
    ):
        client = tls_client(tmp_path, registry, tls_material)
        name = parse_name(f"{registry.host}/{REPO}:latest")
        try:
            await client.get_manifest(name)
            await client.get_manifest(name)
        finally:
            await client.aclose()
        sent = [r.headers.get("Cookie") for r in (*registry.requests, *other_port.requests)]
    assert len(sent) >= 4, sent
    assert set(sent) == {None}, f"the registry's session cookie went on: {sent}"
