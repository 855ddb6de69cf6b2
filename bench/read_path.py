"""The pure read path, no FUSE: Registry + the blob door (``blob_layer``) reading a cold blob sequentially.

Shows regressions of fetching, verifying and caching without a mount in the way. Used by
bench.py (section 10); runs alone too: read_path.py REGISTRY_HOST/REPO:TAG [--piece-kib 1024].
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.door import blob_layer
from modelfs.formats.manifest import MEDIA_TYPE_MODEL, parse_manifest
from modelfs.formats.names import parse_name
from modelfs.registry.client import Registry


async def read_cold(name_text: str, cache_root: Path, piece_bytes: int) -> dict[str, float]:
    """Read the model layer from offset 0 to the end in ``piece_bytes`` reads, as `cat` would."""
    name = parse_name(name_text)
    cache = BlobCache(cache_root)
    cache.prepare()
    registry = Registry()
    try:
        manifest = parse_manifest(await registry.get_manifest(name))
        layer = manifest.layers_of_type(MEDIA_TYPE_MODEL)[0]
        async with trio.open_nursery() as nursery:
            blobs = blob_layer(cache, registry, nursery)
            handle = await blobs.open(name, manifest, layer)
            start = time.perf_counter()
            offset = 0
            while offset < layer.size:
                data = await handle.read(offset, piece_bytes)
                offset += len(data)
            read_seconds = time.perf_counter() - start
            await handle.close()
            while not cache.has_blob(layer.digest, layer.size):
                await trio.sleep(0.01)
            published_seconds = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    finally:
        await registry.aclose()
    return {
        "size": layer.size,
        "read_seconds": read_seconds,
        "published_seconds": published_seconds,
        "requests": blobs.snapshot().stats.requests,
    }


def measure(name: str, piece_bytes: int = 1 << 20) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="modelfs-readpath-"))
    try:
        return trio.run(read_cold, name, root, piece_bytes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--piece-kib", type=int, default=1024)
    args = parser.parse_args()
    r = measure(args.name, args.piece_kib << 10)
    print(
        f"{r['size'] / r['read_seconds'] / 1e9:.2f} GB/s read, published after "
        f"{r['published_seconds']:.2f} s, {r['requests']:.0f} requests"
    )


if __name__ == "__main__":
    main()
