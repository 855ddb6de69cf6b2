"""Fixtures shared by the three tiers: a real registry, SmolLM2, a proxy, real mounts."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gguf_synth import smollm2_gguf_path, write_synthetic_gguf
from support.mount import Mount, run_modelfs
from support.proxy import Proxy
from support.registry import RegistryProcess

SMOLLM2_NAME = "library/smollm2:135m"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


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

    def make(*options: str, root: Path | None = None, env: dict[str, str] | None = None) -> Mount:
        m = Mount(root or tmp_path / f"m{len(mounts)}", options=options, env=env)
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
    if os.environ.get("MODELFS_SKIP_MOUNT"):
        skip = pytest.mark.skip(reason="MODELFS_SKIP_MOUNT is set")
        for item in items:
            if "mount" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def source(smollm2_gguf: Path) -> bytes:
    """The SmolLM2 GGUF's bytes."""
    return smollm2_gguf.read_bytes()


@pytest.fixture
def model_hex(source: bytes) -> str:
    """The SmolLM2 GGUF's sha256 (its blob's digest)."""
    return hashlib.sha256(source).hexdigest()
