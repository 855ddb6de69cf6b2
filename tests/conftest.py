"""Fixtures shared by the tiers: a real registry, SmolLM2, a proxy, real mounts, containers
booting systemd."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gguf_synth import smollm2_gguf_path, write_synthetic_gguf
from support import nspawn
from support.minilm import minilm_folder
from support.mount import Mount, run_modelfs
from support.ollama_front import CDN, OllamaFront
from support.proxy import Proxy
from support.registry import HtpasswdAuth, PullThrough, RegistryProcess
from support.tls import CertificateAuthority, TLSMaterial, generate_ca, generate_tls
from support.tokens import TokenIssuer

SMOLLM2_NAME = "library/smollm2:135m"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (support/minilm.py); do not write to it."""
    return minilm_folder()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry of the test's own, for tests that stop it or fill it."""
    reg = RegistryProcess(tmp_path / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def smollm2_pushed(
    registry: RegistryProcess, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """SmolLM2 created with modelfs (chunk index and all) and pushed to the session registry."""
    work = tmp_path_factory.mktemp("smollm2-src")
    template = work / "template.txt"
    template.write_text(
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
    )
    name = f"{registry.host}/{SMOLLM2_NAME}"
    cache = work / "cache"
    run_modelfs(
        "create",
        name,
        "--gguf",
        str(smollm2_gguf),
        "--template",
        str(template),
        "--system",
        "You are helpful.",
        "--params",
        '{"temperature":0.2}',
        "--cache",
        str(cache),
    )
    run_modelfs("push", name, "--cache", str(cache))
    shutil.rmtree(cache)
    return name


@pytest.fixture(scope="session")
def smollm2_noindex_pushed(
    registry: RegistryProcess, smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """SmolLM2 without a chunk index, as models pushed by Ollama are."""
    work = tmp_path_factory.mktemp("smollm2-noindex")
    name = f"{registry.host}/library/smollm2:noindex"
    run_modelfs(
        "create", name, "--gguf", str(smollm2_gguf), "--no-chunk-index", "--cache", str(work)
    )
    run_modelfs("push", name, "--cache", str(work))
    shutil.rmtree(work)
    return name


SMALL_GGUF_BYTES = 8 << 20


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 MiB GGUF-shaped file, for tests that push many small models."""
    path = tmp_path_factory.mktemp("small-gguf") / "small.gguf"
    write_synthetic_gguf(path, SMALL_GGUF_BYTES, seed=11)
    return path


SYNTHETIC_BYTES = 200 << 20


@pytest.fixture(scope="session")
def synthetic_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.gguf"
    write_synthetic_gguf(path, SYNTHETIC_BYTES, seed=3)
    return path


@pytest.fixture(scope="session")
def synthetic_pushed(
    registry: RegistryProcess, synthetic_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    work = tmp_path_factory.mktemp("synthetic-src")
    name = f"{registry.host}/library/synthetic:200m"
    run_modelfs("create", name, "--gguf", str(synthetic_gguf), "--cache", str(work))
    run_modelfs("push", name, "--cache", str(work))
    shutil.rmtree(work)
    return name


@pytest.fixture
def proxy(registry: RegistryProcess) -> Iterator[Proxy]:
    p = Proxy(registry.host).start()
    yield p
    p.stop()


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Start real mounts; always unmount them; fail on log lines the test did not expect."""
    mounts: list[Mount] = []

    def make(
        *options: str,
        root: Path | None = None,
        env: dict[str, str] | None = None,
        cache: Path | None = None,
    ) -> Mount:
        m = Mount(root or tmp_path / f"m{len(mounts)}", options=options, env=env, cache=cache)
        mounts.append(m)
        return m.start()

    yield make
    for m in mounts:
        m.stop()
    # Mounts restarted on the same root share a log: judge each log once, with every
    # expectation any of its mounts declared.
    by_log: dict[Path, Mount] = {}
    for m in mounts:
        first = by_log.setdefault(m.log_path, m)
        if first is not m:
            first.expected_log += m.expected_log
    problems = [line for m in by_log.values() for line in m.unexpected_log_lines()]
    problems += [m.unclean for m in mounts if m.unclean is not None]
    assert not problems, "the daemon logged problems:\n" + "\n".join(problems)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tier markers follow the directory, so `-m "not mount"` selects tiers without bookkeeping.
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "component" in parts:
            item.add_marker(pytest.mark.component)
        if "mount" in parts:
            item.add_marker(pytest.mark.mount)
        if "systemd" in parts:
            item.add_marker(pytest.mark.systemd)
    if os.environ.get("MODELFS_SKIP_MOUNT"):
        skip = pytest.mark.skip(reason="MODELFS_SKIP_MOUNT is set")
        for item in items:
            if "mount" in item.keywords:
                item.add_marker(skip)


# -- systemd in a container (tests/systemd; see support/nspawn.py)


@pytest.fixture(scope="session")
def systemd_image() -> Iterator[Path]:
    """A Debian bookworm tree with this working tree's modelfs installed, for containers to
    boot; the whole tier is skipped, saying why, where this machine cannot boot one."""
    try:
        nspawn.check_host()
        tarball = nspawn.rootfs_tarball()
        deps = nspawn.dependency_wheels()
        backend = nspawn.build_backend_wheels()
    except nspawn.Unavailable as e:
        pytest.skip(f"systemd tier: {e}")
    work = Path(tempfile.mkdtemp(prefix="modelfs-systemd-"))
    with nspawn.runtime_dirs_removed():
        try:
            image = work / "image"
            nspawn.unpack(tarball, image)
            try:
                nspawn.Container(image, f"modelfs-probe-{os.getpid()}", work).start().stop()
            except nspawn.BootFailed as e:
                pytest.skip(f"systemd tier: systemd-nspawn cannot boot a container here: {e}")
            wheels = work / "wheels"
            wheels.mkdir()
            nspawn.modelfs_wheel(wheels, backend)
            nspawn.install_modelfs(image, deps, wheels)
            yield image
        finally:
            shutil.rmtree(work)


@pytest.fixture
def container_factory(
    systemd_image: Path, tmp_path: Path
) -> Iterator[Callable[..., nspawn.Container]]:
    """``make(files={path: text})`` boots a fresh container (``files`` placed before boot);
    all are powered off after the test."""
    started: list[nspawn.Container] = []

    def make(files: dict[str, str] | None = None) -> nspawn.Container:
        name = f"modelfs-{os.getpid()}-{len(started)}"
        container = nspawn.Container(systemd_image, name, tmp_path, files=files)
        started.append(container)
        return container.start()

    yield make
    for container in started:
        container.stop()


@pytest.fixture
def source(smollm2_gguf: Path) -> bytes:
    """The SmolLM2 GGUF's bytes."""
    return smollm2_gguf.read_bytes()


@pytest.fixture
def model_hex(source: bytes) -> str:
    """The SmolLM2 GGUF's sha256 (its blob's digest)."""
    return hashlib.sha256(source).hexdigest()


# -- registries with auth, TLS and mirrors
#
# Each is the test's own (function scope: a docker-registry starts in well under a second),
# under tmp_path, stopped at teardown. The factories build other combinations (TLS + tokens, an
# issuer that expires tokens early, a mirror of a registry with auth, ...).

BASIC_USERS = {"alice": "secret"}


@dataclass(frozen=True)
class TokenRegistry:
    registry: RegistryProcess
    issuer: TokenIssuer


@dataclass(frozen=True)
class TLSRegistry:
    registry: RegistryProcess
    tls: TLSMaterial


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RegistryProcess]]:
    """``make(**RegistryProcess options)`` → a started registry under tmp_path; all stopped after."""
    started: list[RegistryProcess] = []

    def make(**options: Any) -> RegistryProcess:
        reg = RegistryProcess(tmp_path / f"registry-{len(started)}", **options)
        started.append(reg)
        return reg.start()

    yield make
    for reg in started:
        reg.stop()


@pytest.fixture
def token_issuer_factory(tmp_path: Path) -> Iterator[Callable[..., TokenIssuer]]:
    """``make(**TokenIssuer options)`` → a started token issuer; all stopped after."""
    started: list[TokenIssuer] = []

    def make(**options: Any) -> TokenIssuer:
        issuer = TokenIssuer(tmp_path / f"issuer-{len(started)}", **options)
        started.append(issuer)
        return issuer.start()

    yield make
    for issuer in started:
        issuer.stop()


@pytest.fixture
def basic_registry(registry_factory: Callable[..., RegistryProcess]) -> RegistryProcess:
    """Basic auth (htpasswd, bcrypt): alice / secret (``basic_registry.htpasswd.users``)."""
    return registry_factory(htpasswd=HtpasswdAuth(BASIC_USERS))


@pytest.fixture
def token_registry(
    registry_factory: Callable[..., RegistryProcess],
    token_issuer_factory: Callable[..., TokenIssuer],
) -> TokenRegistry:
    """Bearer token auth; the issuer's users are alice / secret (everything) and bob / hunter2
    (pull under library/); change ``.issuer`` settings freely during the test."""
    issuer = token_issuer_factory()
    return TokenRegistry(registry_factory(token=issuer.registry_auth()), issuer)


@pytest.fixture
def tls_material(tmp_path: Path) -> TLSMaterial:
    """A CA and a server certificate for localhost and 127.0.0.1."""
    return generate_tls(tmp_path / "tls")


@pytest.fixture
def wrong_ca(tmp_path: Path) -> CertificateAuthority:
    """A CA that signed nothing any server here uses."""
    return generate_ca(tmp_path / "wrong-ca", name="unrelated test CA")


@pytest.fixture
def tls_registry(
    registry_factory: Callable[..., RegistryProcess], tls_material: TLSMaterial
) -> TLSRegistry:
    """https:// only, no auth; trust ``.tls.ca_cert`` (httpx: ``verify=.tls.ssl_context()``)."""
    return TLSRegistry(registry_factory(tls=tls_material), tls_material)


@pytest.fixture
def mirror_registry(
    registry: RegistryProcess, registry_factory: Callable[..., RegistryProcess]
) -> RegistryProcess:
    """A pull-through cache of the session ``registry`` (no auth; it refuses pushes)."""
    return registry_factory(pull_through=PullThrough(registry.url))


@pytest.fixture
def ollama_front(registry: RegistryProcess) -> Iterator[tuple[OllamaFront, CDN]]:
    """A registry.ollama.ai look-alike (ed25519 token auth, 307s to an expiring CDN, 412s)
    in front of the session registry."""
    cdn = CDN(registry.host).start()
    front = OllamaFront(registry.host, cdn=cdn).start()
    try:
        yield front, cdn
    finally:
        front.stop()
        cdn.stop()
