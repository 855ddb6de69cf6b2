"""``modelfs create``: build an Ollama model in the cache from a GGUF file and its companions,
or from a Modelfile (``-f``), as ``ollama create`` does.

Writes each blob (GGUF weights, adapters, projector, template, system prompt,
licenses, params, messages), a
chunk index for every layer larger than one chunk (so the model reads lazily and
verified through any modelfs mount), the config blob Ollama expects (family,
type and file type read from the GGUF header), and last the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelfs.blobs.blobcache import BlobCache
from modelfs.commands import folderstore
from modelfs.errors import CacheError, GGUFInvalid, ManifestInvalid, NameInvalid, UsageError
from modelfs.formats.chattemplates import ollama_template
from modelfs.formats.chunks import (
    CHUNK_BYTES,
    BlobChunks,
    parse_chunk_index,
    serialize_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.gguf import GGUFInfo, ollama_config, read_gguf_file
from modelfs.formats.manifest import (
    MEDIA_TYPE_ADAPTER,
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_PROJECTOR,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
    build_manifest,
    parse_manifest,
)
from modelfs.formats.modelfile import (
    MAX_MODELFILE_BYTES,
    Modelfile,
    ModelfileInvalid,
    ollama_layer_blobs,
    parameters_from_json,
    parse_modelfile,
)
from modelfs.formats.names import Name, parse_name

log = logging.getLogger(__name__)


# A template, params or license file: as big as a Modelfile may be.
MAX_TEXT_FILE_BYTES = MAX_MODELFILE_BYTES
_READ_BYTES = 1 << 20


def _read_text(path: Path, what: str, limit: int = MAX_TEXT_FILE_BYTES) -> bytes:
    """A small input file, whole: refused unless it is a regular file of at most ``limit``
    bytes, before anything is read (``/dev/zero``, a FIFO or a huge sparse file given by
    mistake is one line, not a hang or gigabytes of memory)."""
    try:
        # O_NONBLOCK: opening a FIFO that no one writes must not block.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise CacheError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise UsageError(
                f"{what} {path} is {info.st_size / (1 << 20):.1f} MiB, "
                f"over the {limit >> 20} MiB limit"
            )
        parts: list[bytes] = []
        size = 0
        while part := os.read(fd, min(_READ_BYTES, limit + 1 - size)):
            parts.append(part)
            size += len(part)
            if size > limit:  # it grew since fstat
                raise UsageError(f"{what} {path} is over the {limit >> 20} MiB limit")
        return b"".join(parts)
    except OSError as e:
        raise CacheError(f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def parse_params(value: str) -> bytes:
    """``--params`` is inline JSON or a path to a JSON file; it must be an object."""
    text = value
    if not value.lstrip().startswith("{"):
        text = _read_text(Path(value), "params file").decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--params is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError("--params must be a JSON object, e.g. '{\"temperature\":0.2}'")
    # The names and types a Modelfile's PARAMETER lines may give, checked the same way.
    kept, ignored = parameters_from_json(doc, "--params")
    for key in ignored:
        log.warning("--params: %s is deprecated and ignored by Ollama: left out", key)
    return json.dumps(kept, separators=(",", ":")).encode()


def create_model(
    cache: BlobCache,
    name: Name,
    gguf: Path,
    *,
    template: Path | None = None,
    system: str | None = None,
    params: str | None = None,
    licenses: tuple[Path, ...] = (),
    chunk_bytes: int = CHUNK_BYTES,
    chunk_index: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Write the model's blobs and then its manifest into the cache; return the manifest."""
    return _write_model(
        cache,
        name,
        _Parts(
            weights=gguf,
            template=_read_text(template, "template") if template is not None else None,
            system=system.encode() if system is not None else None,
            params=parse_params(params) if params is not None else None,
            licenses=[_read_text(lic, "license") for lic in licenses],
        ),
        chunk_bytes=chunk_bytes,
        chunk_index=chunk_index,
        on_progress=on_progress,
    )


def create_from_modelfile(
    cache: BlobCache,
    name: Name,
    modelfile: Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    chunk_index: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    format: str | None = None,
) -> Manifest:
    """``modelfs create NAME -f Modelfile``: the layers ``ollama create`` writes for it.

    FROM is a model folder (commands/folderstore.py, laid out as ``format``, with the lines
    that format keeps: formats/folderpack.py ``modelfile_extras``), a GGUF file
    (a path, relative to the Modelfile's directory) or a model complete in the cache, whose
    layers are the base: TEMPLATE, SYSTEM, LICENSE and MESSAGE replace the base's, PARAMETER
    values are merged into its params (the Modelfile's win), ADAPTER files are added. A
    second FROM that is a CLIP GGUF becomes the projector.
    """
    mf = parse_modelfile(_read_text(modelfile, "Modelfile", MAX_MODELFILE_BYTES))
    where = f"{modelfile} line {mf.from_line}: FROM"
    if mf.drafts:
        raise ModelfileInvalid(f"{modelfile}: DRAFT models are not supported by modelfs create")
    base_dir = modelfile.parent
    if (folder := folderstore.modelfile_folder(mf.from_, base_dir)) is not None:
        return folderstore.create_from_folder(
            cache,
            name,
            folder,
            format=format,
            chunk_bytes=chunk_bytes,
            chunk_index=chunk_index,
            modelfile=(mf, str(modelfile)),
        )
    if format is not None:
        raise UsageError(f"{where} {mf.from_} is not a folder: --format is for model folders")
    weights = _local_path(mf.from_, base_dir, where)
    base: Manifest | None = None
    if weights is None:
        base = _base_model(cache, mf.from_, where)
    else:
        _gguf_header(weights, f"{where} {mf.from_}")
    projectors = []
    for extra in mf.more_from:
        path = _local_path(extra, base_dir, where)
        if path is None:
            raise ModelfileInvalid(
                f"{where} {extra}: a second FROM must be a GGUF file (a projector)"
            )
        if _gguf_header(path, f"{where} {extra}").architecture != "clip":
            raise ModelfileInvalid(
                f"{where} {extra}: a second FROM must be a projector (a GGUF of architecture clip)"
            )
        projectors.append(path)
    adapters = []
    for adapter in mf.adapters[-1:]:  # as Ollama: of several ADAPTER lines, the last
        path = _local_path(adapter, base_dir, f"{modelfile}: ADAPTER")
        if path is None:
            raise ModelfileInvalid(f"{modelfile}: ADAPTER {adapter}: no such file")
        # A GGUF LoRA adapter; safetensors adapters are not converted.
        _gguf_header(path, f"{modelfile}: ADAPTER {adapter}")
        adapters.append(path)
    params = mf.params_json()
    if base is not None and params is not None:
        params = _merged_params(cache, base, mf.parameters)
    extra_config = {
        key: value
        for key, value in (
            ("renderer", mf.renderer),
            ("parser", mf.parser),
            ("requires", mf.requires),
        )
        if value is not None
    }
    return _write_model(
        cache,
        name,
        _Parts(
            weights=weights,
            base=base,
            template=mf.template.encode() if mf.template is not None else None,
            system=mf.system.encode() if mf.system is not None else None,
            params=params,
            licenses=[text.encode() for text in mf.licenses],
            messages=mf.messages_json(),
            adapters=adapters,
            projectors=projectors,
            config=extra_config,
        ),
        chunk_bytes=chunk_bytes,
        chunk_index=chunk_index,
        on_progress=on_progress,
    )


def _local_path(text: str, base_dir: Path, where: str) -> Path | None:
    """FROM/ADAPTER text as Ollama reads it: a path when such a file exists (``~`` expanded,
    relative to the Modelfile's directory), else None (a model name)."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_dir():
        raise ModelfileInvalid(
            f"{where} {text} is a directory: modelfs creates models from GGUF files "
            "(convert safetensors with llama.cpp's convert_hf_to_gguf.py first)"
        )
    if path.exists():
        return path
    if text.startswith((".", "/", "~")) or text.lower().endswith(".gguf"):
        raise ModelfileInvalid(f"{where} {text}: no such file")
    return None


def _gguf_header(path: Path, where: str) -> GGUFInfo:
    """The header of a GGUF file a Modelfile names; if it is none, the error says where."""
    try:
        return read_gguf_file(path)
    except GGUFInvalid as e:
        raise ModelfileInvalid(f"{where}: {e}") from None


def _base_model(cache: BlobCache, text: str, where: str) -> Manifest:
    try:
        base_name = parse_name(text)
    except NameInvalid as e:
        raise ModelfileInvalid(f"{where} {text}: neither a file nor a model name ({e})") from None
    loaded = cache.load_manifest(base_name)
    if loaded is None or not loaded[1]:
        raise ModelfileInvalid(
            f"{where} {text}: no such file, and the model is not complete in the cache at "
            f"{cache.root} (modelfs pull {base_name.display_shortest()} first)"
        )
    manifest = loaded[0]
    if not manifest.layers_of_type(MEDIA_TYPE_MODEL):
        raise ModelfileInvalid(f"{where} {text}: the model has no GGUF weights layer")
    return manifest


def _merged_params(cache: BlobCache, base: Manifest, new: dict[str, object]) -> bytes:
    """The base model's params with the Modelfile's on top, written as Ollama writes them."""
    merged: dict[str, object] = {}
    for layer in base.layers_of_type(MEDIA_TYPE_PARAMS):
        try:
            doc = json.loads(cache.blob_path(layer.digest).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            merged.update(doc)
    merged.update(new)
    out = Modelfile(from_="", parameters=merged).params_json()
    assert out is not None
    return out


@dataclass
class _Parts:
    """What a model is made of, before anything is written."""

    weights: Path | None = None  # a GGUF file to import, or
    base: Manifest | None = None  # a cached model whose layers are the starting point
    template: bytes | None = None
    system: bytes | None = None
    params: bytes | None = None
    licenses: list[bytes] = field(default_factory=list)
    messages: bytes | None = None
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    config: dict[str, object] = field(default_factory=dict)  # more fields of the config blob


def _write_model(
    cache: BlobCache,
    name: Name,
    parts: _Parts,
    *,
    chunk_bytes: int,
    chunk_index: bool,
    on_progress: Callable[[int, int], None] | None,
) -> Manifest:
    # Every input is read (and a GGUF refused) before anything is copied.
    template, params = parts.template, parts.params
    if parts.weights is not None:
        info = read_gguf_file(parts.weights)
        if template is None:
            template, params = _template_from_gguf(info, params)
    else:
        assert parts.base is not None
        weights_layer = parts.base.layers_of_type(MEDIA_TYPE_MODEL)[0]
        info = read_gguf_file(cache.blob_path(weights_layer.digest))
    cache.prepare()
    layers: list[Layer] = []
    indexed: list[BlobChunks] = []
    if parts.weights is not None:
        model_layer, chunks = _import(
            cache, parts.weights, MEDIA_TYPE_MODEL, chunk_bytes, on_progress
        )
        layers.append(model_layer)
        indexed += chunks
    else:
        assert parts.base is not None
        replaced = {MEDIA_TYPE_PARAMS} if parts.params is not None else set()
        replaced |= {MEDIA_TYPE_TEMPLATE} if parts.template is not None else set()
        replaced |= {MEDIA_TYPE_SYSTEM} if parts.system is not None else set()
        replaced |= {MEDIA_TYPE_LICENSE} if parts.licenses else set()
        replaced |= {MEDIA_TYPE_MESSAGES} if parts.messages is not None else set()
        layers += [layer for layer in parts.base.layers if layer.media_type not in replaced]
    for path in parts.projectors:
        layer, chunks = _import(cache, path, MEDIA_TYPE_PROJECTOR, chunk_bytes, None)
        layers.append(layer)
        indexed += chunks
    for path in parts.adapters:
        layer, chunks = _import(cache, path, MEDIA_TYPE_ADAPTER, chunk_bytes, None)
        layers.append(layer)
        indexed += chunks
    if chunk_index and indexed:
        # New large blobs on a base model: one index for the base's and theirs.
        if parts.base is not None:
            indexed = _base_index_entries(cache, parts.base, chunk_bytes, indexed[0]) + indexed
        index = serialize_chunk_index(chunk_bytes, indexed)
        layers = [layer for layer in layers if layer.media_type != MEDIA_TYPE_CHUNK_INDEX]
        layers.insert(1, _store(cache, index, MEDIA_TYPE_CHUNK_INDEX))
    for media_type, data in ollama_layer_blobs(
        template=template,
        system=parts.system,
        licenses=parts.licenses,
        params=params,
        messages=parts.messages,
    ):
        layers.append(_store(cache, data, media_type))
    config_doc = {
        **ollama_config(info),
        **parts.config,
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
            platform.machine(), platform.machine()
        ),
        "os": platform.system().lower(),
        "rootfs": {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]},
    }
    config = _store(
        cache, json.dumps(config_doc, separators=(",", ":")).encode(), MEDIA_TYPE_DOCKER_CONFIG
    )
    raw = build_manifest(config, layers)
    manifest = parse_manifest(raw)
    cache.write_manifest(name, raw)
    cache.unmark_lazy(name)  # created on purpose: pinned
    log.info("created %s (%s)", name, manifest.digest)
    return manifest


def _template_from_gguf(info: GGUFInfo, params: bytes | None) -> tuple[bytes | None, bytes | None]:
    """The template layer ``ollama create`` takes from a GGUF's chat template when none is
    given, and the params with its stop words under the given ones (formats/chattemplates)."""
    jinja = info.chat_template
    if jinja is None:
        return None, params
    known = ollama_template(jinja)
    if known is None:
        log.warning(
            "the GGUF's chat template is none of those Ollama knows, so the model has no "
            "template (Ollama prompts it with {{ .Prompt }} alone); give one with --template "
            "or TEMPLATE"
        )
        return None, params
    log.info("template: Ollama's %s, from the GGUF's chat template", known.name)
    if not known.stop:
        return known.template, params
    merged: dict[str, object] = {"stop": list(known.stop)}
    if params is not None:
        merged.update(json.loads(params))  # the given parameters win, as Ollama merges them
    return known.template, Modelfile(from_="", parameters=merged).params_json()


def _base_index_entries(
    cache: BlobCache, base: Manifest, chunk_bytes: int, like: BlobChunks
) -> list[BlobChunks]:
    """The base model's chunk index entries, if its index can be merged with new ones."""
    for layer in base.layers_of_type(MEDIA_TYPE_CHUNK_INDEX):
        try:
            index = parse_chunk_index(cache.blob_path(layer.digest).read_bytes(), base.layers)
        except (OSError, ManifestInvalid) as e:
            log.warning("leaving out the base model's chunk index: %s", e)
            return []
        entries = list(index.blobs.values())
        if index.chunk_bytes == chunk_bytes and all(b.algorithm == like.algorithm for b in entries):
            return entries
        log.warning("leaving out the base model's chunk index: another chunk size or algorithm")
    return []


def _import(
    cache: BlobCache,
    path: Path,
    media_type: str,
    chunk_bytes: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[Layer, list[BlobChunks]]:
    """Copy a local file into ``blobs/``; its layer, and its chunk digests if it spans chunks."""
    total = path.stat().st_size
    imported = cache.import_file(
        path, chunk_bytes, (lambda n: on_progress(n, total)) if on_progress else None
    )
    layer = Layer(imported.digest, media_type, imported.size)
    if imported.size <= chunk_bytes:
        return layer, []
    return layer, [
        BlobChunks(
            imported.digest,
            imported.size,
            chunk_bytes,
            imported.chunk_hashes,
            imported.chunk_algorithm,
        )
    ]


def _store(cache: BlobCache, data: bytes, media_type: str) -> Layer:
    digest = Digest.of_bytes(data)
    if not cache.has_blob(digest, len(data)):
        cache.store_bytes(data, digest)
    return Layer(digest, media_type, len(data))
