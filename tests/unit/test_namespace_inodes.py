"""The namespace's inode table (``fs.nodes.Inodes``) through the tree: the kernel's lookup
counts, forget, and which inode a file's name reaches as what vouches for it changes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing
from namespace_fakes import GGUF, HOST, Namespace, ollama_manifest

from modelfs.errors import ModelNotFound
from modelfs.fs.nodes import ROOT_INODE
from modelfs.fs.tree import TreeError

TAG = f"{HOST}/ai/model/latest"
FILE = f"{TAG}/model.gguf"


def gone(ns: Namespace, inode: int) -> bool:
    try:
        ns.tree.attr(ns.tree.inodes.node(inode))
    except TreeError as e:
        assert e.errno == errno.ENOENT
        return True
    return False


@pytest.fixture
def ns(tmp_path: Path) -> Namespace:
    ns = Namespace(tmp_path)
    ns.resolver.set(f"{HOST}/ai/model:latest", ollama_manifest())
    ns.blobs.add(GGUF)
    return ns


async def test_an_inode_is_forgotten_only_when_its_last_lookup_is(ns: Namespace) -> None:
    a = await ns.path(FILE)
    assert await ns.path(FILE) == a
    tag = await ns.path(TAG)  # a third lookup of the tag directory: 3 references
    ns.tree.forget(a, 1)
    assert not gone(ns, a), "the kernel still holds one lookup of the file, its inode went"
    ns.tree.forget(a, 1)
    assert gone(ns, a), "a file the kernel forgot entirely stayed in the table"
    ns.tree.forget(tag, 2)
    assert not gone(ns, tag)
    ns.tree.forget(tag, 1)
    assert gone(ns, tag)


async def test_a_forgotten_inode_number_is_never_given_again(ns: Namespace) -> None:
    seen: set[int] = set()
    for _ in range(5):
        inode = await ns.path(FILE)
        assert inode not in seen, f"inode {inode} was given to a second file"
        seen.add(inode)
        for i in [inode, *ns.tree.inodes.dirs.values()]:
            ns.tree.forget(i, ns.tree.inodes.node(i).lookups)
    # and the table keeps no key that leads to the forgotten nodes
    assert set(ns.tree.inodes.nodes) == {ROOT_INODE}
    assert not ns.tree.inodes.dirs and not ns.tree.inodes.files


async def test_the_root_is_never_forgotten(ns: Namespace) -> None:
    ns.tree.forget(ROOT_INODE, 10)
    assert not gone(ns, ROOT_INODE)
    assert (await ns.tree.lookup(ROOT_INODE, HOST)).is_dir


async def test_a_readdir_entry_counts_as_a_lookup_only_if_the_kernel_took_it(
    ns: Namespace,
) -> None:
    tag = await ns.path(TAG)
    entry = ns.tree.entry(tag, "model.gguf")
    assert entry is not None
    ns.tree.remember(entry.inode)
    assert ns.tree.entry(tag, "model.gguf").inode == entry.inode  # type: ignore[union-attr]
    ns.tree.drop_unreferenced(entry.inode)  # the second, not taken, is undone
    assert not gone(ns, entry.inode), "a refused readdir entry dropped one the kernel holds"
    ns.tree.forget(entry.inode, 1)
    assert gone(ns, entry.inode)

    untaken = ns.tree.entry(tag, "params.json")
    assert untaken is None  # not in this model
    untaken = ns.tree.entry(tag, "manifest.json")
    assert untaken is not None
    ns.tree.drop_unreferenced(untaken.inode)
    assert gone(ns, untaken.inode), "a readdir entry the kernel did not take was kept"


async def test_an_open_file_outlives_its_last_lookup_until_released(ns: Namespace) -> None:
    a = await ns.path(FILE)
    fh = await ns.tree.open(a)
    ns.tree.forget(a, 1)
    assert not gone(ns, a), "forget of an open file's inode dropped it while open"
    assert await ns.tree.read(fh, 0, 4) == GGUF[:4]
    await ns.tree.release(fh)
    assert gone(ns, a), "a file released after its last forget stayed in the table"
    assert ns.closed == 1


async def test_directory_names_reach_one_inode_whatever_their_case(ns: Namespace) -> None:
    tag = await ns.path(TAG)
    assert await ns.path(f"{HOST}/AI/Model/LATEST") == tag
    assert await ns.path(f"{HOST.upper()}/aI/MODEL/Latest") == tag
    assert await ns.path(f"{HOST}/AI/Model/LATEST/model.gguf") == await ns.path(FILE)


async def test_a_file_keeps_its_inode_while_its_tag_resolves_to_the_same_manifest(
    tmp_path: Path,
) -> None:
    ns = Namespace(tmp_path, lookup_ttl_seconds=0.0)  # every lookup resolves again
    ns.resolver.set(f"{HOST}/ai/model:latest", ollama_manifest())
    first = await ns.path(FILE)
    resolves = len(ns.resolver.resolves)
    assert await ns.path(FILE) == first
    assert len(ns.resolver.resolves) > resolves, "the tag was not resolved again"


async def test_a_file_gets_another_inode_when_its_tag_moves_to_another_manifest(
    ns: Namespace,
) -> None:
    old = await ns.path(FILE)
    # Same blob, another manifest: until published, its pages are vouched for by another
    # manifest, so they must not share the kernel's page cache.
    ns.resolver.set(f"{HOST}/ai/model:latest", ollama_manifest(config=b'{"v":2}'))
    new = await ns.path(FILE)
    assert new != old, "a tag moved to another manifest kept the old manifest's file inode"
    assert not gone(ns, old), "the kernel still holds the old inode"
    assert ns.tree.inodes_of(ns.tree.inodes.node(old).layer.digest) == [old, new]  # type: ignore[union-attr]


async def test_once_published_every_manifest_naming_a_blob_shares_one_inode(
    ns: Namespace,
) -> None:
    ns.resolver.set(f"{HOST}/ai/other:latest", ollama_manifest(config=b'{"v":2}'))
    a = await ns.path(FILE)
    b = await ns.path(f"{HOST}/ai/other/latest/model.gguf")
    assert a != b
    ns.publish(GGUF)
    shared = await ns.path(FILE)
    assert await ns.path(f"{HOST}/ai/other/latest/model.gguf") == shared
    assert shared not in (a, b)
    # The old unpublished inode forgotten must not take the published key with it.
    ns.tree.forget(a, 1)
    assert await ns.path(FILE) == shared


async def test_a_readdir_entry_of_a_tag_being_looked_up_is_the_same_inode(
    ns: Namespace,
) -> None:
    # A listing of the model directory (readdirplus) while a lookup of one of its tags waits
    # for the registry: one directory, one inode, whichever the kernel keeps.
    model = await ns.path(f"{HOST}/ai/model")
    ns.resolver.gate = trio.Event()
    got: dict[str, int] = {}

    async def look() -> None:
        got["lookup"] = (await ns.tree.lookup(model, "latest")).inode

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked()
        assert ns.resolver.resolves, "the lookup did not reach the registry"
        entry = ns.tree.entry(model, "latest")
        assert entry is not None
        ns.tree.remember(entry.inode)
        got["entry"] = entry.inode
        ns.resolver.gate.set()
    assert got["lookup"] == got["entry"], "a tag directory had two inodes at once"
    ns.tree.forget(got["entry"], 1)
    assert (await ns.tree.lookup(model, "latest")).inode == got["lookup"]


async def test_a_tag_that_does_not_resolve_leaves_nothing_in_the_table(ns: Namespace) -> None:
    model = await ns.path(f"{HOST}/ai/model")
    before = set(ns.tree.inodes.nodes)
    for _ in range(3):
        with pytest.raises(ModelNotFound):
            await ns.tree.lookup(model, "missing")
    assert set(ns.tree.inodes.nodes) == before
    assert ns.tree.inodes.named_dir(ns.tree.inodes.node(model), "missing") is None
