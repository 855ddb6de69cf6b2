"""The CLI behind a forward proxy named by HTTP(S)_PROXY, as on a corporate network.

modelfs reads proxies from the environment twice over: httpx (manifests, tokens, uploads)
and bulk.py's own connections (blob bodies). Each test runs the real ``modelfs pull`` with
the proxy variables set and looks at what a real forward proxy saw.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf_synth import write_synthetic_gguf
from support.forward_proxy import ForwardProxy, ProxyRequest
from support.mount import run_modelfs, sha256_path
from support.registry import free_port

from modelfs.blobs.blobcache import BlobCache
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, parse_manifest
from modelfs.formats.names import parse_name

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# A dead proxy is retried with backoff; the pull must still give up well within this.
DEAD_PROXY_SECONDS = 120.0


def proxy_env(**variables: str) -> dict[str, str]:
    """The test's environment without any proxy settings of its own, plus ``variables``
    (each set in both spellings: urllib prefers the lower case, others the upper)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    for k, v in variables.items():
        env[k.upper()] = v
        env[k.lower()] = v
    return env


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


@pytest.fixture
def auth_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=("proxyuser", "p@ss:word")) as p:
        yield p


def assert_pulled(cache: Path, name: str) -> None:
    bc = BlobCache(cache)
    raw = bc.read_manifest(parse_name(name))
    assert raw is not None, "no manifest in the cache"
    m = parse_manifest(raw)
    for layer in m.blobs:
        assert bc.has_blob(layer.digest, layer.size), layer.digest
        assert sha256_path(bc.blob_path(layer.digest)) == layer.digest.hex


def forwarded(proxy: ForwardProxy) -> list[ProxyRequest]:
    return [r for r in proxy.requests if r.method != "CONNECT"]


def test_pull_goes_through_the_http_proxy(tmp_path, registry, smollm2_pushed, forward_proxy):
    cache = tmp_path / "c"
    r = run_modelfs(
        "pull", smollm2_pushed, "--cache", str(cache), env=proxy_env(http_proxy=forward_proxy.url)
    )
    assert "pulled" in r.stdout
    assert_pulled(cache, smollm2_pushed)

    seen = forward_proxy.requests
    prefix = f"http://{registry.host}/v2/library/smollm2/"
    # Every request went through the proxy, in absolute form, to the registry.
    assert seen and all(r.target.startswith(prefix) for r in seen), seen
    assert any(r.method == "GET" and r.target == prefix + "manifests/135m" for r in seen), (
        "no manifest GET through the proxy"
    )
    blob_gets = [r for r in seen if r.method == "GET" and "/blobs/sha256:" in r.target]
    m = parse_manifest(BlobCache(cache).read_manifest(parse_name(smollm2_pushed)) or b"")
    # The model's body comes over bulk.py's connections, the small layers over httpx or
    # bulk: either way through the proxy, every blob of the manifest.
    fetched = {r.target.rsplit("/", 1)[1] for r in blob_gets}
    assert fetched == {str(layer.digest) for layer in m.blobs}, fetched
    model = m.layers_of_type(MEDIA_TYPE_MODEL)[0]
    assert any(r.target.endswith(str(model.digest)) for r in blob_gets)
    assert not any(r.had_proxy_authorization for r in seen)


@pytest.mark.parametrize("entry", ["127.0.0.1", "{host}", "localhost,.0.0.1"])
def test_no_proxy_bypasses_the_proxy(tmp_path, registry, smollm2_pushed, forward_proxy, entry):
    # The same NO_PROXY must keep both httpx and bulk.py's connections off the proxy,
    # host:port entries included.
    cache = tmp_path / "c"
    no_proxy = entry.format(host=registry.host)
    r = run_modelfs(
        "pull",
        smollm2_pushed,
        "--cache",
        str(cache),
        env=proxy_env(http_proxy=forward_proxy.url, no_proxy=no_proxy),
    )
    assert "pulled" in r.stdout
    assert_pulled(cache, smollm2_pushed)
    assert forward_proxy.requests == []


def test_proxy_credentials_from_the_url_are_sent(tmp_path, smollm2_pushed, auth_proxy):
    cache = tmp_path / "c"
    r = run_modelfs(
        "pull",
        smollm2_pushed,
        "--cache",
        str(cache),
        env=proxy_env(http_proxy=auth_proxy.url_with_credentials),
    )
    assert "pulled" in r.stdout
    assert_pulled(cache, smollm2_pushed)
    seen = auth_proxy.requests
    assert any("/blobs/" in r.target for r in seen), seen
    assert all(r.had_proxy_authorization for r in seen), seen


def test_proxy_refusing_without_credentials_is_one_line(tmp_path, smollm2_pushed, auth_proxy):
    r = run_modelfs(
        "pull",
        smollm2_pushed,
        "--cache",
        str(tmp_path / "c"),
        env=proxy_env(http_proxy=auth_proxy.url),
        check=False,
        timeout=DEAD_PROXY_SECONDS,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("modelfs: ") and r.stderr.count("\n") == 1, r.stderr
    assert "407" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert auth_proxy.requests and not any(r.had_proxy_authorization for r in auth_proxy.requests)


def test_dead_proxy_fails_in_one_line_in_bounded_time(tmp_path, smollm2_pushed):
    dead = f"http://127.0.0.1:{free_port()}"
    # No hang: run_modelfs's timeout fails the test if the pull does not give up.
    r = run_modelfs(
        "pull",
        smollm2_pushed,
        "--cache",
        str(tmp_path / "c"),
        env=proxy_env(http_proxy=dead),
        check=False,
        timeout=DEAD_PROXY_SECONDS,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("modelfs: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"the proxy {dead.removeprefix('http://')}" in r.stderr, r.stderr


@pytest.mark.parametrize("credentials", [None, ("tunnel", "s3cret")], ids=["open", "auth"])
def test_pull_from_a_tls_registry_tunnels_through_connect(tmp_path, tls_registry, credentials):
    reg, tls = tls_registry.registry, tls_registry.tls
    forward_proxy = ForwardProxy(credentials=credentials).start()
    try:
        tunnelled_pull(tmp_path, reg, tls.ca_cert, forward_proxy)
    finally:
        forward_proxy.stop()


def tunnelled_pull(tmp_path, reg, ca_cert, forward_proxy):
    config = tmp_path / "config.toml"
    config.write_text(f'[[registry]]\nhost = "{reg.host}"\ntls = true\n')
    trust = ("--ca-file", str(ca_cert), "--config", str(config))
    gguf = tmp_path / "tiny.gguf"
    write_synthetic_gguf(gguf, 6 << 20, seed=11)
    name = f"{reg.host}/library/tiny:1"
    src = tmp_path / "src"
    no_proxy = proxy_env()
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(src), env=no_proxy)
    run_modelfs("push", name, "--cache", str(src), *trust, env=no_proxy)
    assert forward_proxy.requests == []

    authenticated = forward_proxy.credentials is not None
    proxy_url = forward_proxy.url_with_credentials if authenticated else forward_proxy.url
    cache = tmp_path / "c"
    r = run_modelfs(
        "pull",
        name,
        "--cache",
        str(cache),
        *trust,
        # http_proxy too: an https origin must use only the https one.
        env=proxy_env(https_proxy=proxy_url, http_proxy=f"http://127.0.0.1:{free_port()}"),
    )
    assert "pulled" in r.stdout
    assert_pulled(cache, name)
    model = parse_manifest(BlobCache(cache).read_manifest(parse_name(name)) or b"")
    assert sha256_path(gguf) == model.layers_of_type(MEDIA_TYPE_MODEL)[0].digest.hex

    seen = forward_proxy.requests
    # Only tunnels, all to the registry: the proxy never saw a URL of the TLS traffic.
    assert all(r == ProxyRequest("CONNECT", reg.host, authenticated) for r in seen), seen
    # httpx's tunnel (the manifest) and at least one of bulk.py's (the blob bodies).
    assert len(seen) >= 2, seen
    assert not forwarded(forward_proxy)
