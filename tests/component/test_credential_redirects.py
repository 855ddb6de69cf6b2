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
from pathlib import Path

import pytest
from component.test_credential_scope import REPO, tls_client
from support.recorder import Recorded, Recorder, Reply, basic
from support.tls import TLSMaterial

from modelfs.formats.digest import Digest
from modelfs.formats.names import parse_name

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
