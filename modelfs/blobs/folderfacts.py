"""What a model of safetensors files is, read through the blob layer: its files and the
facts ``formats.folderfacts`` finds in its ``config.json`` and weights files' headers.

Only those bytes are read, as ``blobs.header`` reads a GGUF header: through the blob
door (each range checked by the blob's chunk digests, and kept in the partial file as
any read would be; a small blob fetched whole and checked), or, for a larger blob that can
only be checked whole, just the range asked for from its registry into memory, unchecked,
and the answer says so (``checked``). A
header is small: fetching a whole tensor blob (Ollama's are up to gigabytes) to check
the bytes ``show`` prints would move the model. Nothing unchecked reaches the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfs.blobs.files import answer, checked_reads
from modelfs.blobs.handles import layers_by_digest
from modelfs.blobs.reader import Blobs
from modelfs.errors import ManifestInvalid
from modelfs.formats.files import BlobBytes, ByteRequest, ModelTree, files_of
from modelfs.formats.folderfacts import facts_of
from modelfs.formats.manifest import Manifest
from modelfs.formats.names import Name
from modelfs.formats.safetensors import XATTR_PREFIX, SafetensorsFacts

# A blob checkable only whole is fetched whole (and checked) for a range of it if it is at
# most this big (config.json, a norm's weights); a larger one has the range read unchecked.
WHOLE_CHECK_BYTES = 64 << 10
XATTR_HEADER_CHECKED = XATTR_PREFIX + "header_checked"
# Listed before the headers are read (listing fetches nothing); each model has these.
_ALWAYS = ("parameter_count", "tensor_count", "dtypes", "weights_bytes", "memory_bytes")
XATTR_NAMES = (*(XATTR_PREFIX + key for key in _ALWAYS), XATTR_HEADER_CHECKED)


@dataclass(frozen=True)
class FolderFacts:
    tree: ModelTree
    facts: SafetensorsFacts | None  # None: no top-level *.safetensors file
    bytes_read: int  # of the blobs: headers, config.json (and the layout's reads, if made here)
    checked: bool  # every byte the facts came from was checked against the blobs' digests

    def xattrs(self) -> dict[str, bytes]:
        """The mount's ``user.modelfs.safetensors.*`` attributes of the model's directory."""
        if self.facts is None:
            return {}
        return {**self.facts.xattrs(), XATTR_HEADER_CHECKED: b"yes" if self.checked else b"no"}


async def read_folder_facts(
    blobs: Blobs,
    name: Name,
    manifest: Manifest,
    *,
    anonymous: bool = False,
    tree: ModelTree | None = None,
) -> FolderFacts:
    """The model's files and their facts. Without ``tree`` (the files as a mount laid them
    out, from checked bytes) the files are laid out here with the same reads as the facts:
    for ``show``, the heads of Ollama's tensor blobs are read as their headers are."""
    layers = layers_by_digest(manifest)
    checked_read = checked_reads(blobs, name, manifest, anonymous=anonymous)
    checked = True

    async def read(request: ByteRequest) -> bytes:
        nonlocal checked
        layer = layers.get(request.digest)
        if layer is None:
            raise ManifestInvalid(f"{name}: a header read of a blob not in the manifest")
        how = await blobs.verification(name, manifest, layer, anonymous=anonymous)
        if how != "whole" or layer.size <= WHOLE_CHECK_BYTES:
            if how == "deferred":
                checked = False
            return await checked_read(request)
        checked = False
        return await blobs.read_unchecked(
            name,
            request.digest,
            request.offset,
            request.offset + request.length,
            anonymous=anonymous,
        )

    known = BlobBytes()
    if tree is None:
        tree = await answer(name, known, lambda k: files_of(manifest, k), read)
    laid_out = tree
    facts = await answer(name, known, lambda k: facts_of(laid_out, k), read)
    return FolderFacts(tree, facts, known.total_bytes, checked)
