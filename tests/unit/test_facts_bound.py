"""The GGUF and safetensors facts a long-running mount keeps (``fs.facts``) stay bounded.

A daemon that shows thousands of models over its life kept the facts of every GGUF file
and safetensors model it was ever asked about; it keeps the last ``max_entries``, and a
forgotten one is read again (from the same header) when next asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

from gguf_synth import write_synthetic_gguf
from support.modelformats import dmr_v02, quantized_folder

from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer, Manifest, parse_manifest
from modelfs.formats.modelfacts import XATTR_PREFIX as GGUF
from modelfs.formats.names import Name, parse_name
from modelfs.formats.safetensors import XATTR_PREFIX as SAFETENSORS
from modelfs.fs.access import OWNER
from modelfs.fs.facts import MAX_FACTS_ENTRIES, Facts
from modelfs.fs.modeltree import Layouts
from modelfs.fs.nodes import Node
from modelfs.fs.published import Published
from modelfs.fs.resolver import Resolved

BOUND = 4
MODELS = 3 * BOUND
GGUF_BYTES = 64 << 10


class Handle:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]

    async def close(self) -> None:
        return None


class MemoryBlobs:
    """The blob door over bytes in memory, every blob checkable by range; counts opens."""

    chunk_bytes = 16 << 10

    def __init__(self) -> None:
        self.by_digest: dict[str, bytes] = {}
        self.opens: dict[str, int] = {}

    def add(self, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        self.by_digest[str(digest)] = data
        return digest

    async def verification(self, name, manifest, layer, *, anonymous=False) -> str:
        return "index"

    async def open(self, name, manifest, layer, *, anonymous=False, readahead=True) -> Handle:
        key = str(layer.digest)
        self.opens[key] = self.opens.get(key, 0) + 1
        return Handle(self.by_digest[key])


def facts_over(blobs: MemoryBlobs) -> Facts:
    # Nothing is published here: no cache is asked.
    published = Published(None, in_thread=None)  # type: ignore[arg-type]
    return Facts(blobs, Layouts(), published, max_entries=BOUND)  # type: ignore[arg-type]


def ollama_manifest(layer: dict) -> Manifest:
    config = {"mediaType": "application/vnd.docker.container.image.v1+json"}
    config |= {"size": 2, "digest": str(Digest.of_bytes(b"{}"))}
    return parse_manifest(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": config,
                "layers": [layer],
            }
        ).encode()
    )


def gguf_file(blobs: MemoryBlobs, tmp_path: Path, i: int) -> Node:
    """The node of model ``i``'s GGUF file: a header of its own (``general.name``)."""
    path = tmp_path / f"m{i}.gguf"
    write_synthetic_gguf(path, GGUF_BYTES, seed=i, vocab_tokens=16, name=f"model-{i}")
    digest = blobs.add(path.read_bytes())
    manifest = ollama_manifest(
        {"mediaType": MEDIA_TYPE_MODEL, "size": GGUF_BYTES, "digest": str(digest)}
    )
    layer: Layer = manifest.layers[0]
    source = parse_name(f"127.0.0.1:5000/ai/model{i}:latest")
    return Node(100 + i, 1, "model.gguf", False, layer=layer, source=source, manifest=manifest)


async def test_gguf_facts_stay_at_their_bound_after_many_models(tmp_path: Path) -> None:
    blobs = MemoryBlobs()
    facts = facts_over(blobs)
    files = [gguf_file(blobs, tmp_path, i) for i in range(MODELS)]
    for i, node in enumerate(files):
        assert (await facts.gguf(node, OWNER))[GGUF + "name"] == f"model-{i}".encode()
        assert len(facts.gguf_facts) <= BOUND, (
            f"the mount kept the GGUF facts of {len(facts.gguf_facts)} files after {i + 1}"
            f" models, past its bound of {BOUND}"
        )
    assert len(facts.gguf_facts) == BOUND
    # The recent ones are kept (not read again), the first ones are not.
    assert facts.gguf_known(files[-1]) is not None
    assert facts.gguf_known(files[0]) is None
    assert 0 < BOUND < MAX_FACTS_ENTRIES <= 1024


async def test_forgotten_gguf_facts_are_read_again_from_the_same_header(tmp_path: Path) -> None:
    blobs = MemoryBlobs()
    facts = facts_over(blobs)
    files = [gguf_file(blobs, tmp_path, i) for i in range(MODELS)]
    first = await facts.gguf(files[0], OWNER)
    opened = blobs.opens[str(files[0].layer.digest)]  # type: ignore[union-attr]
    assert await facts.gguf(files[0], OWNER) is first  # kept: the header is not read again
    assert blobs.opens[str(files[0].layer.digest)] == opened  # type: ignore[union-attr]
    for node in files[1:]:
        await facts.gguf(node, OWNER)
    assert facts.gguf_known(files[0]) is None
    again = await facts.gguf(files[0], OWNER)
    assert blobs.opens[str(files[0].layer.digest)] > opened  # type: ignore[union-attr]
    assert again == first and again[GGUF + "name"] == b"model-0"
    assert facts.gguf_known(files[0]) == first


def folder_model(blobs: MemoryBlobs, tmp_path: Path, i: int) -> Node:
    """Tag directory of a model of safetensors files whose config says its own context."""
    folder = quantized_folder(tmp_path / f"folder{i}")
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 1000 + i})
    )
    art = dmr_v02(folder)
    for data in art.blobs.values():
        blobs.add(data)
    manifest = parse_manifest(art.manifest)
    name: Name = parse_name(f"127.0.0.1:5000/ai/folder{i}:latest")
    return Node(200 + i, 1, "latest", True, parts=name.parts, resolved=Resolved(name, manifest, 0))


async def test_safetensors_facts_stay_at_their_bound_and_are_read_again(tmp_path: Path) -> None:
    blobs = MemoryBlobs()
    facts = facts_over(blobs)
    models = [folder_model(blobs, tmp_path, i) for i in range(MODELS)]
    first = await facts.folder(models[0], OWNER)
    assert first[SAFETENSORS + "context_length"] == b"1000"
    for i, node in enumerate(models[1:], start=1):
        assert (await facts.folder(node, OWNER))[SAFETENSORS + "context_length"] == (
            str(1000 + i).encode()
        )
        assert len(facts.folder_facts) <= BOUND, (
            f"the mount kept the safetensors facts of {len(facts.folder_facts)} models"
        )
    assert facts.folder_known(models[0]) is None
    assert await facts.folder(models[0], OWNER) == first
