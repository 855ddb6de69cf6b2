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
from dataclasses import dataclass
from pathlib import Path

import pytest
from component.test_credential_scope import REPO, tls_client
from support.recorder import Recorded, Recorder, Reply, basic
from support.tls import TLSMaterial

from modelfs.errors import ModelfsError
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name, parse_name
from modelfs.registry.client import Registry

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
    PUT, a blob HEAD, a cross-repository mount or a delete (``modelfs rm --remote``) to plain
    http on its own port, to another port of its host, or to another host: the request is
    followed there (its answer served), without alice's password."""
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
