"""modelfs.registry.client against a real docker-registry: manifests, blobs, ranges, errors."""

from __future__ import annotations

import json

import pytest
import trio
from support.registry import free_port

from modelfs.errors import ModelNotFound, RegistryError, Transient
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, parse_manifest
from modelfs.formats.names import parse_name
from modelfs.registry.client import BlobRange, Registry


async def test_manifest_is_returned_byte_for_byte(registry, smollm2_pushed):
    reg = Registry()
    try:
        raw = await reg.get_manifest(parse_name(smollm2_pushed))
    finally:
        await reg.aclose()
    manifest = parse_manifest(raw)
    assert manifest.layers_of_type(MEDIA_TYPE_MODEL)[0].size == 98_362_432
    # The registry reports the digest of what it stored; ours must be of the same bytes.
    import http.client

    conn = http.client.HTTPConnection(registry.host)
    conn.request(
        "HEAD",
        "/v2/library/smollm2/manifests/135m",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        assert conn.getresponse().getheader("Docker-Content-Digest") == str(manifest.digest)
    finally:
        conn.close()


async def test_unknown_model_and_unknown_tag_are_not_found(registry, smollm2_pushed):
    reg = Registry()
    try:
        for text in (
            f"{registry.host}/library/nope:latest",
            f"{registry.host}/library/smollm2:nope",
        ):
            with pytest.raises(ModelNotFound, match="not found"):
                await reg.get_manifest(parse_name(text))
    finally:
        await reg.aclose()


async def test_unreachable_registry_is_transient_and_quick():
    # Nothing listens on this port: connection refused, retried a few times, then Transient.
    reg = Registry()
    try:
        with pytest.raises(Transient, match="cannot connect"):
            await reg.get_manifest(parse_name(f"127.0.0.1:{free_port()}/library/x:y"))
    finally:
        await reg.aclose()


async def test_ranges_arrive_in_pieces_and_match(registry, smollm2_pushed, smollm2_gguf):
    reg = Registry()
    name = parse_name(smollm2_pushed)
    data = smollm2_gguf.read_bytes()
    digest = Digest.of_bytes(data)
    got: dict[int, bytes] = {}

    def on_piece(offset: int, view: memoryview) -> None:
        got[offset] = bytes(view)

    try:
        assert await reg.has_blob(name, digest)
        assert not await reg.has_blob(name, Digest("0" * 64))
        start, end = 3 << 20, (3 << 20) + (5 << 20) + 17
        await reg.fetch_range(
            BlobRange(name, digest, start, end, 1 << 20, on_piece), limiter=trio.CapacityLimiter(1)
        )
    finally:
        await reg.aclose()
    assert sorted(got) == [start + i * (1 << 20) for i in range(6)]
    assert b"".join(got[k] for k in sorted(got)) == data[start:end]


async def test_truncated_body_is_transient_and_keeps_delivered_pieces(
    proxy, smollm2_pushed, smollm2_gguf
):
    name = parse_name(smollm2_pushed).__class__(proxy.host, "library", "smollm2", "135m")
    data = smollm2_gguf.read_bytes()
    digest = Digest.of_bytes(data)
    proxy.set_faults([{"path": "/blobs/", "cut_after": (2 << 20) + 5}])
    got: dict[int, bytes] = {}
    reg = Registry()
    try:
        with pytest.raises(Transient, match="body ended"):
            await reg.fetch_range(
                BlobRange(
                    name, digest, 0, 4 << 20, 1 << 20, lambda o, v: got.__setitem__(o, bytes(v))
                ),
                limiter=trio.CapacityLimiter(1),
            )
    finally:
        await reg.aclose()
    assert sorted(got) == [0, 1 << 20], "pieces before the cut must have been delivered"
    assert got[1 << 20] == data[1 << 20 : 2 << 20]


async def test_error_status_bodies_become_one_line_messages(proxy, smollm2_pushed):
    name = parse_name(f"{proxy.host}/library/smollm2:135m")
    proxy.set_faults([{"status": 400}])
    reg = Registry()
    try:
        with pytest.raises(RegistryError) as info:
            await reg.get_manifest(name)
    finally:
        await reg.aclose()
    assert "400" in str(info.value) and "injected fault" in str(info.value)
    assert "\n" not in str(info.value)


async def test_503_with_retry_after_is_retried(proxy, smollm2_pushed):
    name = parse_name(f"{proxy.host}/library/smollm2:135m")
    proxy.set_faults(
        [{"path": "/manifests/", "times": 1, "status": 503, "headers": {"Retry-After": "2"}}]
    )
    reg = Registry()
    start = trio.current_time()
    try:
        raw = await reg.get_manifest(name)
    finally:
        await reg.aclose()
    assert json.loads(raw)["schemaVersion"] == 2
    assert [r.status for r in proxy.records()] == [503, 200]
    assert trio.current_time() - start >= 2.0, "Retry-After: 2 was not honoured"
