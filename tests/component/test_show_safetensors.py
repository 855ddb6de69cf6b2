"""`modelfs show` of models made of safetensors files, against a real registry: MiniLM pushed
as DMR v0.2 and as Ollama's tensor layers; its facts from config.json and the weights' headers,
the weights themselves not fetched, and nothing left behind in the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.modelformats import dmr_v02, ollama_tensors, push, quantized_folder
from support.mount import run_modelfs
from support.proxy import Proxy

from modelfs.formats.safetensors import OLLAMA_QUANTIZED

MINILM_PARAMETERS = 22_713_728
BUILDS = {"dmr-v0.2": dmr_v02, "ollama-tensors": ollama_tensors}


@pytest.fixture
def via(proxy: Proxy) -> Iterator[Proxy]:
    proxy.reset()
    yield proxy


@pytest.fixture(scope="module")
def pushed(registry, minilm: Path) -> dict[str, tuple[str, object]]:
    out = {}
    for kind, build in BUILDS.items():
        art = build(minilm)
        push(registry.host, f"showst/minilm-{kind}", "latest", art)
        out[kind] = (f"showst/minilm-{kind}:latest", art)
    return out


def show_json(name: str, cache: Path) -> dict:
    return json.loads(run_modelfs("show", name, "--json", "--cache", str(cache)).stdout)


@pytest.mark.parametrize("kind", list(BUILDS))
def test_show_reads_the_facts_from_config_and_headers_only(
    via: Proxy, pushed, minilm: Path, tmp_path: Path, kind: str
) -> None:
    repo, _art = pushed[kind]
    cache = tmp_path / "cache"
    doc = show_json(f"{via.host}/{repo}", cache)

    model = doc["model"]
    assert model["format"] == "safetensors"
    assert model["architecture"] == "BertModel"
    assert model["parameter_count"] == MINILM_PARAMETERS
    assert model["dtypes"][0] == "F32" and set(model["dtypes"]) <= {"F32", "I64"}
    assert model["context_length"] == 512
    assert model["ollama_quantized"] is False
    weights = (minilm / "model.safetensors").stat().st_size
    assert 0.99 * weights < model["weights_bytes"] < weights
    assert doc["memory"][0]["weights_bytes"] == model["weights_bytes"]
    files = {f["path"]: f["size_bytes"] for f in doc["files"]}
    assert files["config.json"] == (minilm / "config.json").stat().st_size
    assert "model.safetensors" in files

    # Fetched: the config and the weights' heads, never the weights (90 MB).
    fetched = sum(r.body_bytes for r in via.blob_records())
    assert fetched < 1 << 20, fetched
    assert doc["header"]["bytes"] < 1 << 20
    # No chunk index: the weights' header is read alone, unchecked, and the report says so.
    assert doc["header"]["checked"] is False

    # show of a model the cache did not have leaves nothing behind.
    assert doc["manifest_from"] != "cache"
    assert run_modelfs("ls", "--cache", str(cache)).stdout == ""
    left = [
        p.relative_to(cache)
        for d in ("blobs", "manifests", ".modelfs/manifests", ".modelfs/partial")
        for p in (cache / d).rglob("*")
        if p.is_file() and p.suffix != ".lock"
    ]
    assert left == [], f"show left files in the cache: {left}"


def test_text_output_names_the_facts_and_files(pushed, registry, tmp_path: Path) -> None:
    repo, _art = pushed["dmr-v0.2"]
    out = run_modelfs("show", f"{registry.host}/{repo}", "--cache", str(tmp_path / "c")).stdout
    lines = [line.split() for line in out.splitlines()]
    assert ["architecture", "BertModel"] in lines
    assert ["context", "length", "512"] in lines
    assert any(line[:2] == ["parameters", "22.71M"] and "(22,713,728)" in line for line in lines)
    assert any(line[:1] == ["dtypes"] and line[1].startswith("F32") for line in lines), out
    assert "Memory (estimate: the weights as stored" in out
    assert any(line[:1] == ["config.json"] for line in lines)
    assert OLLAMA_QUANTIZED not in out


def test_ollama_quantized_tensors_are_flagged(registry, tmp_path: Path) -> None:
    """A model Ollama quantized (each weight packed, its .scale and .bias beside it) says so."""
    folder = quantized_folder(tmp_path / "quantized")
    push(registry.host, "showst/quantized", "latest", ollama_tensors(folder))
    name = f"{registry.host}/showst/quantized:latest"
    doc = show_json(name, tmp_path / "cache")
    assert doc["model"]["ollama_quantized"] is True
    assert doc["model"]["architecture"] == "LlamaForCausalLM"
    assert doc["model"]["context_length"] == 4096
    out = run_modelfs("show", name, "--cache", str(tmp_path / "c2")).stdout
    assert OLLAMA_QUANTIZED in out
