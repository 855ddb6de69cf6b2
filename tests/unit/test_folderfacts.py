"""modelfs.formats.folderfacts: show's facts for a safetensors model, from headers and config.json."""

from __future__ import annotations

from support.modelformats import dmr_v02, lay_out, ollama_tensors

from modelfs.formats.files import BlobBytes, Needs
from modelfs.formats.folderfacts import facts_of
from modelfs.formats.manifest import parse_manifest


def facts(art, tree):
    known = BlobBytes()
    asked = 0
    for _ in range(4):
        found = facts_of(tree, known)
        if not isinstance(found, Needs):
            return found, asked
        for r in found.reads:
            known.add(r.digest, r.offset, art.read(r.digest, r.offset, r.length))
            asked += r.length
    raise AssertionError("facts_of kept asking")


def test_minilm_facts_from_a_dmr_folder_read_only_headers(minilm):
    art = dmr_v02(minilm)
    tree, _, _ = lay_out(art)
    got, asked = facts(art, tree)
    assert got.architecture == "BertModel" and got.model_type == "bert"
    assert got.tensor_count == 104
    assert got.parameter_count == 22_713_728  # safetensors.numpy: sum of .size
    assert got.weights_bytes == 90_856_960
    assert got.dtypes == ("F32", "I64")
    assert got.context_length == 512
    assert asked < 64 << 10  # 8 bytes + the header + config.json, not 90 MB of weights


def test_ollama_tensor_models_have_the_same_facts_without_fetching_a_header(minilm):
    art = ollama_tensors(minilm)
    tree, _, _ = lay_out(art)
    got, asked = facts(art, tree)
    reference, _ = facts(dmr_v02(minilm), lay_out(dmr_v02(minilm))[0])
    assert got == reference
    config = next(
        layer for layer in parse_manifest(art.manifest).layers if layer.name == "config.json"
    )
    assert asked == config.size  # the synthesized header is in memory
