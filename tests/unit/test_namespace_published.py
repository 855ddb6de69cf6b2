"""Blobs complete in ``blobs/`` and the links to them (``fs.published``, ``fs.lookups``):
a complete blob's file is a symlink to the right target; once the blob leaves ``blobs/``
the same name is a file served by the daemon again."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from namespace_fakes import GGUF, HOST, Namespace, ollama_manifest

from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, Layer
from modelfs.fs.published import Published
from modelfs.fs.tree import TreeError

TAG = f"{HOST}/ai/model/latest"
FILE = f"{TAG}/model.gguf"
BASE = "/run/modelfs-blobs/"


@pytest.fixture
def ns(tmp_path: Path) -> Namespace:
    ns = Namespace(tmp_path)
    ns.resolver.set(f"{HOST}/ai/model:latest", ollama_manifest())
    ns.blobs.add(GGUF)
    ns.tree.enable_links(BASE)
    return ns


async def test_a_complete_blob_is_a_link_to_its_file_in_blobs(ns: Namespace) -> None:
    digest = ns.publish(GGUF)
    attr = await ns.tree.lookup(await ns.path(TAG), "model.gguf")
    assert attr.is_link, "a file whose blob is complete in blobs/ was not a link"
    target = ns.tree.readlink(attr.inode)
    assert target == BASE + digest.filename
    assert attr.size == len(target.encode())
    assert attr.entry_seconds <= 1.0, "the kernel may keep a link to a removed blob for long"
    with pytest.raises(TreeError) as e:
        await ns.tree.open(attr.inode)
    assert e.value.errno == errno.ELOOP


async def test_an_incomplete_blob_is_a_file_of_the_daemon(ns: Namespace) -> None:
    digest = Digest.of_bytes(GGUF)
    # A file of the wrong size under the blob's name is not the blob.
    ns.cache.blob_path(digest).write_bytes(GGUF[:-1])
    attr = await ns.tree.lookup(await ns.path(TAG), "model.gguf")
    assert not attr.is_link and attr.size == len(GGUF)
    with pytest.raises(TreeError) as e:
        ns.tree.readlink(attr.inode)
    assert e.value.errno == errno.EINVAL


async def test_a_blob_leaving_blobs_stops_being_a_link_at_the_next_lookup(
    ns: Namespace,
) -> None:
    digest = ns.publish(GGUF)
    tag = await ns.path(TAG)
    link = await ns.tree.lookup(tag, "model.gguf")
    assert link.is_link
    ns.cache.blob_path(digest).unlink()  # ollama rm, modelfs unlink: no notice needed
    attr = await ns.tree.lookup(tag, "model.gguf")
    assert not attr.is_link, "a lookup gave a link to a blob no longer in blobs/"
    assert attr.inode != link.inode
    fh = await ns.tree.open(attr.inode)
    assert await ns.tree.read(fh, 0, 1 << 20) == GGUF


async def test_the_entries_a_blobs_removal_changes_are_those_that_name_it(
    ns: Namespace,
) -> None:
    digest = ns.publish(GGUF)
    ns.resolver.set(f"{HOST}/ai/other:v1", ollama_manifest(config=b'{"v":2}'))
    tag = await ns.path(TAG)
    other = await ns.path(f"{HOST}/ai/other/v1")
    assert (await ns.tree.lookup(tag, "model.gguf")).is_link
    entries = ns.tree.blob_removed(digest)
    assert sorted(entries) == sorted([(tag, "model.gguf"), (other, "model.gguf")])
    assert ns.tree.blob_removed(digest) == [], "a blob removed twice was invalidated twice"
    # Published again (the watcher saw it come back): the same entries.
    assert sorted(ns.tree.blob_published(digest)) == sorted(entries)
    assert sorted(ns.tree.forget_published()) == sorted(entries)
    assert ns.tree.forget_published() == []


async def test_a_link_target_climbs_out_of_the_models_directories() -> None:
    layer = Layer(Digest.of_bytes(GGUF), MEDIA_TYPE_MODEL, len(GGUF))
    published = Published(None, in_thread=None)  # type: ignore[arg-type]
    published.enable_links("../../../../.blobs/")
    assert published.link_target(layer, 0) == "../../../../.blobs/" + layer.digest.filename
    assert published.link_target(layer, 2) == "../../../../../../.blobs/" + layer.digest.filename
    published.enable_links(BASE)  # absolute: the same from any depth
    assert published.link_target(layer, 3) == BASE + layer.digest.filename


async def test_without_links_a_complete_blob_is_one_file_of_the_daemon(tmp_path: Path) -> None:
    ns = Namespace(tmp_path)
    ns.resolver.set(f"{HOST}/ai/model:latest", ollama_manifest())
    ns.publish(GGUF)
    attr = await ns.tree.lookup(await ns.path(TAG), "model.gguf")
    assert not attr.is_link
    assert ns.tree.inodes.files.get(Digest.of_bytes(GGUF)) == attr.inode


async def test_a_listing_gives_links_for_complete_blobs(ns: Namespace) -> None:
    tag = await ns.path(TAG)
    ns.publish(GGUF)  # after the lookup: the listing itself must look in blobs/
    fh = await ns.tree.opendir(tag)
    assert "model.gguf" in [n for n, _ in ns.tree.readdir(fh, 0)[1]]
    entry = ns.tree.entry(tag, "model.gguf")
    assert entry is not None and entry.is_link, "a listed complete blob was not a link"
    config = ns.tree.entry(tag, "config.json")
    assert config is not None and not config.is_link  # not in blobs/
