"""`modelfs show` against a real registry: a cold cache, only the header fetched, facts as gguf-py
reads them, the answer cached as a mount's reads would be."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
from gguf_synth import write_synthetic_gguf
from support.mount import one_line_error, run_modelfs
from support.proxy import Proxy

from modelfs.blobs.blobcache import BlobCache
from modelfs.formats.chunks import CHUNK_BYTES
from modelfs.formats.gguf import read_gguf_file
from modelfs.formats.names import parse_name


@pytest.fixture
def via(proxy: Proxy) -> Iterator[Proxy]:
    """The session registry behind a recording proxy, its records cleared."""
    proxy.reset()
    yield proxy


def show_json(name: str, cache: Path, *extra: str) -> dict:
    return json.loads(run_modelfs("show", name, "--json", "--cache", str(cache), *extra).stdout)


def model_bytes_fetched(proxy: Proxy, digest: str) -> int:
    return sum(
        r.body_bytes for r in proxy.blob_records() if digest.removeprefix("sha256:") in r.path
    )


def test_cold_show_fetches_the_header_only_and_matches_gguf_py(
    via: Proxy, smollm2_pushed: str, smollm2_gguf: Path, tmp_path: Path
) -> None:
    name = smollm2_pushed.replace(smollm2_pushed.split("/")[0], via.host, 1)
    cache = tmp_path / "cache"
    doc = show_json(name, cache, "--ctx", "2048")

    ref = gguf.GGUFReader(smollm2_gguf)
    model = doc["model"]
    assert model["architecture"] == ref.fields["general.architecture"].contents() == "llama"
    assert model["parameter_count"] == sum(int(t.n_elements) for t in ref.tensors)
    assert model["tensor_count"] == len(ref.tensors) == 272
    assert model["context_length"] == ref.fields["llama.context_length"].contents() == 8192
    assert model["embedding_length"] == ref.fields["llama.embedding_length"].contents()
    assert model["block_count"] == ref.fields["llama.block_count"].contents()
    assert model["quantization"] == "Q4_1"
    assert model["chat_template"] is True
    assert model["weights_bytes"] == smollm2_gguf.stat().st_size - ref.data_offset

    assert doc["header"] == {
        "verification": "index",
        "checked": True,
        "bytes": ref.data_offset,
        "chunks_read": 1,
    }
    assert [m["context"] for m in doc["memory"]] == [8192, 2048]
    assert doc["memory"][0]["kv_cache_bytes"] == 180 << 20  # what llama.cpp allocates at 8192
    assert doc["memory"][1]["kv_cache_bytes"] == 45 << 20

    layers = {layer["file"]: layer for layer in doc["layers"]}
    weights = layers["model.gguf"]
    assert weights["media_type"] == "application/vnd.ollama.image.model"
    assert weights["size_bytes"] == smollm2_gguf.stat().st_size
    assert weights["verification"] == "index"
    # The one chunk the header spans was fetched, and (the model not being in the cache)
    # not kept.
    assert model_bytes_fetched(via, weights["digest"]) == CHUNK_BYTES
    assert weights["cached_bytes"] == 0
    assert doc["parameters"] == {"temperature": 0.2}
    assert doc["system"] == "You are helpful."


def test_show_of_a_model_not_in_the_cache_leaves_nothing_behind(
    smollm2_pushed: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    doc = show_json(smollm2_pushed, cache)
    assert doc["model"]["architecture"] == "llama" and doc["manifest_from"] != "cache"
    ls = run_modelfs("ls", "--cache", str(cache))
    assert ls.stdout == "", f"show left a model listed by ls:\n{ls.stdout}"
    left = [
        p.relative_to(cache)
        for d in ("blobs", "manifests", ".modelfs/manifests", ".modelfs/partial")
        for p in (cache / d).rglob("*")
        if p.is_file() and p.suffix != ".lock"  # empty: which process works on a blob
    ]
    assert left == [], f"show left files in the cache: {left}"
    assert "total" in (du := run_modelfs("du", "--cache", str(cache)).stdout)
    assert du.splitlines()[-1].split()[1:3] == ["0", "B"], du


def test_show_of_a_model_in_the_cache_keeps_what_it_fetched(
    via: Proxy, registry, smollm2_pushed: str, tmp_path: Path
) -> None:
    # The model partly in the cache (its manifest pending, as a mount's reads leave it).
    name = parse_name(smollm2_pushed.replace(registry.host, via.host, 1))
    request = urllib.request.Request(
        f"{registry.url}/v2/{name.repository}/manifests/{name.tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request) as r:
        raw = r.read()
    cache = tmp_path / "cache"
    blobs = BlobCache(cache)
    blobs.prepare()
    blobs.write_manifest(name, raw, pending=True)
    doc = show_json(str(name), cache)
    assert doc["manifest_from"] == "cache"
    weights = next(layer for layer in doc["layers"] if layer["file"] == "model.gguf")
    assert weights["cached_bytes"] == CHUNK_BYTES
    via.reset()
    assert show_json(str(name), cache)["model"] == doc["model"]
    assert model_bytes_fetched(via, weights["digest"]) == 0, "a second show fetched again"


def test_text_output_names_the_facts(smollm2_pushed: str, tmp_path: Path) -> None:
    out = run_modelfs("show", smollm2_pushed, "--cache", str(tmp_path / "c")).stdout
    lines = [line.split() for line in out.splitlines()]
    assert ["architecture", "llama"] in lines
    assert ["parameters", "134.52M"] in lines
    assert ["quantization", "Q4_1"] in lines
    assert ["context", "length", "8192"] in lines
    assert ["chat", "template", "yes"] in lines
    assert "each chunk checked against the model's chunk index" in out
    assert "8192 tokens" in out and "= 285.3 MB" in out


def test_a_model_checked_only_whole_shows_an_unchecked_header_and_caches_none_of_it(
    via: Proxy, smollm2_noindex_pushed: str, tmp_path: Path
) -> None:
    name = smollm2_noindex_pushed.replace(smollm2_noindex_pushed.split("/")[0], via.host, 1)
    cache = tmp_path / "cache"
    doc = show_json(name, cache)
    assert doc["model"]["architecture"] == "llama"
    assert doc["header"]["verification"] == "whole"
    assert doc["header"]["checked"] is False
    weights = next(layer for layer in doc["layers"] if layer["file"] == "model.gguf")
    assert weights["cached_bytes"] == 0
    assert model_bytes_fetched(via, weights["digest"]) == CHUNK_BYTES
    # (Lock files are no bytes: those of the template and params blobs show read stay.)
    kept = [p for p in (cache / ".modelfs" / "partial").glob("*") if p.suffix != ".lock"]
    assert not kept, "unchecked bytes were kept"
    out = run_modelfs("show", name, "--cache", str(cache)).stdout
    assert "NOT checked" in out


def test_a_header_over_two_chunks_fetches_two_chunks_and_no_more(
    via: Proxy, registry, tmp_path: Path
) -> None:
    gguf_path = tmp_path / "big-vocab.gguf"
    write_synthetic_gguf(gguf_path, 48 << 20, vocab_tokens=300_000, seed=5)
    header = read_gguf_file(gguf_path).header_bytes
    assert CHUNK_BYTES < header < 2 * CHUNK_BYTES
    name = f"{registry.host}/library/bigvocab:1"
    src = tmp_path / "src"
    run_modelfs("create", name, "--gguf", str(gguf_path), "--cache", str(src))
    run_modelfs("push", name, "--cache", str(src))
    shutil.rmtree(src)

    doc = show_json(name.replace(registry.host, via.host, 1), tmp_path / "cache")
    assert doc["header"]["bytes"] == header
    assert doc["header"]["chunks_read"] == 2
    weights = next(layer for layer in doc["layers"] if layer["file"] == "model.gguf")
    assert model_bytes_fetched(via, weights["digest"]) == 2 * CHUNK_BYTES
    assert doc["model"]["architecture"] == "llama"


def test_bad_names_and_missing_models_are_one_line_errors(registry, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    err = one_line_error(run_modelfs("show", "NOT A NAME!", "--cache", cache, check=False))
    assert "name" in err
    missing = run_modelfs(
        "show", f"{registry.host}/library/nothing:here", "--cache", cache, check=False
    )
    assert "not found" in one_line_error(missing)
    bad_ctx = run_modelfs(
        "show", f"{registry.host}/library/x:y", "--ctx", "0", "--cache", cache, check=False
    )
    assert bad_ctx.returncode == 2  # a usage error
    assert bad_ctx.stderr == "modelfs: --ctx 0: a context length is a positive number of tokens\n"
