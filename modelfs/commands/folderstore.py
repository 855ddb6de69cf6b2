"""A model folder written into the cache as one registry layout (formats/folderpack.py).

``modelfs create NAME --dir FOLDER`` (and a Modelfile whose FROM is a folder) walks the
folder as Docker Model Runner walks it (lexical order, hidden entries and symlinks skipped),
copies each file into ``blobs/`` and writes the manifest of the chosen format last.
``push --format`` of such a model lays the cached files out again in another format
(``layout_cached``): Docker and ModelPack artifacts share their blobs, so only a config
blob is written; Ollama's tensor format needs each tensor as a blob of its own, written
from the cached files. What a Modelfile added (license files, a Docker ``context_size``)
goes where the other format has a place for it, else one warning names it (``_carried``).
Every blob over one chunk gets its chunk digests kept as a local chunk index
(``.modelfs/indexes``), which a push publishes beside the manifest (commands/pushfolder.py):
the manifest itself stays exactly what the tool writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from modelfs.blobs.blobcache import BlobCache, os_error
from modelfs.commands import ollamafolder
from modelfs.errors import CacheError, GGUFInvalid, InputInvalid, ManifestInvalid, UsageError
from modelfs.formats import artifacts as a
from modelfs.formats import folderpack as fp
from modelfs.formats.chunks import (
    CHUNK_BYTES,
    DEFAULT_CHUNK_ALGORITHM,
    BlobChunks,
    chunk_hash,
    serialize_chunk_index,
)
from modelfs.formats.digest import Digest
from modelfs.formats.dockermodel import architecture_text, context_size, quantization_text
from modelfs.formats.files import (
    DRAFT_CONFIG,
    DRAFT_DIR,
    DRAFT_TENSOR_PREFIX,
    SIDE_DIR,
    Generated,
    ModelTree,
    files_of,
)
from modelfs.formats.gguf import read_gguf_file
from modelfs.formats.manifest import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
    parse_manifest,
)
from modelfs.formats.modelfile import Modelfile, ollama_layer_blobs
from modelfs.formats.names import Name
from modelfs.formats.safetensors import (
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorInfo,
    header_length,
    parse_header,
    safetensors_facts,
)

log = logging.getLogger(__name__)

COPY_BYTES = 4 << 20
MAX_CONFIG_JSON_BYTES = 1 << 20
# A license file of a Docker or ModelPack model larger than this stays a file (left out of
# Ollama's format, named in its warning) rather than an Ollama license layer read whole.
MAX_LICENSE_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """A file of the model and where its bytes are: in the folder, or a blob of the cache."""

    file: fp.FolderFile
    where: Path
    layer: Layer | None = None  # the blob, when it is already in the cache


def _walk(folder: Path, prefix: str = "") -> Iterator[Source]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise CacheError(f"cannot read {folder}: {e.strerror}") from None
    for entry in entries:
        if entry.name.startswith(".") or entry.is_symlink():
            continue  # as DMR's walk: hidden entries and links are not the model's
        path = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), path + "/")
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            log.warning("%s is not a regular file: left out", entry.path)
            continue
        yield Source(
            fp.FolderFile(path, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns),
            Path(entry.path),
        )


def walk_folder(folder: Path) -> list[Source]:
    """The folder's files in Docker Model Runner's walk order; refused without weights."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a directory")
    sources = list(_walk(folder))
    if not any(s.file.path.lower().endswith(fp.WEIGHT_SUFFIXES) for s in sources):
        raise InputInvalid(
            f"{folder} holds no weights (no .safetensors, .gguf or .dduf file): not a model folder"
        )
    return sources


def _read_prefix(path: Path, length: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(length)
    except OSError as e:
        raise CacheError(f"cannot read {path}: {e.strerror}") from None


def _safetensors_header(source: Source) -> SafetensorsHeader:
    where = source.file.path
    try:
        head = _read_prefix(source.where, 8)
        n = header_length(head, where)
        if n > MAX_HEADER_BYTES:
            raise ManifestInvalid(f"{where}: a safetensors header of {n} bytes")
        return parse_header(_read_prefix(source.where, 8 + n), source.file.size, where)
    except ManifestInvalid as e:
        raise InputInvalid(f"{e} (not a safetensors file?)") from None


def folder_facts(sources: list[Source]) -> fp.FolderFacts:
    """What the configs say: from the safetensors headers and config.json, else the first
    GGUF file's header."""
    tensors = [s for s in sources if s.file.path.endswith(".safetensors")]
    if tensors:
        headers = [_safetensors_header(s) for s in tensors]
        config = next((s for s in sources if s.file.path == "config.json"), None)
        config_json = None
        if config is not None and config.file.size <= MAX_CONFIG_JSON_BYTES:
            config_json = _read_prefix(config.where, MAX_CONFIG_JSON_BYTES)
        facts = safetensors_facts(headers, config_json)
        return fp.FolderFacts(
            format="safetensors",
            parameters=facts.parameter_count,
            tensor_count=facts.tensor_count,
            dtypes=facts.dtypes,
            weights_bytes=sum(s.file.size for s in tensors),
            architecture=facts.model_type or facts.architecture,
            safetensors_format=(headers[0].metadata or {}).get("format"),
            context_size=facts.context_length,
        )
    ggufs = [s for s in sources if s.file.path.endswith(".gguf")]
    if not ggufs:
        raise InputInvalid("the model has no .safetensors or .gguf weights to describe it")
    try:
        info = read_gguf_file(ggufs[0].where)
    except GGUFInvalid as e:
        raise InputInvalid(f"{ggufs[0].file.path}: {e}") from None
    return fp.FolderFacts(
        format="gguf",
        parameters=info.parameter_count,
        tensor_count=len(info.tensors),
        dtypes=(),
        weights_bytes=sum(s.file.size for s in ggufs),
        architecture=architecture_text(info),
        quantization=quantization_text(info),
        context_size=context_size(info),
    )


class _Chunker:
    """A blob written in pieces: its sha256 and the digests of its chunks."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.whole = hashlib.sha256()
        self.hashes: list[bytes] = []
        self.pending = bytearray()
        self.size = 0

    def add(self, data: bytes) -> None:
        self.whole.update(data)
        self.size += len(data)
        self.pending += data
        while len(self.pending) >= self.chunk_bytes:
            self.hashes.append(
                chunk_hash(DEFAULT_CHUNK_ALGORITHM, self.pending[: self.chunk_bytes])
            )
            del self.pending[: self.chunk_bytes]

    def finish(self) -> tuple[Digest, tuple[bytes, ...]]:
        if self.pending:
            self.hashes.append(chunk_hash(DEFAULT_CHUNK_ALGORITHM, self.pending))
            self.pending.clear()
        return Digest(self.whole.hexdigest()), tuple(self.hashes)


class _Store:
    """Blobs into the cache, each blob over a chunk with its local chunk index."""

    def __init__(
        self,
        cache: BlobCache,
        chunk_bytes: int,
        chunk_index: bool,
        written: set[Digest] | None = None,
    ) -> None:
        self.cache = cache
        self.chunk_bytes = chunk_bytes
        self.chunk_index = chunk_index
        # The blobs this layout put into blobs/ (not there before): until a manifest names
        # them, nothing would ever free them (commands/pushfolder.py ``keep_laid_out``).
        self.written = set() if written is None else written

    def _keep_index(self, digest: Digest, size: int, hashes: tuple[bytes, ...]) -> None:
        if not self.chunk_index or size <= self.chunk_bytes:
            return
        chunks = BlobChunks(digest, size, self.chunk_bytes, hashes, DEFAULT_CHUNK_ALGORITHM)
        self.cache.save_local_index(digest, serialize_chunk_index(self.chunk_bytes, [chunks]))

    def file(self, source: Source) -> Layer:
        """The source's bytes as a blob (already one: as it is)."""
        if source.layer is not None:
            return source.layer
        imported = self.cache.import_file(source.where, self.chunk_bytes)
        self._keep_index(imported.digest, imported.size, imported.chunk_hashes)
        if imported.size != source.file.size:
            raise CacheError(f"{source.where} changed while it was read")
        return Layer(imported.digest, "", imported.size)

    def bytes(self, data: bytes) -> Layer:
        digest = Digest.of_bytes(data)
        if not self.cache.has_blob(digest, len(data)):
            self.cache.store_bytes(data, digest)
            self.written.add(digest)
        return Layer(digest, "", len(data))

    def pieces(self, prefix: bytes, source: Path, offset: int, length: int) -> Layer:
        """A blob of ``prefix`` and then ``length`` bytes of ``source`` from ``offset``."""
        return self.joined([prefix, (source, offset, length)])

    def joined(self, parts: list[bytes | tuple[Path, int, int]]) -> Layer:
        """A blob of ``parts`` in order: bytes as they are, ``(file, offset, length)``
        that many bytes of the file from ``offset``."""
        tmp = self.cache.temp_path()
        chunker = _Chunker(self.chunk_bytes)
        source: Path | None = None
        try:
            with open(tmp, "xb") as fout:
                for part in parts:
                    if isinstance(part, bytes):
                        fout.write(part)
                        chunker.add(part)
                        continue
                    source, offset, left = part
                    with open(source, "rb") as fin:
                        fin.seek(offset)
                        while left:
                            data = fin.read(min(COPY_BYTES, left))
                            if not data:
                                raise CacheError(f"{source} ended early")
                            fout.write(data)
                            chunker.add(data)
                            left -= len(data)
                fout.flush()
                os.fsync(fout.fileno())
            digest, hashes = chunker.finish()
            if self.cache.has_blob(digest, chunker.size):
                tmp.unlink()
            else:
                self.cache.publish_file(tmp, digest)
                self.written.add(digest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise os_error(e, f"writing a blob from {source or 'the model'}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._keep_index(digest, chunker.size, hashes)
        return Layer(digest, "", chunker.size)


def lay_out(
    cache: BlobCache,
    sources: list[Source],
    fmt: str,
    *,
    created: datetime,
    chunk_bytes: int = CHUNK_BYTES,
    chunk_index: bool = True,
    written: set[Digest] | None = None,
    extras: fp.ModelfileExtras | None = None,
) -> bytes:
    """Store the blobs of ``sources`` laid out as ``fmt`` and return the manifest's bytes
    (the manifest itself is not written: the caller says under which name, if any).
    ``written`` gets the digests of the blobs written here (tensors, configs) that were not
    in ``blobs/`` before; ``extras``: what a Modelfile FROM the folder adds
    (formats/folderpack.py)."""
    if fmt not in fp.FOLDER_FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(fp.FOLDER_FORMATS)}")
    extras = extras or fp.ModelfileExtras()
    facts = folder_facts(sources)
    if extras.context_size is not None:
        facts = dataclasses.replace(facts, context_size=extras.context_size)
    licenses = extras.license_files({s.file.path for s in sources})
    cache.prepare()
    store = _Store(cache, chunk_bytes, chunk_index, written)
    if fmt == fp.OLLAMA:
        return _ollama(store, sources, facts, extras)
    layers = [fp.file_layer(store.file(s), s.file, fmt) for s in sources]
    created_ns = int(created.timestamp()) * 1_000_000_000
    for path, text in licenses:
        # As ``docker model package --license`` adds one: after the folder's files.
        f = fp.FolderFile(path, len(text), 0o644, created_ns)
        layers.append(fp.file_layer(store.bytes(text), f, fmt))
    body = (fp.dmr_config if fmt == fp.DOCKER else fp.cncf_config)(facts, layers, created)
    config = store.bytes(body)
    config = Layer(config.digest, fp.config_media_type(fmt), config.size)
    return fp.oci_manifest(config, layers, a.CNCF_ARTIFACT if fmt == fp.CNCF else None)


_OLLAMA_LAYER_ORDER = {
    t: i
    for i, t in enumerate(
        (
            MEDIA_TYPE_TEMPLATE,
            MEDIA_TYPE_SYSTEM,
            MEDIA_TYPE_LICENSE,
            MEDIA_TYPE_PARAMS,
            MEDIA_TYPE_MESSAGES,
        )
    )
}


def _read_source(source: Source) -> bytes:
    """A small file of the model (a license), whole."""
    data = _read_prefix(source.where, source.file.size + 1)
    if len(data) != source.file.size:
        raise CacheError(f"{source.where} changed while it was read")
    return data


def _ollama(
    store: _Store,
    sources: list[Source],
    facts: fp.FolderFacts,
    extras: fp.ModelfileExtras,
) -> bytes:
    if facts.format != "safetensors":
        raise UsageError(
            "Ollama's tensor format holds safetensors weights; create a GGUF model with --gguf"
        )
    # A draft/ folder with its config.json (what the mount shows of an Ollama draft model:
    # formats/files.py ``has_draft``) is the model's draft, laid out as ``ollama create``
    # lays out a DRAFT: its tensors ``draft.<tensor>``, its JSON files ``draft/<file>``,
    # after the model's own layers (x/create/draft.go ``CreateDraftLayers``), and the
    # config's ``draft``.
    draft_config = next((s for s in sources if s.file.path == DRAFT_CONFIG), None)

    def is_drafts(path: str) -> bool:
        return draft_config is not None and path.startswith(DRAFT_DIR + "/")

    tensors: dict[bool, dict[str, tuple[Source, int, TensorInfo]]] = {False: {}, True: {}}
    for source in sources:
        if not fp.ollama_tensor_file(source.file.path):
            continue
        drafts = is_drafts(source.file.path)
        header = _safetensors_header(source)
        for t in header.tensors:
            name = DRAFT_TENSOR_PREFIX + t.name if drafts else t.name
            if name in tensors[drafts]:
                raise InputInvalid(
                    f"tensor {t.name!r} is in both {tensors[drafts][name][0].file.path} and "
                    f"{source.file.path}: Ollama's format names each tensor once"
                )
            tensors[drafts][name] = (source, header.data_start, dataclasses.replace(t, name=name))
    kept = {
        s.file.path for s in sources if fp.ollama_json_file(s.file.path, draft_config is not None)
    }
    layers: list[Layer] = []
    for drafts in (False, True):
        for name in sorted(tensors[drafts]):
            source, data_start, t = tensors[drafts][name]
            prefix = fp.one_tensor_prefix(t)
            blob = store.pieces(prefix, source.where, data_start + t.begin, t.nbytes)
            layers.append(fp.tensor_layer(blob, name))
        for source in sources:
            if source.file.path in kept and is_drafts(source.file.path) == drafts:
                layers.append(fp.json_layer(store.file(source), source.file.path))
    draft = None
    if draft_config is not None:
        try:
            draft = fp.draft_config(_read_prefix(draft_config.where, MAX_CONFIG_JSON_BYTES))
        except ValueError as e:
            raise InputInvalid(str(e)) from None
    licenses = [
        s
        for s in sources
        if fp.is_license_file(s.file.path)
        and s.file.size <= MAX_LICENSE_BYTES
        and s.file.path not in kept
    ]
    left_out = [
        s.file.path
        for s in sources
        if s.file.path not in kept and not fp.ollama_tensor_file(s.file.path) and s not in licenses
    ]
    if left_out:
        log.warning(
            "Ollama's tensor format keeps the tensors, the top-level JSON files and the "
            "licenses only: left out %s",
            ", ".join(left_out),
        )
    # After the tensors and JSON, as Ollama's: the Modelfile's layers in Ollama's order
    # (template, system, licenses, params, messages), the folder's licenses before the
    # Modelfile's.
    extra = [(MEDIA_TYPE_LICENSE, _read_source(s)) for s in licenses]
    extra += extras.ollama_layers
    for media_type, data in sorted(extra, key=lambda x: _OLLAMA_LAYER_ORDER[x[0]]):
        blob = store.bytes(data)
        layers.append(Layer(blob.digest, media_type, blob.size))
    body = store.bytes(fp.ollama_config(facts, extras.config_names, draft))
    config = Layer(body.digest, fp.config_media_type(fp.OLLAMA), body.size)
    return fp.ollama_manifest(config, layers)


def create_from_folder(
    cache: BlobCache,
    name: Name,
    folder: Path,
    *,
    format: str | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    chunk_index: bool = True,
    modelfile: tuple[Modelfile, str] | None = None,
) -> Manifest:
    """``modelfs create NAME --dir FOLDER``: the folder's files, then the manifest.
    ``modelfile``: a Modelfile FROM the folder and where it is, for its other lines."""
    fmt = format or fp.DEFAULT_FOLDER_FORMAT
    extras = fp.ModelfileExtras()
    if modelfile is not None:
        extras = fp.modelfile_extras(modelfile[0], fmt, modelfile[1])
    sources = walk_folder(folder)
    created = datetime.now(UTC).replace(microsecond=0)
    raw = lay_out(
        cache,
        sources,
        fmt,
        created=created,
        chunk_bytes=chunk_bytes,
        chunk_index=chunk_index,
        extras=extras,
    )
    manifest = parse_manifest(raw)
    mark_unindexed(cache, manifest.digest, not chunk_index)  # before the manifest
    cache.write_manifest(name, raw)
    cache.unmark_lazy(name)  # created on purpose: pinned
    log.info("created %s from %s as %s (%s)", name, folder, fmt, manifest.digest)
    return manifest


# -- models created with --no-chunk-index ----------------------------------------------------

# A folder model's manifest is exactly what the tools write, so "no chunk index" cannot be
# said in it: one file per such manifest (by digest) says it, for push. It goes when the last
# manifest of that digest leaves the cache (``BlobCache.unlink``: rm, eviction); one left
# behind goes by ``orphans.collect``. It holds the id of the process that wrote it, written
# before the manifest (or, for a layout a push sends, kept only while it runs): while that
# process runs, a mark no manifest has yet is work in progress.


def mark_unindexed(cache: BlobCache, digest: Digest, unindexed: bool = True) -> None:
    """Whether the folder model of manifest ``digest`` was created with ``--no-chunk-index``:
    push then publishes no chunk index beside it (nor beside its other layouts). The same
    folder created again within the second has the same manifest, hence the ``False``."""
    if unindexed:
        cache.write_unindexed_mark(digest)
    else:
        cache.clear_unindexed_marks(digest)


def is_unindexed(cache: BlobCache, digest: Digest) -> bool:
    return cache.has_unindexed_mark(digest)


# -- push --format of a cached folder model --------------------------------------------------

FOLDER_KINDS = {
    a.Kind.DMR_V02: fp.DOCKER,
    a.Kind.MODELPACK: fp.CNCF,
    a.Kind.OLLAMA_TENSORS: fp.OLLAMA,
}


def format_of(manifest: Manifest) -> str | None:
    """The folder format a cached manifest is in, or None (a GGUF model, DMR v0.1 …)."""
    return FOLDER_KINDS.get(a.kind_of(manifest))


def cached_sources(cache: BlobCache, manifest: Manifest, what: str) -> list[Source]:
    """The files of a cached Docker or ModelPack model, each a whole blob of the cache."""
    tree = files_of(manifest)
    if not isinstance(tree, ModelTree):
        raise UsageError(f"{what} has tar layers: only one-file layers can be laid out again")
    sources = []
    for f in tree.files:
        if f.path.split("/", 1)[0] == SIDE_DIR:
            continue
        if f.layer is None:
            raise UsageError(f"{what}: {f.path} is not a layer of its own; cannot lay it out again")
        if not cache.has_blob(f.layer.digest, f.layer.size):
            raise CacheError(f"{what}: {f.path} ({f.layer.digest.short}) is not in the cache")
        mode = 0o644 if f.mode is None else f.mode
        sources.append(
            Source(
                fp.FolderFile(f.path, f.size, mode, f.mtime_ns or 0),
                cache.blob_path(f.layer.digest),
                f.layer,
            )
        )
    # Docker Model Runner's walk order: lexical within each directory, depth first.
    return sorted(sources, key=lambda s: s.file.path.split("/"))


def _assembled_sources(
    cache: BlobCache, store: _Store, tree: ModelTree, created: datetime
) -> list[Source]:
    """The files of an Ollama tensor model (``ollamafolder.ollama_tree``): its JSON files as
    their blobs, each assembled file (``model.safetensors``, shards and their index) written
    as a blob of its own; its Modelfile layers are not files of the folder."""
    created_ns = int(created.timestamp()) * 1_000_000_000
    sources = []
    for f in tree.files:
        if f.path.split("/", 1)[0] == SIDE_DIR:
            continue
        if f.layer is not None:
            if f.layer.media_type != a.OLLAMA_JSON:
                continue  # a Modelfile layer: ollamafolder.ollama_extras carries it
            layer = f.layer
            if not cache.has_blob(layer.digest, layer.size):
                raise CacheError(f"{f.path} ({layer.digest.short}) is not in the cache")
        else:
            parts: list[bytes | tuple[Path, int, int]] = [
                piece.data
                if isinstance(piece, Generated)
                else (cache.blob_path(piece.digest), piece.offset, piece.length)
                for piece in f.extents
            ]
            layer = store.joined(parts)
        file = fp.FolderFile(f.path, layer.size, 0o644, created_ns)
        sources.append(Source(file, cache.blob_path(layer.digest), layer))
    return sorted(sources, key=lambda s: s.file.path.split("/"))


def layout_cached(
    cache: BlobCache,
    name: Name,
    manifest: Manifest,
    fmt: str,
    created: datetime,
    written: set[Digest] | None = None,
) -> Manifest:
    """The cached folder model ``manifest`` as ``fmt``; the cached model is not changed.
    ``written``: as ``lay_out``'s."""
    have = format_of(manifest)
    if have == fmt:
        return manifest
    if have is None:
        raise UsageError(f"{name} is not a model folder: --format {fmt} needs one")
    indexed = not is_unindexed(cache, manifest.digest)
    written = set() if written is None else written
    if have == fp.OLLAMA:
        extras = ollamafolder.ollama_extras(cache, name, manifest, fmt)
        tree = ollamafolder.ollama_tree(cache, name, manifest)
        cache.prepare()
        store = _Store(cache, CHUNK_BYTES, indexed, written)
        sources = _assembled_sources(cache, store, tree, created)
    else:
        sources = cached_sources(cache, manifest, str(name))
        extras = _carried(cache, name, manifest, sources, have, fmt)
    raw = lay_out(
        cache,
        sources,
        fmt,
        created=created,
        chunk_index=indexed,
        written=written,
        extras=extras,
    )
    laid = parse_manifest(raw)
    mark_unindexed(cache, laid.digest, not indexed)
    log.info("%s laid out as %s", name, fmt)
    return laid


def _blob_bytes(cache: BlobCache, layer: Layer, what: str) -> bytes:
    try:
        data = cache.blob_path(layer.digest).read_bytes()
    except FileNotFoundError:
        raise CacheError(f"{what} ({layer.digest.short}) is not in the cache") from None
    except OSError as e:
        raise os_error(e, f"reading {what}") from None
    if len(data) != layer.size:
        raise CacheError(f"{what} ({layer.digest.short}) is {len(data)} bytes, not {layer.size}")
    return data


def _modelfile_context(
    cache: BlobCache, manifest: Manifest, sources: list[Source], name: Name
) -> int | None:
    """A Docker model's ``context_size`` when it is not the folder's own (config.json's):
    what a Modelfile's ``PARAMETER num_ctx`` (``docker model package --context-size``) set."""
    raw = _blob_bytes(cache, manifest.config, f"{name}: the config")
    try:
        said = json.loads(raw)["config"].get("context_size")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ManifestInvalid(f"{name}: its config is not a Docker model config") from None
    if not fp.is_context_size(said):
        return None
    return None if said == folder_facts(sources).context_size else said


def _carried(
    cache: BlobCache,
    name: Name,
    manifest: Manifest,
    sources: list[Source],
    have: str,
    fmt: str,
) -> fp.ModelfileExtras:
    """What a Modelfile added to a cached Docker or ModelPack model that is not a file of it
    (a Docker ``context_size`` of its own) as a line of ``fmt``, where ``fmt`` has a place
    for it (Ollama's params layer); a warning naming it where ``fmt`` has none
    (``folderpack.carried_context``, the rule an Ollama model's ``num_ctx`` follows too).
    License files need nothing here: they stay files, or become Ollama's license layers
    (``_ollama``)."""
    context = _modelfile_context(cache, manifest, sources, name) if have == fp.DOCKER else None
    if context is not None:
        said = "the Docker config's context_size"
        context, warning = fp.carried_context(fmt, context, str(name), said)
        if warning is not None:
            log.warning("%s", warning)
    if fmt != fp.OLLAMA:
        return fp.ModelfileExtras(where=str(name))
    params = None
    if context is not None:
        params = Modelfile(from_="", parameters={"num_ctx": context}).params_json()
    layers = ollama_layer_blobs(params=params)
    return fp.ModelfileExtras(ollama_layers=tuple(layers), where=str(name))


# -- a Modelfile whose FROM is a folder ------------------------------------------------------


def modelfile_folder(text: str, base_dir: Path) -> Path | None:
    """The folder a Modelfile's FROM names (``~`` expanded, relative to the Modelfile's
    directory), or None when it names no directory."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return path if path.is_dir() else None
