"""modelfs against docker-registry with Basic auth, token auth, TLS, a mirror; push --from and
unlink --remote. Every server is real and on loopback (fixtures in conftest)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TLSRegistry, TokenRegistry
from support.mount import modelfs_cmd, one_line_error, run_modelfs
from support.registry import RegistryProcess, free_port

from modelfs.formats.names import parse_name
from modelfs.registry.auth import _Token
from modelfs.registry.client import Registry, RegistryConfig, pull_scopes


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    return {
        **os.environ,
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "MODELFS_CONFIG": str(tmp_path / "config.toml"),
    }


def docker_login(env: dict[str, str], host: str, user: str, password: str) -> None:
    path = Path(env["DOCKER_CONFIG"]) / "config.json"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def create(name: str, gguf: Path, cache: Path, env: dict[str, str]) -> None:
    run_modelfs("create", name, "--gguf", str(gguf), "--cache", str(cache), env=env)


def blob_of(gguf: Path, cache: Path) -> bytes:
    data = gguf.read_bytes()
    return (cache / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}").read_bytes()


# -- Basic (htpasswd) ------------------------------------------------------------------------------


def test_basic_auth_needs_login_then_login_stores_credentials_like_docker(
    basic_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    host = basic_registry.host
    name = f"{host}/library/small:basic"
    src = tmp_path / "src"
    create(name, small_gguf, src, env)
    line = one_line_error(run_modelfs("push", name, "--cache", str(src), env=env, check=False))
    assert f"modelfs login {host}" in line

    config = Path(env["DOCKER_CONFIG"]) / "config.json"
    wrong = subprocess.run(
        modelfs_cmd("login", host, "-u", "alice", "--password-stdin"),
        input="wrong\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "alice" in one_line_error(wrong)
    assert not config.exists(), "a refused login stored its credentials"

    ok = subprocess.run(
        modelfs_cmd("login", host, "-u", "alice", "--password-stdin"),
        input="secret\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    stored = json.loads(config.read_text())["auths"][host]["auth"]
    assert base64.b64decode(stored) == b"alice:secret"

    run_modelfs("push", name, "--cache", str(src), env=env)
    dst = tmp_path / "dst"
    run_modelfs("pull", name, "--cache", str(dst), env=env)
    assert blob_of(small_gguf, dst) == small_gguf.read_bytes()


def test_basic_auth_username_password_form_and_wrong_password(
    basic_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    host = basic_registry.host
    name = f"{host}/library/small:form"
    src = tmp_path / "src"
    create(name, small_gguf, src, env)
    config = Path(env["DOCKER_CONFIG"]) / "config.json"
    config.write_text(
        json.dumps({"auths": {f"https://{host}": {"username": "alice", "password": "secret"}}})
    )
    run_modelfs("push", name, "--cache", str(src), env=env)
    docker_login(env, host, "alice", "not-the-password")
    line = one_line_error(
        run_modelfs("pull", name, "--cache", str(tmp_path / "dst"), env=env, check=False)
    )
    assert "refused the password of 'alice'" in line


# -- token auth -------------------------------------------------------------------------------------


def test_token_auth_push_pull_and_scopes(
    token_registry: TokenRegistry, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    name = f"{reg.host}/library/small:token"
    src = tmp_path / "src"
    create(name, small_gguf, src, env)
    docker_login(env, reg.host, "alice", "secret")
    run_modelfs("push", name, "--cache", str(src), env=env)
    pushes = len(issuer.requests)
    # One token per scope, cached for the whole push: not one per request.
    assert 1 <= pushes <= 3, [r.query for r in issuer.requests]

    issuer.clear_requests()
    docker_login(env, reg.host, "bob", "hunter2")
    dst = tmp_path / "dst"
    run_modelfs("pull", name, "--cache", str(dst), env=env)
    assert blob_of(small_gguf, dst) == small_gguf.read_bytes()
    assert all(r.user == "bob" for r in issuer.requests)
    assert len(issuer.requests) <= 2

    # bob may only pull: his push ends in one line, after one token request per challenge.
    issuer.clear_requests()
    other = f"{reg.host}/library/small:bob"
    create(other, small_gguf, tmp_path / "src2", env)
    line = one_line_error(
        run_modelfs("push", other, "--cache", str(tmp_path / "src2"), env=env, check=False)
    )
    assert "not allowed to push" in line or "refused" in line
    assert len(issuer.requests) <= 4, "a refused push kept asking for tokens"


def test_token_refused_by_the_registry_is_one_line_not_a_storm(
    token_registry: TokenRegistry, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    name = f"{reg.host}/library/small:expired"
    docker_login(env, reg.host, "alice", "secret")
    create(name, small_gguf, tmp_path / "src", env)
    run_modelfs("push", name, "--cache", str(tmp_path / "src"), env=env)
    # Tokens that the registry finds expired the moment they arrive.
    issuer.expires_in = 30
    issuer.claims_offset = -120
    issuer.clear_requests()
    line = one_line_error(
        run_modelfs("pull", name, "--cache", str(tmp_path / "dst"), env=env, check=False)
    )
    assert "refused access (401)" in line
    assert len(issuer.requests) == 1, "an expired token was answered more than once"


def test_wrong_password_for_token_realm(
    token_registry: TokenRegistry, tmp_path: Path, env: dict[str, str]
) -> None:
    reg = token_registry.registry
    docker_login(env, reg.host, "alice", "wrong")
    line = one_line_error(
        run_modelfs(
            "pull", f"{reg.host}/library/x:y", "--cache", str(tmp_path / "c"), env=env, check=False
        )
    )
    assert "refused a token" in line and "'alice'" in line and "401" in line


async def test_token_refused_later_is_requested_again(
    token_registry: TokenRegistry, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    name_text = f"{reg.host}/library/small:again"
    docker_login(env, reg.host, "alice", "secret")
    create(name_text, small_gguf, tmp_path / "src", env)
    run_modelfs("push", name_text, "--cache", str(tmp_path / "src"), env=env)
    name = parse_name(name_text)
    registry = Registry(RegistryConfig(docker_config=Path(env["DOCKER_CONFIG"]) / "config.json"))
    try:
        issuer.clear_requests()
        first = await registry.get_manifest(name)
        assert len(issuer.requests) == 1
        # The registry stops accepting the cached token (as when it expires server-side).
        registry.auth._tokens[(reg.host, pull_scopes(name))] = _Token("Bearer revoked", 1e12)
        assert await registry.get_manifest(name) == first
        assert len(issuer.requests) == 2
        # The new token is cached again.
        assert await registry.get_manifest(name) == first
        assert len(issuer.requests) == 2
    finally:
        await registry.aclose()


# -- TLS ---------------------------------------------------------------------------------------------


def tls_config(env: dict[str, str], host: str) -> None:
    Path(env["MODELFS_CONFIG"]).write_text(f'[[registry]]\nhost = "{host}"\ntls = true\n')


def test_tls_with_ca_file_and_ssl_cert_file(
    tls_registry: TLSRegistry, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    host = tls_registry.registry.host
    ca = str(tls_registry.tls.ca_cert)
    tls_config(env, host)
    name = f"{host}/library/small:tls"
    create(name, small_gguf, tmp_path / "src", env)
    run_modelfs("push", name, "--cache", str(tmp_path / "src"), "--ca-file", ca, env=env)
    run_modelfs("pull", name, "--cache", str(tmp_path / "a"), env={**env, "SSL_CERT_FILE": ca})
    assert blob_of(small_gguf, tmp_path / "a") == small_gguf.read_bytes()


def test_tls_bad_certificate_is_one_line_naming_the_host(
    tls_registry: TLSRegistry,
    wrong_ca,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    host = tls_registry.registry.host
    tls_config(env, host)
    name = f"{host}/library/small:tls"
    for extra in ((), ("--ca-file", str(wrong_ca.cert))):
        line = one_line_error(
            run_modelfs("pull", name, "--cache", str(tmp_path / "c"), *extra, env=env, check=False)
        )
        assert f"TLS certificate of {host}" in line and "--ca-file" in line


# -- mirrors -----------------------------------------------------------------------------------------


def test_mirror_serves_reads_and_a_dead_mirror_falls_back(
    registry: RegistryProcess,
    mirror_registry: RegistryProcess,
    small_gguf: Path,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    name = f"{registry.host}/library/small:mirrored"
    create(name, small_gguf, tmp_path / "src", env)
    run_modelfs("push", name, "--cache", str(tmp_path / "src"), env=env)
    digest = hashlib.sha256(small_gguf.read_bytes()).hexdigest()
    mirror_blob = next(mirror_registry.storage.rglob(f"blobs/sha256/{digest[:2]}/{digest}"), None)
    assert mirror_blob is None

    Path(env["MODELFS_CONFIG"]).write_text(
        f'[[mirror]]\nhost = "{registry.host}"\nendpoints = ["{mirror_registry.url}"]\n'
    )
    run_modelfs("pull", name, "--cache", str(tmp_path / "a"), env=env)
    assert blob_of(small_gguf, tmp_path / "a") == small_gguf.read_bytes()
    mirror_blob = next(mirror_registry.storage.rglob(f"blobs/sha256/{digest[:2]}/{digest}"), None)
    assert mirror_blob is not None, "the pull did not go through the mirror"

    dead = f"http://127.0.0.1:{free_port()}"
    Path(env["MODELFS_CONFIG"]).write_text(
        f'[[mirror]]\nhost = "{registry.host}"\nendpoints = ["{dead}"]\n'
    )
    result = run_modelfs("pull", name, "--cache", str(tmp_path / "b"), env=env)
    assert blob_of(small_gguf, tmp_path / "b") == small_gguf.read_bytes()
    assert f"mirror {dead} failed" in result.stderr


# -- push --from, unlink --remote ----------------------------------------------------------------------


def test_push_from_mounts_blobs_across_repositories(
    fresh_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    host = fresh_registry.host
    src = tmp_path / "src"
    first = f"{host}/alice/small:one"
    create(first, small_gguf, src, env)
    run_modelfs("push", first, "--cache", str(src), env=env)
    copy = f"{host}/bob/copy:two"
    result = run_modelfs("push", copy, "--from", first, "--cache", str(src), env=env)
    assert "mounted from alice/small" in result.stderr
    assert "pushed" in result.stdout and "0 B uploaded" in result.stdout
    dst = tmp_path / "dst"
    run_modelfs("pull", copy, "--cache", str(dst), env=env)
    assert blob_of(small_gguf, dst) == small_gguf.read_bytes()


def test_push_uploads_a_blob_it_may_not_mount_from_a_cached_repository(
    token_registry: TokenRegistry, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A push offers mounts from the repositories whose cached manifests name a blob; one these
    credentials may no longer read (the registry answers the mount 401) is no reason to fail:
    the blob is uploaded."""
    reg, issuer = token_registry.registry, token_registry.issuer
    src = tmp_path / "src"
    docker_login(env, reg.host, "alice", "secret")
    theirs = f"{reg.host}/team/small:1"
    create(theirs, small_gguf, src, env)
    run_modelfs("push", theirs, "--cache", str(src), env=env)
    issuer.policy = {"alice": {"alice/*": ["*"]}}  # team/ is no longer alice's to read
    mine = f"{reg.host}/alice/small:1"
    run_modelfs(
        "create", mine, "--gguf", str(small_gguf), "--system", "mine", "--cache", str(src), env=env
    )
    issuer.clear_requests()
    result = run_modelfs("push", mine, "--cache", str(src), env=env)
    asked = {s for r in issuer.requests for s in r.scopes}
    assert "repository:team/small:pull" in asked, "no mount from team/small was offered"
    assert "mounted from" not in result.stderr and "pushed" in result.stdout, result.stderr
    assert "modelfs: " not in result.stderr, result.stderr
    dst = tmp_path / "dst"
    run_modelfs("pull", mine, "--cache", str(dst), env=env)
    assert blob_of(small_gguf, dst) == small_gguf.read_bytes()


def test_unlink_remote_deletes_the_manifest(
    fresh_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    name = f"{fresh_registry.host}/library/small:gone"
    src = tmp_path / "src"
    create(name, small_gguf, src, env)
    run_modelfs("push", name, "--cache", str(src), env=env)
    result = run_modelfs("unlink", name, "--remote", "--cache", str(src), env=env)
    assert f"deleted {name} on {fresh_registry.host}" in result.stdout
    assert not (src / "manifests").exists() or not list((src / "manifests").rglob("gone"))
    line = one_line_error(
        run_modelfs("pull", name, "--cache", str(tmp_path / "c"), env=env, check=False)
    )
    assert "not found" in line


def test_unlink_remote_on_a_registry_refusing_deletes(
    registry_factory: Callable[..., RegistryProcess],
    small_gguf: Path,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    reg = registry_factory(delete_enabled=False)
    name = f"{reg.host}/library/small:kept"
    src = tmp_path / "src"
    create(name, small_gguf, src, env)
    run_modelfs("push", name, "--cache", str(src), env=env)
    line = one_line_error(
        run_modelfs("unlink", name, "--remote", "--cache", str(src), env=env, check=False)
    )
    assert "does not allow deletes" in line
    # The local copy is kept when the remote delete failed.
    run_modelfs("push", name, "--cache", str(src), env=env)


def test_anonymous_token_for_public_pulls_and_cross_repo_mount_with_tokens(
    token_registry: TokenRegistry, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """Docker Hub's shape: anonymous pull tokens for public repositories from a realm on
    another host; pushes with credentials, blobs mounted from a repository the user can read."""
    reg, issuer = token_registry.registry, token_registry.issuer
    issuer.anonymous_policy = {"library/*": ["pull"]}
    src = tmp_path / "src"
    first = f"{reg.host}/library/small:public"
    create(first, small_gguf, src, env)
    docker_login(env, reg.host, "alice", "secret")
    run_modelfs("push", first, "--cache", str(src), env=env)
    copy = f"{reg.host}/alice/small:copy"
    issuer.clear_requests()
    result = run_modelfs("push", copy, "--from", first, "--cache", str(src), env=env)
    assert "mounted from library/small" in result.stderr and "0 B uploaded" in result.stdout
    # The push token covered both repositories: push on the target, pull on the source.
    asked = {s for r in issuer.requests for s in r.scopes}
    assert "repository:library/small:pull" in asked, asked

    (Path(env["DOCKER_CONFIG"]) / "config.json").unlink()
    issuer.clear_requests()
    dst = tmp_path / "dst"
    run_modelfs("pull", first, "--cache", str(dst), env=env)
    assert blob_of(small_gguf, dst) == small_gguf.read_bytes()
    assert issuer.requests and not any(r.authorization for r in issuer.requests)
    line = one_line_error(
        run_modelfs("pull", copy, "--cache", str(tmp_path / "nope"), env=env, check=False)
    )
    assert "refused access (401)" in line
