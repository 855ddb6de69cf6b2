"""A model shown as its files (``fs.lookups``, ``fs.directories`` over ``modeltree``): its
directories, what a re-resolved tag does to entries already listed or looked up, and the
extended attributes of its files (``fs.xattrs``)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from namespace_fakes import GGUF, HOST, Namespace, ollama_manifest
from support.modelformats import dmr_v02, quantized_folder

from modelfs.blobs.blobcache import XATTR_DIGEST, XATTR_MEDIA_TYPE, XATTR_VERIFY
from modelfs.errors import ModelfsError
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, parse_manifest
from modelfs.fs.tree import TreeError

REPO = f"{HOST}/ai/folder"
TAG = f"{REPO}/latest"


def folder_manifest(ns: Namespace, tmp_path: Path, *, pooling: bool):
    folder = quantized_folder(tmp_path / f"folder-{pooling}")
    if pooling:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    art = dmr_v02(folder)
    ns.blobs.add(*art.blobs.values())
    return parse_manifest(art.manifest)


@pytest.fixture
def ns(tmp_path: Path) -> Namespace:
    ns = Namespace(tmp_path, lookup_ttl_seconds=0.0)  # every lookup resolves again
    ns.resolver.set(f"{REPO}:latest", folder_manifest(ns, tmp_path, pooling=True))
    return ns


async def test_a_models_directories_are_directories_of_its_files(ns: Namespace) -> None:
    tag = await ns.path(TAG)
    fh = await ns.tree.opendir(tag)
    assert [n for n, _ in ns.tree.readdir(fh, 0)[1]] == [
        ".modelfs",  # the manifest
        "1_Pooling",
        "config.json",
        "model.safetensors",
    ]
    sub = await ns.tree.lookup(tag, "1_Pooling")
    assert sub.is_dir
    assert (await ns.tree.lookup(tag, "1_Pooling")).inode == sub.inode
    f = await ns.tree.lookup(sub.inode, "config.json")
    fh = await ns.tree.open(f.inode)
    assert await ns.tree.read(fh, 0, 100) == b'{"pooling_mode_mean_tokens": true}'
    await ns.tree.release(fh)
    # Forgotten, a directory inside the model leaves the table with its key.
    ns.tree.forget(sub.inode, 2)
    assert not ns.tree.inodes.model_dirs
    assert (await ns.tree.lookup(tag, "1_Pooling")).inode != sub.inode


async def test_a_directory_the_tags_new_model_lacks_is_enoent(
    ns: Namespace, tmp_path: Path
) -> None:
    tag = await ns.path(TAG)
    sub = (await ns.tree.lookup(tag, "1_Pooling")).inode
    ns.resolver.set(f"{REPO}:latest", folder_manifest(ns, tmp_path, pooling=False))
    with pytest.raises(TreeError) as e:
        await ns.tree.lookup(sub, "config.json")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(TreeError) as e:
        await ns.tree.opendir(sub)
    assert e.value.errno == errno.ENOENT
    assert ns.tree.entry(sub, "config.json") is None


async def test_an_entry_listed_before_its_tag_moved_is_not_given(
    ns: Namespace, tmp_path: Path
) -> None:
    # A readdir racing a re-resolution: the name listed is gone, the kernel gets no entry.
    tag = await ns.path(TAG)
    fh = await ns.tree.opendir(tag)
    assert "1_Pooling" in [n for n, _ in ns.tree.readdir(fh, 0)[1]]
    ns.resolver.set(f"{REPO}:latest", folder_manifest(ns, tmp_path, pooling=False))
    assert await ns.path(TAG) == tag  # looked up again: the other model
    assert [n for n, _ in ns.tree.readdir(fh, 0)[1]][1] == "1_Pooling"  # the listing's
    assert ns.tree.entry(tag, "1_Pooling") is None, "an entry of the model the tag left"
    entry = ns.tree.entry(tag, "config.json")
    assert entry is not None and not entry.is_dir


async def test_a_files_xattrs_say_which_blob_it_is(tmp_path: Path) -> None:
    ns = Namespace(tmp_path)
    manifest = ollama_manifest()
    ns.resolver.set(f"{HOST}/ai/model:latest", manifest)
    tag = await ns.path(f"{HOST}/ai/model/latest")
    f = await ns.path(f"{HOST}/ai/model/latest/model.gguf")
    digest = str(Digest.of_bytes(GGUF)).encode()
    assert await ns.tree.getxattr(f, XATTR_DIGEST) == digest
    assert await ns.tree.getxattr(f, XATTR_MEDIA_TYPE) == MEDIA_TYPE_MODEL.encode()
    assert await ns.tree.getxattr(f, XATTR_VERIFY) == b"index"
    assert {XATTR_DIGEST, XATTR_MEDIA_TYPE, XATTR_VERIFY} <= set(ns.tree.listxattr(f))
    # A tag directory's are its manifest's.
    assert await ns.tree.getxattr(tag, XATTR_DIGEST) == str(manifest.digest).encode()
    assert XATTR_VERIFY not in ns.tree.listxattr(tag)
    for inode, name in ((f, "user.other"), (tag, XATTR_VERIFY)):
        with pytest.raises(ModelfsError) as e:
            await ns.tree.getxattr(inode, name)
        assert isinstance(e.value, TreeError) and e.value.errno == errno.ENODATA
