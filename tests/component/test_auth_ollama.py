"""modelfs against a registry.ollama.ai look-alike: the ed25519 key, 307s to a CDN, 412s.

The front (tests/support/ollama_front.py) checks each token request's signature with the
public key, so a push or pull that succeeds here was signed exactly in Ollama's format.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.mount import one_line_error, run_modelfs
from support.ollama_front import CDN, OllamaFront

from modelfs.formats.digest import Digest
from modelfs.formats.names import parse_name
from modelfs.registry.auth import OllamaKey
from modelfs.registry.client import BlobRange, Registry, RegistryConfig

RANGE_BYTES = 80 << 10  # 8 MiB in ~100 ranges


@pytest.fixture
def key(tmp_path: Path) -> OllamaKey:
    k = OllamaKey(tmp_path / "keys" / "id_ed25519")
    k.public_line  # noqa: B018 — creates the key file
    return k


@pytest.fixture
def env(tmp_path: Path, key: OllamaKey) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "MODELFS_KEY": str(key.path)}


@pytest.fixture
def pushed(
    ollama_front: tuple[OllamaFront, CDN],
    small_gguf: Path,
    key: OllamaKey,
    env: dict[str, str],
    tmp_path: Path,
) -> Iterator[str]:
    """A model pushed through the front by a key allowed on the namespace 'alice'."""
    front, _cdn = ollama_front
    front.allow_push(key.public_line, "alice")
    name = f"{front.host}/alice/small:8m"
    cache = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", str(cache), env=env)
    run_modelfs("push", name, "--cache", str(cache), env=env)
    front.reset()
    yield name


def test_pull_follows_cdn_redirects_without_authorization(
    ollama_front: tuple[OllamaFront, CDN],
    pushed: str,
    small_gguf: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    front, cdn = ollama_front
    cache = tmp_path / "pulled"
    run_modelfs("pull", pushed, "--cache", str(cache), env=env)
    digest = hashlib.sha256(small_gguf.read_bytes()).hexdigest()
    assert (cache / "blobs" / f"sha256-{digest}").read_bytes() == small_gguf.read_bytes()
    blob_gets = [r for r in cdn.requests if r.method == "GET"]
    assert blob_gets, "the pull did not read any blob from the CDN"
    leaked = [r.path for r in cdn.requests if "Authorization" in r.headers]
    assert not leaked, f"the registry's Authorization header reached the CDN: {leaked}"
    # Several streams read the model blob at once; one of them resolved the redirect.
    assert front.redirects[f"sha256:{digest}"] == 1, dict(front.redirects)


async def test_hundred_ranges_resolve_the_redirect_once_and_again_after_expiry(
    ollama_front: tuple[OllamaFront, CDN], pushed: str, small_gguf: Path, key: OllamaKey
) -> None:
    front, cdn = ollama_front
    data = small_gguf.read_bytes()
    digest = Digest.of_bytes(data)
    name = parse_name(pushed)
    registry = Registry(RegistryConfig(key_path=key.path))
    limiter = trio.CapacityLimiter(4)
    got = bytearray(len(data))

    def sink(offset: int, view: memoryview) -> None:
        got[offset : offset + len(view)] = view

    async def read(start: int) -> None:
        end = min(start + RANGE_BYTES, len(data))
        await registry.fetch_range(
            BlobRange(name, digest, start, end, RANGE_BYTES, sink), limiter=limiter
        )

    starts = list(range(0, len(data), RANGE_BYTES))
    assert len(starts) >= 100
    try:
        async with trio.open_nursery() as nursery:
            for s in starts[:4]:
                nursery.start_soon(read, s)
        for s in starts[4:50]:
            await read(s)
        assert front.redirects[str(digest)] == 1, "a redirect was resolved more than once"
        cdn.expire_all()
        for s in starts[50:]:
            await read(s)
    finally:
        await registry.aclose()
    assert bytes(got) == data
    assert front.redirects[str(digest)] == 2, (
        "an expired CDN URL was not resolved exactly once more"
    )
    refused = [r for r in cdn.requests if r.method == "GET"]
    assert len(refused) == len(starts) + 1  # every range once, plus the one refused after expiry
    assert not [r for r in cdn.requests if "Authorization" in r.headers]


def test_key_created_like_ollama_when_missing(
    ollama_front: tuple[OllamaFront, CDN], pushed: str, tmp_path: Path, env: dict[str, str]
) -> None:
    keyfile = tmp_path / "fresh" / ".ollama" / "id_ed25519"
    result = run_modelfs(
        "pull", pushed, "--cache", str(tmp_path / "c2"), "--key", str(keyfile), env=env
    )
    assert result.returncode == 0
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    pub = keyfile.with_name("id_ed25519.pub").read_text()
    assert pub.startswith("ssh-ed25519 AAAA")
    assert OllamaKey(keyfile).public_line == pub.strip()


def test_push_to_a_namespace_not_owned_names_the_key(
    ollama_front: tuple[OllamaFront, CDN], small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    front, _cdn = ollama_front
    stranger = OllamaKey(tmp_path / "stranger" / "id_ed25519")
    name = f"{front.host}/library/small:stolen"
    cache = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(small_gguf), "--cache", str(cache), env=env)
    result = run_modelfs(
        "push", name, "--cache", str(cache), "--key", str(stranger.path), env=env, check=False
    )
    line = one_line_error(result)
    assert "not allowed to push to 'library'" in line
    assert stranger.public_line in line


@pytest.mark.parametrize("form", ["list", "single"])
def test_old_client_412_shows_the_registry_message(
    ollama_front: tuple[OllamaFront, CDN],
    pushed: str,
    tmp_path: Path,
    env: dict[str, str],
    form: str,
) -> None:
    front, _cdn = ollama_front
    front.reject_user_agent = r"^modelfs/"
    front.error_form = form
    result = run_modelfs("pull", pushed, "--cache", str(tmp_path / "c"), env=env, check=False)
    line = one_line_error(result)
    assert "412" in line and "please upgrade to the latest version" in line


def test_realm_on_another_host_gets_no_signature(
    ollama_front: tuple[OllamaFront, CDN],
    registry,  # type: ignore[no-untyped-def]
    pushed: str,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    front, _cdn = ollama_front
    elsewhere = OllamaFront(registry.host).start()
    try:
        front.realm = f"http://{elsewhere.host}/token"
        result = run_modelfs("pull", pushed, "--cache", str(tmp_path / "c"), env=env, check=False)
        line = one_line_error(result)
        assert "refused" in line and elsewhere.host in line
        assert elsewhere.token_requests, "the client did not ask the other realm at all"
        signed = [t for t in elsewhere.token_requests if t.authorization]
        assert not signed, "a signature was sent to a realm on another host"
        # One answer per challenge, not a storm.
        assert len(elsewhere.token_requests) <= 2
    finally:
        elsewhere.stop()


def test_unknown_key_signature_is_refused_with_one_line(
    ollama_front: tuple[OllamaFront, CDN], pushed: str, tmp_path: Path, env: dict[str, str]
) -> None:
    front, _cdn = ollama_front
    # A key file that is not a key at all.
    bad = tmp_path / "bad_key"
    bad.write_text("not a key\n")
    result = run_modelfs(
        "pull", pushed, "--cache", str(tmp_path / "c"), "--key", str(bad), env=env, check=False
    )
    line = one_line_error(result)
    assert str(bad) in line
    assert not front.token_requests


def test_unlink_remote_refused_for_a_key_without_rights(
    ollama_front: tuple[OllamaFront, CDN], pushed: str, tmp_path: Path, env: dict[str, str]
) -> None:
    stranger = tmp_path / "stranger" / "id_ed25519"
    result = run_modelfs(
        "unlink",
        pushed,
        "--remote",
        "--cache",
        str(tmp_path / "c"),
        "--key",
        str(stranger),
        env=env,
        check=False,
    )
    line = one_line_error(result)
    assert "refused" in line or "not allowed" in line
