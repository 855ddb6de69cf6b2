"""Open files of the namespace (``fs.openfiles``): handles, reads, release, and a layout
its checked blobs contradict, dropped and laid out again."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import trio
import trio.testing
from namespace_fakes import GGUF, HOST, Namespace, ollama_manifest
from support.modelformats import ollama_tensors, quantized_folder

from modelfs.errors import LayoutMismatch, errno_for
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import parse_manifest
from modelfs.fs.tree import TreeError

TAG = f"{HOST}/ai/model/latest"
FILE = f"{TAG}/model.gguf"
TENSORS = f"{HOST}/ai/tensors/latest"


@pytest.fixture
def ns(tmp_path: Path) -> Namespace:
    ns = Namespace(tmp_path)
    ns.resolver.set(f"{HOST}/ai/model:latest", ollama_manifest())
    ns.blobs.add(GGUF)
    return ns


def tensors_model(ns: Namespace, tmp_path: Path):
    """A model of Ollama's tensor blobs: its ``model.safetensors`` is assembled from them."""
    art = ollama_tensors(quantized_folder(tmp_path / "folder"))
    ns.blobs.add(*art.blobs.values())
    manifest = parse_manifest(art.manifest)
    name = ns.resolver.set(f"{HOST}/ai/tensors:latest", manifest)
    return name, manifest


async def read_all(ns: Namespace, fh: int, size: int) -> bytes:
    out = b""
    while len(out) < size:
        data = await ns.tree.read(fh, len(out), 64 << 10)
        assert data, f"a read at {len(out)} of {size} bytes returned nothing"
        out += data
    return out


async def test_a_read_after_release_is_ebadf(ns: Namespace) -> None:
    f = await ns.path(FILE)
    fh = await ns.tree.open(f)
    assert await ns.tree.read(fh, 2, 5) == GGUF[2:7]
    assert ns.tree.open_digests() == {Digest.of_bytes(GGUF)}
    await ns.tree.release(fh)
    assert ns.blobs.log == ["close"], "release did not close the blob's handle"
    with pytest.raises(TreeError) as e:
        await ns.tree.read(fh, 0, 4)
    assert e.value.errno == errno.EBADF
    assert ns.tree.open_digests() == set()
    await ns.tree.release(fh)  # released twice: harmless, closed once
    assert ns.blobs.log == ["close"] and ns.closed == 1


async def test_handles_of_one_file_are_their_own(ns: Namespace) -> None:
    f = await ns.path(FILE)
    a, b = await ns.tree.open(f), await ns.tree.open(f)
    assert a != b
    await ns.tree.release(a)
    assert await ns.tree.read(b, 0, 4) == GGUF[:4], "release of one handle closed another"
    assert ns.tree.open_digests() == {Digest.of_bytes(GGUF)}
    await ns.tree.release(b)


async def test_a_directory_does_not_open_as_a_file(ns: Namespace) -> None:
    with pytest.raises(TreeError) as e:
        await ns.tree.open(await ns.path(TAG))
    assert e.value.errno == errno.EISDIR


async def test_an_open_records_the_model_again(ns: Namespace) -> None:
    # Removed from the cache since its lookup (modelfs rm, eviction): recorded at open.
    fh = await ns.tree.open(await ns.path(FILE))
    assert ns.completion.recorded == [f"{HOST}/ai/model:latest"]
    await ns.tree.release(fh)


async def test_a_layout_its_blobs_contradict_is_dropped_and_laid_out_again(
    ns: Namespace, tmp_path: Path
) -> None:
    name, manifest = tensors_model(ns, tmp_path)
    key = (name.repository_key, manifest.digest)
    layouts = ns.tree.directories.layouts
    tag = await ns.path(TENSORS)
    attr = await ns.tree.lookup(tag, "model.safetensors")
    node = ns.tree.inodes.node(attr.inode)
    assert node.model_file is not None and node.layer is None, "not a file over extents"
    fh = await ns.tree.open(attr.inode)
    good = await read_all(ns, fh, attr.size)
    await ns.tree.release(fh)

    ns.blobs.refute = True
    fh = await ns.tree.open(attr.inode)
    with pytest.raises(LayoutMismatch) as e:
        await ns.tree.read(fh, 0, 4)
    assert errno_for(e.value) == errno.EIO
    assert layouts.tree(key) is None, "a layout its checked blobs contradict was kept"
    tag_node = ns.tree.inodes.node(tag)
    assert tag_node.resolved is not None and tag_node.resolved.at == -math.inf
    await ns.tree.release(fh)

    # The next open lays the model out again, and reads what the blobs say.
    ns.blobs.refute = False
    fh = await ns.tree.open(attr.inode)
    assert layouts.tree(key) is not None, "the next open did not lay the model out again"
    assert await read_all(ns, fh, attr.size) == good
    await ns.tree.release(fh)
    # and the tag directory resolves again at its next lookup, within its TTL
    resolves = len(ns.resolver.resolves)
    await ns.tree.lookup(tag, "config.json")
    assert len(ns.resolver.resolves) == resolves + 1
    # only once: then it is fresh again
    await ns.tree.lookup(tag, "config.json")
    assert len(ns.resolver.resolves) == resolves + 1


async def test_a_file_whose_layout_is_no_longer_kept_is_laid_out_again_at_open(
    ns: Namespace, tmp_path: Path
) -> None:
    name, manifest = tensors_model(ns, tmp_path)
    key = (name.repository_key, manifest.digest)
    layouts = ns.tree.directories.layouts
    tag = await ns.path(TENSORS)
    attr = await ns.tree.lookup(tag, "model.safetensors")
    layouts.drop(key)  # as when more than MAX_LAYOUTS models were shown since
    fh = await ns.tree.opendir(tag)
    assert "model.safetensors" in [n for n, _ in ns.tree.readdir(fh, 0)[1]]
    opened = len(ns.blobs.opened)
    fh = await ns.tree.open(attr.inode)
    assert layouts.tree(key) is not None, "an open did not lay out a model no longer kept"
    assert len(ns.blobs.opened) > opened + 1, "laid out again without reading its blobs"
    assert len(await read_all(ns, fh, attr.size)) == attr.size
    await ns.tree.release(fh)


def tensors_of(ns: Namespace, folder: Path, value: float):
    """A model of Ollama's tensor blobs whose one tensor is all ``value``."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file({"w": np.full((16, 16), value, dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    art = ollama_tensors(folder)
    ns.blobs.add(*art.blobs.values())
    return parse_manifest(art.manifest)


async def test_a_file_looked_up_while_its_tag_moves_is_of_one_model(
    ns: Namespace, tmp_path: Path
) -> None:
    # A lookup of the tag (which resolves it again) and one of a file in it, at once: the
    # file is the old model's or the new one's, never the new file over the old manifest.
    ns.resolver.set(f"{HOST}/ai/tensors:latest", tensors_of(ns, tmp_path / "one", 1.0))
    model = await ns.path(f"{HOST}/ai/tensors")
    tag = (await ns.tree.lookup(model, "latest")).inode
    new = tensors_of(ns, tmp_path / "two", 2.0)
    ns.resolver.set(f"{HOST}/ai/tensors:latest", new)
    ns.completion.gate = trio.Event()  # recording the new manifest takes a while
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ns.tree.lookup, model, "latest")
        await trio.testing.wait_all_tasks_blocked()
        attr = await ns.tree.lookup(tag, "model.safetensors")
        ns.completion.gate.set()
    node = ns.tree.inodes.node(attr.inode)
    assert node.model_file is not None and node.manifest is not None
    layers = {layer.digest for layer in node.manifest.layers}
    assert set(node.model_file.digests) <= layers, "a file over blobs its manifest does not name"
    fh = await ns.tree.open(attr.inode)
    assert len(await read_all(ns, fh, attr.size)) == attr.size
    await ns.tree.release(fh)


async def test_a_fetchs_pages_go_only_to_the_open_files_the_door_says_read_it(
    ns: Namespace,
) -> None:
    # Another manifest's file of the same digest (another inode until published) reads
    # bytes another chunk index vouched for: it is not given this fetch's pages.
    ns.resolver.set(f"{HOST}/ai/other:latest", ollama_manifest(config=b'{"v":2}'))
    a = await ns.path(FILE)
    b = await ns.path(f"{HOST}/ai/other/latest/model.gguf")
    assert a != b
    fa, fb = await ns.tree.open(a), await ns.tree.open(b)
    handle_a, handle_b = ns.blobs.handles
    ns.blobs.reading["fetch"] = {handle_a}
    assert ns.tree.inodes_reading("fetch") == [a]
    ns.blobs.reading["fetch"] = {handle_a, handle_b}
    assert sorted(ns.tree.inodes_reading("fetch")) == sorted([a, b])
    assert ns.tree.inodes_reading("another") == []
    await ns.tree.release(fa)
    assert ns.tree.inodes_reading("fetch") == [b], "a released file was still given pages"
    await ns.tree.release(fb)


async def test_the_blobs_of_open_files_are_those_they_read(ns: Namespace, tmp_path: Path) -> None:
    _name, manifest = tensors_model(ns, tmp_path)
    attr = await ns.tree.lookup(await ns.path(TENSORS), "model.safetensors")
    tensors = {layer.digest for layer in manifest.layers if "tensor" in layer.media_type}
    fh = await ns.tree.open(attr.inode)
    assert ns.tree.open_digests() == tensors
    await ns.tree.release(fh)
    assert ns.tree.open_digests() == set()
