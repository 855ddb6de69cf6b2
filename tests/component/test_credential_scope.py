"""Where a registry password goes: only where it was given, over what it was given for.

Every server here is a real one on loopback that records the headers it receives
(support/recorder.py); 127.0.0.2 and 127.0.0.3 stand for other hosts. The client is modelfs's
own registry client, as a mount or a pull uses it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from support.recorder import Recorded, Recorder, Reply, basic, ranged
from support.tls import TLSMaterial

from modelfs.errors import RegistryError, Unauthorized
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name, parse_name
from modelfs.registry.client import BlobRange, Registry, RegistryConfig
from modelfs.registry.config import load_config

REPO = "library/weights"
BLOB = bytes(range(256)) * 1024
PIECE_BYTES = 64 << 10
UNAUTHORIZED = Reply(401, {"WWW-Authenticate": 'Basic realm="modelfs-test"'})


def docker_config(tmp_path: Path, logins: dict[str, tuple[str, str]]) -> Path:
    """A Docker config holding ``host → (user, password)``, as ``docker login`` writes it."""
    path = tmp_path / "docker.json"
    auths = {
        host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        for host, (user, password) in logins.items()
    }
    path.write_text(json.dumps({"auths": auths}))
    return path


async def read_blob(client: Registry, name: Name) -> bytes:
    got = bytearray()
    await client.fetch_range(
        BlobRange(
            name,
            Digest.of_bytes(BLOB),
            0,
            len(BLOB),
            PIECE_BYTES,
            lambda _offset, view: got.extend(view),
        ),
        limiter=trio.CapacityLimiter(1),
    )
    return bytes(got)


# -- redirects ---------------------------------------------------------------------------------


def https_registry_redirecting_to_http(
    password: str, tls: TLSMaterial, body: Reply | None = None
) -> Recorder:
    """A registry on https://127.0.0.1:PORT with Basic auth whose answers, once the password
    came, are redirects to http://127.0.0.1:PORT: the same netloc in clear, as https://host to
    http://host (:443 to :80) in the wild. The same port serves plain http with ``body`` (by
    default the blob, ranges and all)."""

    def answer(req: Recorded) -> Reply:
        if req.scheme == "http":
            return body or ranged(BLOB, req)
        if req.headers.get("Authorization") != password:
            return UNAUTHORIZED
        return Reply(307, {"Location": f"http://{registry.host}{req.path}"})

    registry = Recorder(answer, tls=tls)
    return registry


def tls_client(tmp_path: Path, registry: Recorder, tls: TLSMaterial) -> Registry:
    return Registry(
        RegistryConfig(
            tls_hosts=(registry.host,),
            ca_file=str(tls.ca_cert),
            docker_config=docker_config(tmp_path, {registry.host: ("alice", "secret")}),
        )
    )


async def test_a_blob_redirect_from_https_to_http_on_the_same_host_gets_no_password(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """The registry redirects a blob from https to http on the same host and port: the bytes
    are fetched there (they are checked against their digest anyway), the password is not
    sent there."""
    password = basic("alice", "secret")
    with https_registry_redirecting_to_http(password, tls_material) as registry:
        where = registry.host
        client = tls_client(tmp_path, registry, tls_material)
        try:
            got = await read_blob(client, parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
    assert got == BLOB
    assert password in registry.authorizations("https")
    clear = registry.authorizations("http")
    assert clear, "the redirect was not followed"
    assert clear == [None] * len(clear), (
        f"the password of alice for https://{where} went in clear to http://{where} "
        "after a redirect"
    )


async def test_a_manifest_redirect_from_https_to_http_on_the_same_host_gets_no_password(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """The same for a control request (a manifest, through httpx): the rule holds on both
    HTTP paths."""
    password = basic("alice", "secret")
    manifest = b'{"schemaVersion": 2}'
    body = Reply(200, {"Content-Type": "application/json"}, manifest)
    with https_registry_redirecting_to_http(password, tls_material, body) as registry:
        where = registry.host
        client = tls_client(tmp_path, registry, tls_material)
        try:
            got = await client.get_manifest(parse_name(f"{registry.host}/{REPO}:latest"))
        finally:
            await client.aclose()
    assert got == manifest
    assert password in registry.authorizations("https")
    clear = registry.authorizations("http")
    assert clear, "the redirect was not followed"
    assert clear == [None] * len(clear), (
        f"the password of alice for https://{where} went in clear to http://{where}"
    )


# -- credentials = "origin", per (host, mirror endpoint) ---------------------------------------


def basic_protected(password: str) -> Callable[[Recorded], Reply]:
    """A registry (or mirror) that serves BLOB to ``password`` only."""

    def answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != password:
            return UNAUTHORIZED
        return ranged(BLOB, req)

    return answer


def mirror_config(tmp_path: Path, text: str) -> RegistryConfig:
    path = tmp_path / "config.toml"
    path.write_text(text)
    file = load_config(path)
    return RegistryConfig(mirrors=file.mirrors, origin_credentials=file.origin_credentials)


async def test_a_mirror_shared_by_two_hosts_gets_only_the_credentials_its_entry_allows(
    tmp_path: Path,
) -> None:
    """One mirror endpoint listed for two hosts, with ``credentials = "origin"`` only in the
    first host's entry: reads of the first carry its password to the mirror; reads of the
    second do not carry the second's password there (it reads from its own host instead)."""
    a_password, b_password = basic("ann", "a-secret"), basic("bob", "b-secret")
    with (
        Recorder(basic_protected(a_password)) as mirror,
        Recorder(basic_protected(a_password), address="127.0.0.2") as origin_a,
        Recorder(basic_protected(b_password), address="127.0.0.3") as origin_b,
    ):
        config = mirror_config(
            tmp_path,
            f'[[mirror]]\nhost = "{origin_a.host}"\nendpoints = ["{mirror.url}"]\n'
            'credentials = "origin"\n'
            f'[[mirror]]\nhost = "{origin_b.host}"\nendpoints = ["{mirror.url}"]\n',
        )
        logins = {origin_a.host: ("ann", "a-secret"), origin_b.host: ("bob", "b-secret")}
        client = Registry(replace(config, docker_config=docker_config(tmp_path, logins)))
        try:
            # The first host's read first: a mirror that refuses a read rests for 30 s.
            got_a = await read_blob(client, parse_name(f"{origin_a.host}/{REPO}:latest"))
            got_b = await read_blob(client, parse_name(f"{origin_b.host}/{REPO}:latest"))
        finally:
            await client.aclose()
        assert got_a == got_b == BLOB
        assert b_password not in mirror.authorizations(), (
            "a read of the second host sent its password to the mirror that only the first "
            "host's entry lends credentials to"
        )
        assert b_password in origin_b.authorizations(), "the second host's read was not served"
        assert a_password in mirror.authorizations(), "the first host's entry lends it none"
        assert origin_a.requests == [], "the mirror did not serve the first host's read"


# -- token realms named by a mirror --------------------------------------------------------------


def token_realm(token: str) -> Callable[[Recorded], Reply]:
    """A token realm that hands ``token`` to anyone who asks."""
    return lambda _req: Reply(
        200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode()
    )


@pytest.mark.parametrize(
    ("realm_address", "gets_the_password"),
    [("127.0.0.3", False), ("127.0.0.1", True)],
    ids=["realm-on-a-third-host", "realm-on-the-origins-host"],
)
async def test_a_token_realm_a_mirror_names_gets_the_origins_password_only_on_its_host(
    tmp_path: Path, realm_address: str, gets_the_password: bool
) -> None:
    """``credentials = "origin"``, and the mirror's 401 names a token realm: on a third host
    the realm gets an anonymous token request, none of the origin's password; on the
    origin's own host (a token service beside the registry, passed through by the mirror) it
    gets the password, as it would from the origin itself."""
    password = basic("alice", "o-secret")

    def mirror_answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != "Bearer realm-token":
            challenge = (
                f'Bearer realm="{realm.url}/token",service="svc",scope="repository:{REPO}:pull"'
            )
            return Reply(401, {"WWW-Authenticate": challenge})
        return ranged(BLOB, req)

    with (
        Recorder(token_realm("realm-token"), address=realm_address) as realm,
        Recorder(mirror_answer, address="127.0.0.2") as mirror,
        Recorder(basic_protected(password)) as origin,
    ):
        config = mirror_config(
            tmp_path,
            f'[[mirror]]\nhost = "{origin.host}"\nendpoints = ["{mirror.url}"]\n'
            'credentials = "origin"\n',
        )
        logins = {origin.host: ("alice", "o-secret")}
        client = Registry(replace(config, docker_config=docker_config(tmp_path, logins)))
        try:
            got = await read_blob(client, parse_name(f"{origin.host}/{REPO}:latest"))
        finally:
            await client.aclose()
        assert got == BLOB
        assert realm.requests, "the realm the mirror named was not asked for a token"
        assert origin.requests == [], "the mirror did not serve the read"
        sent = set(realm.authorizations())
        if gets_the_password:
            assert sent == {password}
        else:
            assert sent == {None}, (
                f"the origin's password went to the token realm on {realm_address}, "
                "a host the mirror named"
            )


# -- https credentials and an http mirror ---------------------------------------------------------


@pytest.mark.parametrize("origin_first", [False, True], ids=["mirror-asks-first", "origin-first"])
async def test_an_http_mirror_lent_an_https_origins_credentials_never_gets_its_password(
    tmp_path: Path, tls_material: TLSMaterial, origin_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``credentials = "origin"`` for an https registry with Basic auth and a plain-http
    mirror: the mirror may get tokens, but the password (given for https) is neither sent
    when the mirror asks for it first nor later, once the origin itself has taken it; the
    read goes to the origin over https, and the log says why."""
    password = basic("alice", "secret")
    mirror_has_it = not origin_first

    def mirror_answer(req: Recorded) -> Reply:
        if not mirror_has_it:
            return Reply(404)  # not there yet: ask the origin, without resting the mirror
        return basic_protected(password)(req)

    with (
        Recorder(mirror_answer) as mirror,
        Recorder(basic_protected(password), tls=tls_material) as origin,
    ):
        config = mirror_config(
            tmp_path,
            f'[[mirror]]\nhost = "{origin.host}"\nendpoints = ["{mirror.url}"]\n'
            'credentials = "origin"\n',
        )
        config = replace(
            config,
            tls_hosts=(origin.host,),
            ca_file=str(tls_material.ca_cert),
            docker_config=docker_config(tmp_path, {origin.host: ("alice", "secret")}),
        )
        client = Registry(config)
        name = parse_name(f"{origin.host}/{REPO}:latest")
        try:
            got = [await read_blob(client, name)]
            if origin_first:  # the origin has taken the password: now the mirror asks
                mirror_has_it = True
                got.append(await read_blob(client, name))
        finally:
            await client.aclose()
        assert len(mirror.requests) >= 1 + origin_first, "the mirror was not asked"
        assert password not in mirror.authorizations(), (
            "the password of alice for an https registry went in clear to an http mirror"
        )
        assert got == [BLOB] * len(got)
        assert password in origin.authorizations("https")
        [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert f"mirror {mirror.url} failed" in warning
        assert "not sent over plain http" in warning, warning


# -- locations the registry hands out ---------------------------------------------------------------


async def test_an_upload_location_over_plain_http_gets_no_credentials(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """An https registry (behind a proxy that forgot X-Forwarded-Proto, say) answers the start
    of an upload with ``Location: http://<its own host:port>/…``: modelfs sends that location
    neither the password nor a token, and the push fails saying why."""
    password = basic("alice", "secret")

    def answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != password:
            return UNAUTHORIZED
        if req.method == "POST":
            return Reply(202, {"Location": f"http://{registry.host}/v2/{REPO}/blobs/uploads/1"})
        return Reply(201 if req.method == "PUT" else 202, {"Location": req.path})

    layer = tmp_path / "layer"
    layer.write_bytes(BLOB)
    with Recorder(answer, tls=tls_material) as registry:
        client = tls_client(tmp_path, registry, tls_material)
        refused: Unauthorized | None = None
        try:
            await client.upload_blob(
                parse_name(f"{registry.host}/{REPO}:latest"),
                Digest.of_bytes(BLOB),
                layer,
                len(BLOB),
            )
        except Unauthorized as e:
            refused = e
        finally:
            await client.aclose()
    assert password in registry.authorizations("https")
    clear = registry.authorizations("http")
    assert clear, "the upload location was not tried"
    assert clear == [None] * len(clear), "credentials went in clear to the upload location"
    assert refused is not None and "plain http" in str(refused), refused


async def test_a_tag_list_page_over_plain_http_gets_no_credentials(
    tmp_path: Path, tls_material: TLSMaterial
) -> None:
    """An https registry whose tag list links its next page over plain http on its own host:
    the page is not fetched (its credentials would follow in clear), and the listing fails
    saying so."""
    password = basic("alice", "secret")

    def answer(req: Recorded) -> Reply:
        if req.headers.get("Authorization") != password:
            return UNAUTHORIZED
        page = f'<http://{registry.host}/v2/{REPO}/tags/list?last=a>; rel="next"'
        body = json.dumps({"name": REPO, "tags": ["a"]}).encode()
        return Reply(200, {"Content-Type": "application/json", "Link": page}, body)

    with Recorder(answer, tls=tls_material) as registry:
        client = tls_client(tmp_path, registry, tls_material)
        refused: RegistryError | None = None
        try:
            await client.tags(parse_name(f"{registry.host}/{REPO}:latest"))
        except RegistryError as e:
            refused = e
        finally:
            await client.aclose()
    assert password in registry.authorizations("https")
    assert password not in registry.authorizations("http"), "the password went in clear"
    assert refused is not None and "over http" in str(refused), refused
