"""``modelfs rm NAME:TAG --remote`` removes that tag and no other.

docker-registry 2.8 cannot delete a tag alone (it answers a DELETE of ``/manifests/<tag>``
with 400 DIGEST_INVALID): deleting the manifest would take every tag naming it with it,
so modelfs refuses when another tag names it, and ``--all-tags`` does it on purpose. A
registry that deletes tags (OCI distribution spec 1.1) is played by the fault proxy in
front of the real registry, answering that DELETE with 202.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from component import test_auth_docker
from component.test_auth_docker import create
from support.mount import one_line_error, run_modelfs
from support.proxy import Proxy
from support.registry import RegistryProcess

from modelfs.formats.names import parse_name

ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
# The same fixture: a HOME, Docker and modelfs configuration of the test's own.
env = test_auth_docker.env


def remote_digest(registry_url: str, name: str) -> str | None:
    """The digest the registry gives for ``name``'s tag, None if it has no such tag."""
    parsed = parse_name(name)
    request = urllib.request.Request(
        f"{registry_url}/v2/{parsed.repository}/manifests/{parsed.tag}",
        method="HEAD",
        headers={"Accept": ACCEPT},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def push_two_tags(host: str, repo: str, gguf: Path, src: Path, env: dict[str, str]):
    """``host/repo:keep`` and ``host/repo:tmp``, one manifest (``modelfs cp``), both pushed."""
    keep, tmp = f"{host}/{repo}:keep", f"{host}/{repo}:tmp"
    create(keep, gguf, src, env)
    run_modelfs("cp", keep, tmp, "--cache", str(src), env=env)
    for name in (keep, tmp):
        run_modelfs("push", name, "--cache", str(src), env=env)
    return keep, tmp


def test_rm_remote_of_a_tag_refuses_to_take_another_tag_of_the_same_manifest_with_it(
    fresh_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    src = tmp_path / "src"
    keep, tmp = push_two_tags(fresh_registry.host, "library/twotags", small_gguf, src, env)
    digest = remote_digest(fresh_registry.url, keep)
    assert digest is not None and remote_digest(fresh_registry.url, tmp) == digest

    result = run_modelfs("rm", tmp, "--remote", "--cache", str(src), env=env, check=False)
    assert remote_digest(fresh_registry.url, keep) == digest, (
        "rm --remote of :tmp deleted :keep on the registry"
    )
    line = one_line_error(result)
    assert "keep" in line and "--all-tags" in line, line
    assert remote_digest(fresh_registry.url, tmp) == digest, "a refused rm deleted the tag"
    run_modelfs("pull", keep, "--cache", str(tmp_path / "other"), env=env)
    # Refused on the registry: the local copy stays too.
    assert (src / "manifests" / fresh_registry.host / "library" / "twotags" / "tmp").exists()


def test_rm_remote_all_tags_deletes_the_manifest_and_every_tag_naming_it(
    fresh_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    src = tmp_path / "src"
    keep, tmp = push_two_tags(fresh_registry.host, "library/alltags", small_gguf, src, env)
    digest = remote_digest(fresh_registry.url, tmp)

    result = run_modelfs("rm", tmp, "--remote", "--all-tags", "--cache", str(src), env=env)
    assert f"deleted {tmp} on {fresh_registry.host} (manifest {digest})" in result.stdout
    assert remote_digest(fresh_registry.url, tmp) is None
    assert remote_digest(fresh_registry.url, keep) is None
    line = one_line_error(
        run_modelfs("pull", keep, "--cache", str(tmp_path / "c"), env=env, check=False)
    )
    assert "not found" in line


def test_rm_remote_deletes_the_manifest_no_other_tag_names(
    fresh_registry: RegistryProcess, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """Other tags of the repository naming other manifests do not stop the delete."""
    src = tmp_path / "src"
    host = fresh_registry.host
    keep, tmp = f"{host}/library/mixed:keep", f"{host}/library/mixed:tmp"
    create(keep, small_gguf, src, env)
    # The same weights with other parameters: another manifest.
    params = ("--params", '{"temperature": 0.2}')
    run_modelfs("create", tmp, "--gguf", str(small_gguf), *params, "--cache", str(src), env=env)
    for name in (keep, tmp):
        run_modelfs("push", name, "--cache", str(src), env=env)
    kept = remote_digest(fresh_registry.url, keep)
    assert kept != remote_digest(fresh_registry.url, tmp)

    result = run_modelfs("rm", tmp, "--remote", "--cache", str(src), env=env)
    assert f"deleted {tmp} on {host} (manifest sha256:" in result.stdout
    assert remote_digest(fresh_registry.url, tmp) is None
    assert remote_digest(fresh_registry.url, keep) == kept


def test_rm_remote_uses_the_registrys_tag_delete_where_it_has_one(
    proxy: Proxy, small_gguf: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    src = tmp_path / "src"
    repo = "library/tagdelete"
    keep, tmp = push_two_tags(proxy.host, repo, small_gguf, src, env)
    digest = remote_digest(f"http://{proxy.host}", keep)
    proxy.reset()
    proxy.set_faults([{"path": f"/v2/{repo}/manifests/tmp", "method": "DELETE", "status": 202}])

    result = run_modelfs("rm", tmp, "--remote", "--cache", str(src), env=env)
    deletes = [r.path for r in proxy.records() if r.method == "DELETE"]
    assert deletes == [f"/v2/{repo}/manifests/tmp"], (
        f"a registry that deletes tags was sent {deletes} for rm --remote of one tag"
    )
    assert f"(the tag only; manifest {digest} stays)" in result.stdout
    assert remote_digest(f"http://{proxy.host}", keep) == digest
