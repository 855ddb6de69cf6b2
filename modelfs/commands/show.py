"""``modelfs show``: what a model is, from its manifest, its small blobs and its GGUF header.

Reads the manifest from the cache, else from the registry; the small blobs
(template, system prompt, params, licenses, messages) whole; the weights blob
only as far as its GGUF header (``blobs/header``): a cold ``show`` of a 5 GB
model moves a few megabytes. A model of safetensors files (DMR, ModelPack, Ollama's
tensor layers) is laid out as a mount shows it, and its facts read from its
``config.json`` and its weights files' headers (``blobs.files.read_folder_facts``). ``show`` of a model the cache does not have leaves
nothing behind: while it runs, its manifest is recorded as pending and the model
evictable (as a mount's reads would: a ``show`` killed midway leaves a partial
model ``rm`` and eviction can remove), and at the end the model is removed again
with every blob and partial blob no other model names. A model already in the
cache (complete, or partly read through a mount) keeps what ``show`` fetched.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import trio

from modelfs.blobs.blobcache import BlobCache
from modelfs.blobs.door import blob_layer
from modelfs.blobs.fetchcontext import FetchSettings
from modelfs.blobs.folderfacts import FolderFacts, read_folder_facts
from modelfs.blobs.header import ModelHeader, read_model_header
from modelfs.blobs.reader import Blobs
from modelfs.commands.inventory import present_bytes
from modelfs.commands.progress import human_bytes
from modelfs.commands.terminal import printable
from modelfs.errors import GGUFInvalid, ManifestInvalid, ModelfsError
from modelfs.formats.artifacts import Kind, kind_of
from modelfs.formats.gguf import human_number
from modelfs.formats.manifest import Layer, Manifest, layer_filenames, parse_manifest
from modelfs.formats.modelfile import format_modelfile
from modelfs.formats.names import Name
from modelfs.formats.safetensors import OLLAMA_QUANTIZED
from modelfs.registry.client import Registry

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.gguf"
# Small layers read whole for the report, by file name in the tag directory.
TEXT_FILES = ("template", "system", "params.json", "messages.json")
LICENSE_STEM = "license"


@dataclass(frozen=True)
class LayerRow:
    file: str
    layer: Layer
    cached_bytes: int
    verification: str


@dataclass
class ModelReport:
    name: Name
    manifest: Manifest
    source: str  # where the manifest came from: "cache" or the registry host
    layers: list[LayerRow]
    header: ModelHeader | None = None
    header_error: str | None = None  # the weights are not a GGUF file modelfs can read
    texts: dict[str, str] = field(default_factory=dict)  # template, system, ... as written
    # A model of files (not classic Ollama): its files and safetensors facts, or why not.
    folder: FolderFacts | None = None
    folder_error: str | None = None
    licenses: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, object]:
        try:
            doc = json.loads(self.texts.get("params.json", "{}"))
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def messages(self) -> list[tuple[str, str]]:
        try:
            doc = json.loads(self.texts.get("messages.json", "[]"))
        except ValueError:
            return []
        if not isinstance(doc, list):
            return []
        return [
            (str(m.get("role", "")), str(m.get("content", ""))) for m in doc if isinstance(m, dict)
        ]


async def show(
    cache: BlobCache, registry: Registry, name: Name, settings: FetchSettings | None = None
) -> ModelReport:
    """Everything ``modelfs show`` prints about ``name``; fetches at most its header and small blobs."""
    await trio.to_thread.run_sync(cache.prepare)
    loaded = await trio.to_thread.run_sync(cache.load_manifest, name)
    if loaded is not None:
        return await _report(cache, registry, name, loaded[0], "cache", settings)
    manifest = parse_manifest(await registry.get_manifest(name))
    await trio.to_thread.run_sync(_record, cache, name, manifest)
    try:
        report = await _report(cache, registry, name, manifest, name.host, settings)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_forget, cache, name, manifest)
    # What the report said was cached is gone again: a blob that was complete is read whole
    # next time (checked against its digest as it arrives).
    layers = []
    for row in report.layers:
        cached = await trio.to_thread.run_sync(present_bytes, cache, row.layer)
        how = (
            "whole"
            if row.verification == "complete" and cached < row.layer.size
            else row.verification
        )
        layers.append(LayerRow(row.file, row.layer, cached, how))
    report.layers = layers
    return report


async def _report(
    cache: BlobCache,
    registry: Registry,
    name: Name,
    manifest: Manifest,
    source: str,
    settings: FetchSettings | None,
) -> ModelReport:
    async with trio.open_nursery() as nursery:
        blobs = blob_layer(cache, registry, nursery, settings or FetchSettings())
        report = ModelReport(name, manifest, source, [])
        files = layer_filenames(manifest)
        weights = next((layer for f, layer in files if f == WEIGHTS_FILE), None)
        if weights is not None:
            try:
                report.header = await read_model_header(blobs, name, manifest, weights)
            except GGUFInvalid as e:
                report.header_error = str(e)
        elif kind_of(manifest) is not Kind.OLLAMA:
            try:
                report.folder = await read_folder_facts(blobs, name, manifest)
            except ManifestInvalid as e:
                report.folder_error = str(e)
        for file, layer in files:
            if file in TEXT_FILES or file.startswith(LICENSE_STEM):
                text = await _read_text(blobs, name, manifest, layer)
                if file.startswith(LICENSE_STEM):
                    report.licenses.append(text)
                else:
                    report.texts[file] = text
        verification = [await blobs.verification(name, manifest, layer) for _f, layer in files]
        nursery.cancel_scope.cancel()
    # After the fetches have closed: what they fetched is saved and counts as cached.
    for (file, layer), how in zip(files, verification, strict=True):
        cached = await trio.to_thread.run_sync(present_bytes, cache, layer)
        report.layers.append(LayerRow(file, layer, cached, how))
    return report


def _record(cache: BlobCache, name: Name, manifest: Manifest) -> None:
    """Remember the manifest as a mount would: pending until its blobs are all here, evictable."""
    if cache.read_manifest(name, pending=True) != manifest.raw:
        cache.write_manifest(name, manifest.raw, pending=True)
    cache.mark_lazy(name)


def _forget(cache: BlobCache, name: Name, manifest: Manifest) -> None:
    """Undo ``_record``: remove the pending manifest ``show`` wrote, and the blobs and partial
    blobs no other model names. Not if the model became complete meanwhile, or another
    manifest took the name (a pull, a mount reading another version)."""
    if cache.read_manifest(name) is not None:
        return
    if cache.read_manifest(name, pending=True) != manifest.raw:
        return
    try:
        cache.unlink(name)
    except ModelfsError as e:
        log.warning("could not remove what show fetched of %s: %s", name, e)


async def _read_text(blobs: Blobs, name: Name, manifest: Manifest, layer: Layer) -> str:
    handle = await blobs.open(name, manifest, layer)
    try:
        return (await handle.read_all()).decode("utf-8", "replace")
    finally:
        await handle.close()


# -- output ------------------------------------------------------------------------------------


def _memory(report: ModelReport, contexts: list[int]) -> list[dict[str, int | None]]:
    facts = report.header.facts if report.header else None
    if facts is None:
        return []
    return [
        {
            "context": ctx,
            "weights_bytes": facts.weights_bytes,
            "kv_cache_bytes": facts.kv_cache_bytes(ctx),
            "total_bytes": facts.memory_bytes(ctx),
        }
        for ctx in contexts
    ]


def _contexts(report: ModelReport, ctx: int | None) -> list[int]:
    out = []
    facts = report.header.facts if report.header else None
    if facts is not None and facts.context_length:
        out.append(facts.context_length)
    if ctx is not None and ctx not in out:
        out.append(ctx)
    return out


MEMORY_ESTIMATE = (
    "the weights as stored in their dtypes, from the safetensors headers; "
    "KV cache and an engine's buffers not counted"
)


def _folder_json(report: ModelReport) -> dict[str, object]:
    folder = report.folder
    if folder is None:
        return {"header": {"error": report.folder_error}, "model": None, "memory": []}
    facts = folder.facts
    return {
        "model": None if facts is None else {"format": "safetensors", **facts.as_dict()},
        "header": {"bytes": folder.bytes_read, "checked": folder.checked},
        "memory": (
            []
            if facts is None
            else [{"weights_bytes": facts.memory_bytes, "estimate": MEMORY_ESTIMATE}]
        ),
        "files": [{"path": f.path, "size_bytes": f.size} for f in folder.tree.files],
    }


def as_json(report: ModelReport, ctx: int | None = None) -> dict[str, object]:
    doc = _as_json(report, ctx)
    if report.folder is not None or report.folder_error is not None:
        doc.update(_folder_json(report))
    return doc


def _as_json(report: ModelReport, ctx: int | None = None) -> dict[str, object]:
    header = report.header
    return {
        "name": str(report.name),
        "digest": str(report.manifest.digest),
        "manifest_from": report.source,
        "size_bytes": report.manifest.total_bytes,
        "model": header.facts.as_dict() if header else None,
        "header": (
            {
                "verification": header.verification,
                "checked": header.checked,
                "bytes": header.info.header_bytes,
                "chunks_read": header.chunks_read,
            }
            if header
            else {"error": report.header_error}
        ),
        "memory": _memory(report, _contexts(report, ctx)),
        "layers": [
            {
                "file": row.file,
                "media_type": row.layer.media_type,
                "digest": str(row.layer.digest),
                "size_bytes": row.layer.size,
                "cached_bytes": row.cached_bytes,
                "verification": row.verification,
            }
            for row in report.layers
        ],
        "parameters": report.params,
        "system": report.texts.get("system"),
        "template": report.texts.get("template"),
        "licenses": report.licenses,
        "messages": [{"role": r, "content": c} for r, c in report.messages],
    }


VERIFY_TEXT = {
    "complete": "complete in the cache, checked whole",
    "index": "each chunk checked against the model's chunk index",
    "published-index": "each chunk checked against a chunk index published beside it",
    "chunksums": "each chunk checked against the registry's chunksums",
    "local-index": "each chunk checked against a local chunk index",
    "whole": "fetched whole and checked before it is read",
    "deferred": "served as fetched, checked whole when complete (verify=deferred)",
}


def _rows(pairs: list[tuple[str, str]]) -> list[str]:
    pairs = [(printable(k), printable(v)) for k, v in pairs]
    width = max(len(k) for k, _ in pairs)
    return [f"    {k:<{width}}    {v}" for k, v in pairs]


def _lines(text: str) -> list[str]:
    """A multi-line text from the registry, one escaped and indented line per line."""
    return [f"    {printable(line)}" for line in text.splitlines()]


def as_text(report: ModelReport, ctx: int | None = None) -> str:
    """The report for a terminal: every string from the registry or the header escaped
    (``commands.terminal``), so none can move the cursor, hide text or forge a line."""
    out = []
    header = report.header
    if header is not None:
        f = header.facts
        pairs = [
            ("architecture", f.architecture or "-"),
            ("parameters", human_number(f.parameter_count)),
            ("quantization", f.quantization or "-"),
            ("context length", str(f.context_length or "-")),
            ("embedding length", str(f.embedding_length or "-")),
            ("block count", str(f.block_count or "-")),
            ("tensors", str(f.tensor_count)),
            ("chat template", "yes" if f.chat_template else "no"),
        ]
        if f.name:
            pairs.insert(0, ("name", f.name))
        out += ["  Model", *_rows(pairs), ""]
    elif report.header_error:
        out += ["  Model", f"    {printable(report.header_error)}", ""]
    elif report.folder is not None and report.folder.facts is not None:
        out += _folder_model(report.folder)
    elif report.folder_error:
        out += ["  Model", f"    {printable(report.folder_error)}", ""]
    out.append("  Layers")
    files = [printable(r.file) for r in report.layers]
    media_types = [printable(r.layer.media_type) for r in report.layers]
    width = max(len(f) for f in files)
    mt_width = max(len(m) for m in media_types)
    for r, file, media_type in zip(report.layers, files, media_types, strict=True):
        out.append(
            f"    {file:<{width}}  {media_type:<{mt_width}}  "
            f"{human_bytes(r.layer.size):>9}  cached {human_bytes(r.cached_bytes):>9}  "
            f"{printable(r.verification)}"
        )
    out.append("")
    if report.folder is not None:
        out += _folder_files(report.folder)
    if header is not None:
        how = VERIFY_TEXT.get(header.verification, header.verification)
        checked = (
            "checked"
            if header.checked
            else "NOT checked (the blob can only be checked whole; the header was read to show it)"
        )
        out += [
            "  Verification",
            f"    {WEIGHTS_FILE}: {printable(how)}",
            f"    header: {human_bytes(header.info.header_bytes)} in {header.chunks_read} "
            f"chunk(s), {checked}",
            "",
        ]
        memory = _memory(report, _contexts(report, ctx))
        if memory and memory[0]["kv_cache_bytes"] is not None:
            out.append("  Memory (weights + KV cache in f16; compute buffers not counted)")
            out += _rows(
                [
                    (
                        f"{m['context']} tokens",
                        f"{human_bytes(m['weights_bytes'] or 0)} + "
                        f"{human_bytes(m['kv_cache_bytes'] or 0)} = "
                        f"{human_bytes(m['total_bytes'] or 0)}",
                    )
                    for m in memory
                ]
            )
            out.append("")
        elif memory:
            out += [
                "  Memory",
                f"    weights {human_bytes(header.facts.weights_bytes)} "
                "(no attention shape in the header: KV cache not estimated)",
                "",
            ]
    if report.params:
        out.append("  Parameters")
        out += _rows([(k, json.dumps(v)) for k, v in report.params.items()])
        out.append("")
    if system := report.texts.get("system"):
        out += ["  System", *_lines(system), ""]
    for text in report.licenses:
        lines = _lines(text.strip())
        shown = lines[:2] + (["    ..."] if len(lines) > 2 else [])
        out += ["  License", *shown, ""]
    return "\n".join(out)


def _folder_model(folder: FolderFacts) -> list[str]:
    f = folder.facts
    assert f is not None
    pairs = [
        ("architecture", f.architecture or "-"),
        ("parameters", f"{human_number(f.parameter_count)} ({f.parameter_count:,})"),
        ("dtypes", ", ".join(f.dtypes) or "-"),
        ("context length", str(f.context_length or "-")),
        ("tensors", str(f.tensor_count)),
    ]
    if f.ollama_quantized:
        pairs.append(("quantization", OLLAMA_QUANTIZED))
    return [
        "  Model (safetensors)",
        *_rows(pairs),
        "",
        f"  Memory (estimate: {MEMORY_ESTIMATE})",
        f"    weights {human_bytes(f.memory_bytes)}",
        "",
    ]


def _folder_files(folder: FolderFacts) -> list[str]:
    out = ["  Files"]
    paths = [printable(f.path) for f in folder.tree.files]
    width = max((len(p) for p in paths), default=0)
    for f, path in zip(folder.tree.files, paths, strict=True):
        out.append(f"    {path:<{width}}  {human_bytes(f.size):>9}")
    checked = "checked" if folder.checked else "NOT checked (blobs that can only be checked whole)"
    out += [f"    headers and config.json: {human_bytes(folder.bytes_read)} read, {checked}", ""]
    return out


def as_modelfile(
    report: ModelReport,
    blob_path: str | None,
    adapters: tuple[str, ...] = (),
    projectors: tuple[str, ...] = (),
) -> str:
    """The model as a Modelfile (``ollama show --modelfile``): FROM the weights' blob file
    when it is complete in the cache, else the model's name; adapters and projectors by
    their blob files. ``modelfs create -f`` reads it back to the same model."""
    shortest = report.name.display_shortest()
    head = (
        '# Modelfile generated by "modelfs show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {shortest}\n\n"
    )
    return head + format_modelfile(
        blob_path or shortest,
        template=report.texts.get("template"),
        system=report.texts.get("system"),
        parameters=report.params,
        licenses=tuple(report.licenses),
        messages=tuple(report.messages),
        adapters=adapters,
        more_from=projectors,
    )
