"""``push --format ollama`` of a folder model: what the push writes into ``blobs/`` is named by
a manifest of the cache, as after ``ollama push``, or not left behind.

Ollama keeps the model it pushed under the pushed name (``ollama create``/``ollama cp``
first), and ``ollama serve`` prunes blobs no manifest names. The tensor blobs a push lays
out are either kept with their manifest (pushed under a new name: the model is readable from
the cache, and a daemon's orphan collection and eviction leave it alone) or removed again
(pushed under the cached model's own name, which keeps its own layout)."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from component.test_create_folder import skopeo_raw
from support.modelformats import ollama_tensors
from support.mount import run_modelfs

from modelfs.blobs import orphans
from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.eviction import CacheBounds, Evictor
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import parse_manifest
from modelfs.formats.names import parse_name


async def _inline(fn, *args):  # the daemon's worker thread, here the test's own
    return fn(*args)


def test_a_folder_pushed_as_ollama_under_a_new_name_stays_in_the_cache(registry, minilm, tmp_path):
    cache_dir = tmp_path / "cache"
    name = f"{registry.host}/pushcache/minilm:latest"
    pushed = f"{registry.host}/pushcache/minilm-ollama:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--cache", str(cache_dir))
    run_modelfs("push", pushed, "--from", name, "--format", "ollama", "--cache", str(cache_dir))

    cache = BlobCache(cache_dir)
    on_registry = skopeo_raw(registry, "pushcache/minilm-ollama", "latest")
    assert json.loads(on_registry) == json.loads(ollama_tensors(minilm).manifest)
    loaded = cache.load_manifest(parse_name(pushed))
    assert loaded is not None, "the pushed model is not in the cache under the name pushed"
    manifest, complete = loaded
    assert complete and manifest.raw == on_registry
    tensors = {layer.digest for layer in manifest.blobs}
    assert all(cache.has_blob(layer.digest, layer.size) for layer in manifest.blobs)

    # What a daemon of this cache does at each check, with the blobs counted as its own and
    # the cache far over its bound: the pushed model is pinned and names its blobs.
    evictor = Evictor(cache, CacheBounds(max_bytes=1, min_free_percent=None), set, _inline)
    evictor.published_here.update(tensors)
    trio.run(evictor.check)
    assert evictor.evicted == []
    gone = [layer.digest.short for layer in manifest.blobs if not cache.has_blob(layer.digest)]
    assert not gone, f"blobs of the pushed model removed from the cache: {gone}"
    listed = run_modelfs("ls", "--cache", str(cache_dir)).stdout
    assert "pushcache/minilm-ollama" in listed


def test_a_folder_pushed_as_ollama_under_its_own_name_leaves_no_blob_unnamed(
    registry, minilm, tmp_path
):
    cache_dir = tmp_path / "cache"
    name = f"{registry.host}/pushcache/minilm-same:latest"
    run_modelfs("create", name, "--dir", str(minilm), "--cache", str(cache_dir))
    cache = BlobCache(cache_dir)
    created = cache.read_manifest(parse_name(name))
    run_modelfs("push", name, "--format", "ollama", "--cache", str(cache_dir))

    assert cache.read_manifest(parse_name(name)) == created, "the cached model was changed"
    on_registry = parse_manifest(skopeo_raw(registry, "pushcache/minilm-same", "latest"))
    assert json.loads(on_registry.raw) == json.loads(ollama_tensors(minilm).manifest)
    named = cache.referenced_blobs()
    left = [
        layer.digest.short
        for layer in on_registry.blobs
        if layer.digest not in named and cache.has_blob(layer.digest)
    ]
    assert not left, f"{len(left)} blobs of the push left in blobs/ that no model names"
    # The cached model is whole still.
    assert all(cache.has_blob(x.digest, x.size) for x in parse_manifest(created or b"").blobs)


def test_laid_out_blobs_are_only_what_the_layout_wrote(tmp_path: Path) -> None:
    """``orphans.free_unnamed`` removes only blobs no manifest names (fail closed)."""
    cache = BlobCache(tmp_path / "cache")
    cache.prepare()
    unnamed, named = b"tensor no manifest names", b"config a manifest names"
    for data in (unnamed, named):
        cache.store_bytes(data, Digest.of_bytes(data))
    cache.write_manifest(
        parse_name("localhost:1/x/y:z"), f'{{"broken": "{Digest.of_bytes(named)}"'.encode()
    )
    orphans.free_unnamed(cache, frozenset({Digest.of_bytes(unnamed), Digest.of_bytes(named)}))
    assert not cache.has_blob(Digest.of_bytes(unnamed))
    assert cache.has_blob(Digest.of_bytes(named)), "removed a blob a manifest may name"
