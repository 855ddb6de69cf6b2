"""What ``modelfs show`` and the mount's xattrs say about a model made of safetensors files.

The facts (``safetensors.SafetensorsFacts``: architecture, parameter count, dtypes,
context length) come from the model's ``config.json`` and the headers of its top-level
``*.safetensors`` files — never their data. Like ``files.files_of`` this is pure: it
reads the files through ``known`` blob bytes and answers ``Needs`` (blob ranges) until
it has them: the first 8 bytes of each weights file, then its header. Generated pieces
(the headers modelfs lays out for Ollama's tensor blobs) need no fetching.
"""

from __future__ import annotations

from modelfs.errors import ManifestInvalid
from modelfs.formats.files import BlobBytes, ByteRequest, Extent, ModelFile, ModelTree, Needs
from modelfs.formats.safetensors import (
    MAX_HEADER_BYTES,
    SafetensorsFacts,
    header_length,
    parse_header,
    safetensors_facts,
)

CONFIG_JSON = "config.json"
MAX_CONFIG_JSON_BYTES = 1 << 20


def _read(file: ModelFile, offset: int, length: int, known: BlobBytes, needs: list) -> bytes | None:
    """Bytes of ``file`` if all are known; else the missing blob ranges are added to ``needs``."""
    out, missing = [], False
    for piece, at, n in file.pieces(offset, length):
        if isinstance(piece, Extent):
            data = known.get(piece.digest, piece.offset + at, n)
            if data is None:
                needs.append(ByteRequest(piece.digest, piece.offset + at, n))
                missing = True
                continue
            out.append(data)
        else:
            out.append(piece.data[at : at + n])
    return None if missing else b"".join(out)


def weights_files(tree: ModelTree) -> list[ModelFile]:
    """The top-level ``*.safetensors`` files: what an engine loads as the model."""
    return [f for f in tree.files if "/" not in f.path and f.path.endswith(".safetensors")]


def facts_of(tree: ModelTree, known: BlobBytes) -> SafetensorsFacts | Needs | None:
    """The model's facts; ``Needs`` while bytes are missing; None if it has no safetensors."""
    weights = weights_files(tree)
    if not weights:
        return None
    needs: list[ByteRequest] = []
    headers = []
    for f in weights:
        where = f"file {f.path[:120]!r}"
        head = _read(f, 0, min(8, f.size), known, needs)
        if head is None:
            continue
        n = header_length(head, where)
        if n > MAX_HEADER_BYTES or 8 + n > f.size:
            raise ManifestInvalid(f"{where}: the safetensors header runs past the file")
        full = _read(f, 0, 8 + n, known, needs)
        if full is not None:
            headers.append(parse_header(full, f.size, where))
    config_bytes = None
    config = tree.file(CONFIG_JSON)
    if config is not None and config.size <= MAX_CONFIG_JSON_BYTES:
        config_bytes = _read(config, 0, config.size, known, needs)
    if needs:
        return Needs(tuple(dict.fromkeys(needs)))
    return safetensors_facts(headers, config_bytes)
