"""A cached model in Ollama's tensor format read back as a model folder, for ``push --format
docker|cncf`` (commands/folderstore.py ``layout_cached``).

Ollama's registry ships safetensors models as one blob per tensor, the top-level JSON files
and the Modelfile layers (docs/formats.md). The folder they come back as is the one the mount
shows (formats/files.py ``files_of``): ``model.safetensors`` (or shards and their index)
assembled from the tensor blobs, and the JSON files. What the Modelfile layers and the config
said goes where the target format has a place for it (``folderpack.modelfile_extras``): each
license a license file, ``num_ctx`` Docker's ``context_size`` (in ModelPack, which has no
field for it, left out with one warning: ``folderpack.carried_context``, the rule a Docker
model's ``context_size`` follows too); anything else (a template, a system prompt, other
parameters, messages, a renderer or parser, quantized tensors, a draft model, a projector or
adapter) is refused in one line naming it, so nothing is dropped unsaid.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from modelfs.blobs.blobcache import BlobCache, os_error
from modelfs.errors import CacheError, InputInvalid, ManifestInvalid, UsageError
from modelfs.formats import artifacts as a
from modelfs.formats import folderpack as fp
from modelfs.formats.files import DRAFT_DIR, BlobBytes, ModelTree, Needs, files_of
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
)
from modelfs.formats.modelfile import Modelfile
from modelfs.formats.names import Name

log = logging.getLogger(__name__)

# A Modelfile layer is read whole to carry it; a bigger one is not a Modelfile's.
MAX_MODELFILE_LAYER_BYTES = 1 << 20
_MODELFILE_LAYERS = {
    MEDIA_TYPE_TEMPLATE,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_MESSAGES,
}
# Round trips of header reads: one for every blob's first bytes, one for a long header.
MAX_READ_ROUNDS = 8


def _read(cache: BlobCache, layer: Layer, offset: int, length: int, what: str) -> bytes:
    if not cache.has_blob(layer.digest, layer.size):
        raise CacheError(f"{what} ({layer.digest.short}) is not in the cache: pull the model first")
    try:
        with open(cache.blob_path(layer.digest), "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise os_error(e, f"reading {what}") from None
    if len(data) != length:
        raise CacheError(f"{what} ({layer.digest.short}) is shorter than its layer")
    return data


def _whole(cache: BlobCache, layer: Layer, what: str) -> bytes:
    if layer.size > MAX_MODELFILE_LAYER_BYTES:
        raise UsageError(f"{what} is {layer.size} bytes: too big to carry")
    return _read(cache, layer, 0, layer.size, what)


def _json(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except ValueError:
        raise ManifestInvalid(f"{what} is not JSON") from None


def _no_draft(where: str, fmt: str, what: str) -> str:
    """The one line refusing a draft model (the mount's ``draft/`` folder: formats/files.py
    ``has_draft``): Docker Model Runner names a draft as a model of its own (``docker model
    configure --speculative-draft-model``), ModelPack has none."""
    return (
        f"{where}: {what} is a draft model's: a {fmt} model has no place for a draft model "
        f"(push the {DRAFT_DIR}/ folder as a model of its own)"
    )


def ollama_extras(cache: BlobCache, name: Name, manifest: Manifest, fmt: str) -> fp.ModelfileExtras:
    """What the Ollama model's Modelfile layers and config mean for ``fmt`` (``docker`` or
    ``cncf``), or a one-line refusal naming what ``fmt`` has no place for."""
    where = str(name)
    for layer in manifest.layers:
        t = layer.media_type
        if t in (a.OLLAMA_TENSOR, a.OLLAMA_JSON, MEDIA_TYPE_CHUNK_INDEX) or t in _MODELFILE_LAYERS:
            # Ollama keeps only a draft model's files in a folder (draft/<file>).
            if t == a.OLLAMA_JSON and "/" in (layer.name or ""):
                raise UsageError(_no_draft(where, fmt, layer.name or ""))
            continue
        raise UsageError(f"{where}: its {t} layer has no place in a {fmt} model")
    config = _json(_whole(cache, manifest.config, f"{where}: the config"), f"{where}: the config")
    if not isinstance(config, dict):
        raise ManifestInvalid(f"{where}: its config is not an Ollama config")
    if config.get("draft") is not None:  # ConfigV2.Draft, as ollama create writes it
        raise UsageError(_no_draft(where, fmt, "its config's draft"))
    if config.get("file_type"):
        raise UsageError(
            f"{where}: its tensors are quantized ({config['file_type']}) for Ollama's MLX "
            f"runner, not a Hugging Face model's: a {fmt} model cannot hold them"
        )
    texts: dict[str, bytes] = {}
    licenses: list[bytes] = []
    for layer in manifest.layers:
        if layer.media_type not in _MODELFILE_LAYERS:
            continue
        data = _whole(cache, layer, f"{where}: its {layer.media_type.rsplit('.', 1)[-1]} layer")
        if layer.media_type == MEDIA_TYPE_LICENSE:
            licenses.append(data)
        else:
            texts[layer.media_type] = data
    params = _json(texts.get(MEDIA_TYPE_PARAMS, b"{}"), f"{where}: its params")
    if not isinstance(params, dict):
        raise ManifestInvalid(f"{where}: its params are not a JSON object")
    context = params.pop("num_ctx", None)
    if context is not None and not fp.is_context_size(context):
        raise ManifestInvalid(f"{where}: its params' num_ctx {context!r} is not a context size")
    messages = _json(texts.get(MEDIA_TYPE_MESSAGES, b"[]"), f"{where}: its messages")

    def text(media_type: str) -> str | None:
        data = texts.get(media_type)
        return None if data is None else data.decode("utf-8", "replace")

    def name_of(key: str) -> str | None:
        value = config.get(key)
        return value if isinstance(value, str) and value else None

    mf = Modelfile(
        from_="",
        template=text(MEDIA_TYPE_TEMPLATE),
        system=text(MEDIA_TYPE_SYSTEM),
        parameters=params,
        messages=tuple(
            (str(m.get("role")), str(m.get("content")))
            for m in (messages if isinstance(messages, list) else [messages])
            if isinstance(m, dict)
        ),
        renderer=name_of("renderer"),
        parser=name_of("parser"),
    )
    extras = fp.modelfile_extras(mf, fmt, where)
    kept = None
    if context is not None:
        kept, warning = fp.carried_context(fmt, context, where, "the Ollama params' num_ctx")
        if warning is not None:
            log.warning("%s", warning)
    return dataclasses.replace(extras, licenses=tuple(licenses), context_size=kept)


def ollama_tree(cache: BlobCache, name: Name, manifest: Manifest) -> ModelTree:
    """The model's files as the mount shows them: the tensors assembled as safetensors
    files (extents over the cached tensor blobs), the JSON files as their layers."""
    known = BlobBytes()
    layers = {layer.digest: layer for layer in manifest.layers}
    for _ in range(MAX_READ_ROUNDS):
        found = files_of(manifest, known)
        if not isinstance(found, Needs):
            return found
        for read in found.reads:
            layer = layers[read.digest]
            length = min(read.length, layer.size - read.offset)
            what = f"{name}: tensor layer {layer.name or layer.digest.short}"
            known.add(read.digest, read.offset, _read(cache, layer, read.offset, length, what))
    raise InputInvalid(f"{name}: its tensor headers were not read in {MAX_READ_ROUNDS} rounds")
