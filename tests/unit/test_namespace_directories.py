"""The namespace's directories (``fs.directories``, ``fs.lookups``): which names exist and
with which errno the others fail, what a tag directory shows, listings and their handles."""

from __future__ import annotations

import errno
import itertools
from pathlib import Path

import pytest
import trio
import trio.testing
from namespace_fakes import GGUF, HOST, Namespace, ollama_manifest

from modelfs.errors import ModelfsError, errno_for
from modelfs.formats.manifest import MEDIA_TYPE_TEMPLATE
from modelfs.formats.names import parse_name
from modelfs.fs.access import Access, Caller
from modelfs.fs.nodes import ROOT_INODE
from modelfs.fs.tree import TreeError

REPO = f"{HOST}/ai/model"
TAG = f"{REPO}/latest"


@pytest.fixture
def ns(tmp_path: Path) -> Namespace:
    ns = Namespace(tmp_path)
    ns.resolver.set(f"{REPO}:latest", ollama_manifest())
    ns.blobs.add(GGUF)
    return ns


async def errno_of_lookup(ns: Namespace, parent: int, name: str, **kw: object) -> int:
    with pytest.raises(ModelfsError) as e:
        await ns.tree.lookup(parent, name, **kw)  # type: ignore[arg-type]
    if isinstance(e.value, TreeError):
        return e.value.errno
    return errno_for(e.value)


def listing(ns: Namespace, fh: int, start: int = 0) -> list[tuple[str, int]]:
    return list(ns.tree.readdir(fh, start)[1])


async def test_a_tag_that_does_not_resolve_is_enoent(ns: Namespace) -> None:
    model = await ns.path(REPO)
    assert await errno_of_lookup(ns, model, "missing") == errno.ENOENT
    assert ns.resolver.resolves[-1] == f"{REPO}:missing"


async def test_a_repository_the_registry_does_not_know_is_enoent(ns: Namespace) -> None:
    namespace = await ns.path(f"{HOST}/ai")
    assert await errno_of_lookup(ns, namespace, "nosuchmodel") == errno.ENOENT


async def test_a_repository_in_the_cache_exists_without_asking_the_registry(
    ns: Namespace,
) -> None:
    cached = parse_name(f"{HOST}/cached/model:v1")
    ns.cache.write_manifest(cached, ollama_manifest().raw)
    await ns.path(f"{HOST}/Cached/Model")
    assert ns.resolver.tag_lists == [], "a model of the cache was asked of the registry"


async def test_invalid_names_are_enoent_at_every_level(ns: Namespace) -> None:
    host = await ns.path(HOST)
    tag = await ns.path(TAG)
    cases = [
        (ROOT_INODE, "wat"),  # neither a dot nor a port: not a registry host
        (ROOT_INODE, "-bad.example"),
        (host, "Bad Namespace"),
        (host, "."),
        (host, ".."),
        (await ns.path(f"{HOST}/ai"), "model!"),
        (await ns.path(REPO), "a" * 200),  # a tag is at most 128 characters
        (tag, "no-such-file"),
    ]
    for parent, name in cases:
        assert await errno_of_lookup(ns, parent, name) == errno.ENOENT, name
    assert ns.resolver.resolves == [f"{REPO}:latest"], "an invalid name reached the registry"


async def test_a_host_this_mount_was_told_of_exists_without_a_dot(tmp_path: Path) -> None:
    ns = Namespace(tmp_path, access=Access(owner_uid=0, registries=frozenset({"myregistry"})))
    assert (await ns.tree.lookup(ROOT_INODE, "MyRegistry")).is_dir
    # and a host outside the mount's registries is refused, not absent
    assert await errno_of_lookup(ns, ROOT_INODE, "other.example") == errno.EACCES


async def test_another_user_reaches_only_the_registries_allowed_to_others(
    tmp_path: Path,
) -> None:
    access = Access(owner_uid=0, others_may_reach=lambda: {"allowed.example"})
    ns = Namespace(tmp_path, access=access)
    other = Caller(owner=False, anonymous=True)
    assert (await ns.tree.lookup(ROOT_INODE, "allowed.example", other)).is_dir
    assert await errno_of_lookup(ns, ROOT_INODE, "refused.example", caller=other) == errno.EACCES
    assert (await ns.tree.lookup(ROOT_INODE, "refused.example")).is_dir  # the owner may


async def test_a_file_is_not_a_directory(ns: Namespace) -> None:
    f = await ns.path(f"{TAG}/model.gguf")
    assert await errno_of_lookup(ns, f, "x") == errno.ENOTDIR
    with pytest.raises(TreeError) as e:
        await ns.tree.opendir(f)
    assert e.value.errno == errno.ENOTDIR


async def test_a_tag_directory_shows_one_file_per_layer_and_the_manifest(ns: Namespace) -> None:
    fh = await ns.tree.opendir(await ns.path(TAG))
    assert [n for n, _ in listing(ns, fh)] == ["model.gguf", "config.json", "manifest.json"]
    manifest = await ns.path(f"{TAG}/manifest.json")
    raw = ns.resolver.manifests[parse_name(f"{REPO}:latest").key].raw
    assert ns.tree.attr(ns.tree.inodes.node(manifest)).size == len(raw)
    mfh = await ns.tree.open(manifest)
    assert await ns.tree.read(mfh, 0, 1 << 20) == raw
    assert ns.blobs.opened == [], "manifest.json opened a blob"


async def test_readdir_offsets_stay_the_same_across_calls(ns: Namespace) -> None:
    for tag in ("b", "a", "c", "d"):
        ns.resolver.set(f"{REPO}:{tag}", ollama_manifest())
    model = await ns.path(REPO)
    fh = await ns.tree.opendir(model)
    whole = listing(ns, fh)
    assert [n for n, _ in whole] == ["a", "b", "c", "d", "latest"]
    assert [i for _, i in whole] == [1, 2, 3, 4, 5]
    # The kernel asks again from the id after the last entry it took: the rest, same ids.
    ns.resolver.set(f"{REPO}:aa", ollama_manifest())  # a tag appears meanwhile
    ns.cache.write_manifest(parse_name(f"{REPO}:0"), ollama_manifest().raw)
    assert listing(ns, fh, 2) == whole[2:]
    assert listing(ns, fh, 0) == whole
    assert listing(ns, fh, 5) == []
    # A new listing shows the new tags.
    again = await ns.tree.opendir(model)
    assert [n for n, _ in listing(ns, again)] == ["0", "a", "aa", "b", "c", "d", "latest"]
    assert again != fh


async def test_a_large_listing_paged_a_buffer_at_a_time_gives_each_entry_once(
    ns: Namespace,
) -> None:
    tags = [f"t{i:05d}" for i in range(3000)]
    for tag in tags:
        ns.resolver.set(f"{REPO}:{tag}", ollama_manifest())
    fh = await ns.tree.opendir(await ns.path(REPO))
    # As the kernel does: take what fits in a buffer, ask again from the last id taken.
    got: list[str] = []
    start = 0
    while True:
        page = list(itertools.islice(ns.tree.readdir(fh, start)[1], 100))
        if not page:
            break
        got += [name for name, _ in page]
        start = page[-1][1]
    assert got == sorted([*tags, "latest"])


async def test_a_listing_merges_the_cache_and_the_registry_ignoring_case(ns: Namespace) -> None:
    ns.cache.write_manifest(parse_name(f"{REPO}:Latest"), ollama_manifest().raw)
    ns.cache.write_manifest(parse_name(f"{REPO}:old"), ollama_manifest().raw)
    fh = await ns.tree.opendir(await ns.path(REPO))
    assert [n for n, _ in listing(ns, fh)] == ["Latest", "old"]
    # The root lists the cache's hosts.
    fh = await ns.tree.opendir(ROOT_INODE)
    assert [n for n, _ in listing(ns, fh)] == [HOST]


async def test_a_listing_of_a_repository_the_registry_does_not_know_shows_the_cache(
    ns: Namespace,
) -> None:
    ns.cache.write_manifest(parse_name(f"{HOST}/ai/gone:v1"), ollama_manifest().raw)
    fh = await ns.tree.opendir(await ns.path(f"{HOST}/ai/gone"))
    assert [n for n, _ in listing(ns, fh)] == ["v1"]


async def test_a_released_listing_is_ebadf_and_handles_are_never_shared(ns: Namespace) -> None:
    fh = await ns.tree.opendir(await ns.path(TAG))
    file_fh = await ns.tree.open(await ns.path(f"{TAG}/model.gguf"))
    assert file_fh != fh
    ns.tree.releasedir(fh)
    for bad in (fh, file_fh):
        with pytest.raises(TreeError) as e:
            ns.tree.readdir(bad, 0)
        assert e.value.errno == errno.EBADF
    ns.tree.releasedir(fh)  # twice: harmless


async def test_a_tag_moved_to_another_model_shows_the_new_files_after_the_ttl(
    tmp_path: Path,
) -> None:
    ns = Namespace(tmp_path, lookup_ttl_seconds=0.0)
    ns.resolver.set(f"{REPO}:latest", ollama_manifest())
    tag = await ns.path(TAG)
    other = b"another model" * 10
    ns.resolver.set(f"{REPO}:latest", ollama_manifest(model=other))
    fh = await ns.tree.opendir(tag)
    assert "model.gguf" in [n for n, _ in listing(ns, fh)]
    f = await ns.path(f"{TAG}/model.gguf")
    assert ns.tree.attr(ns.tree.inodes.node(f)).size == len(other)
    # The tag no longer resolves: its directory's files are ENOENT.
    ns.resolver.set(f"{REPO}:latest", None)
    assert await errno_of_lookup(ns, tag, "model.gguf") == errno.ENOENT


async def test_a_lookup_of_a_tag_directory_resolves_it_again(ns: Namespace) -> None:
    # The kernel looks a tag up again only when its entry (kept for the lookup TTL) expired:
    # the tree then asks the resolver afresh, whatever its own copy's age.
    model = await ns.path(REPO)
    tag = (await ns.tree.lookup(model, "latest")).inode
    other = b"another model" * 10
    ns.resolver.set(f"{REPO}:latest", ollama_manifest(model=other))
    assert (await ns.tree.lookup(model, "latest")).inode == tag
    f = await ns.tree.lookup(tag, "model.gguf")
    assert f.size == len(other), "a tag looked up again still showed the old manifest"


def test_who_a_request_is_for() -> None:
    access = Access(owner_uid=1000)
    assert access.caller(1000) == Caller(owner=True, anonymous=False)
    assert access.caller(None) == Caller(owner=True, anonymous=False)  # the daemon itself
    assert access.caller(0) == Caller(owner=False, anonymous=True), "root borrowed credentials"
    shared = Access(owner_uid=1000, share_credentials=True)
    assert shared.caller(1001) == Caller(owner=False, anonymous=False)


async def test_a_file_that_leaves_its_tag_while_looked_up_is_enoent(tmp_path: Path) -> None:
    # A lookup of a file waits (recording the model's use) while a lookup of its tag moves
    # the tag to a model without that file: the file is gone, not a directory of its name.
    gate = trio.Event()

    async def used(name: object) -> None:
        await gate.wait()

    ns = Namespace(tmp_path, on_used=used)
    ns.resolver.set(f"{REPO}:latest", ollama_manifest())
    model = await ns.path(REPO)
    tag = (await ns.tree.lookup(model, "latest")).inode
    template = ollama_manifest(b"{{ .Prompt }}", media_type=MEDIA_TYPE_TEMPLATE)
    got: list[object] = []

    async def look() -> None:
        try:
            got.append(await ns.tree.lookup(tag, "model.gguf"))
        except TreeError as e:
            got.append(e.errno)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked()
        ns.resolver.set(f"{REPO}:latest", template)
        assert (await ns.tree.lookup(model, "latest")).inode == tag  # records no use
        gate.set()
    assert got == [errno.ENOENT], f"a file that left its model was looked up as {got}"
