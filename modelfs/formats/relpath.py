"""Relative file paths inside a model artifact, cleaned the way Docker Model Runner cleans them.

Paths come from registries (``org.cncf.model.filepath`` annotations, Ollama's descriptor
``name``, tar member names), so every one is hostile until cleaned here: *leading* ``../``
(and ``./``) segments stripped (modctl can emit them; DMR's unpacker strips them too), then
``.`` and empty segments dropped and ``a/../b`` folded; anything that then still escapes
the model's directory (``a/../../b``), is absolute, or cannot be a file name is refused with
``ManifestInvalid``. The result is a POSIX path with no ``.``/``..`` segments.
"""

from __future__ import annotations

import posixpath

from modelfs.errors import ManifestInvalid

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255
MAX_DEPTH = 64


def _shown(path: str) -> str:
    return repr(path[:120])


def clean_path(path: str, where: str) -> str:
    """``path`` as a safe relative path; ``where`` names the source in the error."""
    if not isinstance(path, str) or not path:
        raise ManifestInvalid(f"invalid manifest: {where} has an empty file path")
    if "\0" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestInvalid(f"invalid manifest: {where} file path {_shown(path)} is unusable")
    if path.startswith("/"):
        raise ManifestInvalid(f"invalid manifest: {where} file path {_shown(path)} is absolute")
    segments = path.split("/")
    while segments and segments[0] in ("..", "."):
        segments.pop(0)
    cleaned = posixpath.normpath("/".join(segments)) if segments else ""
    if cleaned in ("", ".", "..") or cleaned.startswith(("/", "../")):
        raise ManifestInvalid(
            f"invalid manifest: {where} file path {_shown(path)} leaves the model's directory"
        )
    segments = cleaned.split("/")
    if ".." in segments:  # normpath leaves none but leading ones; kept as a guard
        raise ManifestInvalid(
            f"invalid manifest: {where} file path {_shown(path)} leaves the model's directory"
        )
    if len(segments) > MAX_DEPTH or any(
        len(s.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for s in segments
    ):
        raise ManifestInvalid(f"invalid manifest: {where} file path {_shown(path)} is too long")
    return cleaned
