"""The modelfs exception tree and its mapping to errno.

Every failure a user can cause or meet is one of these classes, with a message
the user can act on. The CLI prints ``modelfs: <message>``; the FUSE layer maps
each class to an errno through ``ERRNO`` (a test checks every class has a row).
httpx exceptions are translated into this tree once, in ``registry``.
"""

from __future__ import annotations

import errno
import json


class ModelfsError(Exception):
    """Base of every error modelfs reports to a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NameInvalid(ModelfsError):
    """A model name (or one of its parts) breaks the naming rules."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f'invalid model name "{name}": {why}')
        self.name = name
        self.why = why


class ModelNotFound(ModelfsError):
    """Neither the registry nor the cache knows the model."""


class ManifestInvalid(ModelfsError):
    """A manifest (or a chunk index, or a config blob) is malformed or hostile."""


class GGUFInvalid(ModelfsError):
    """A file given as GGUF weights is not a readable GGUF file."""


class DigestInvalid(ModelfsError):
    """A digest string is not ``sha256:<64 lowercase hex>``."""


class DigestMismatch(ModelfsError):
    """Bytes did not hash to the digest that vouches for them."""


class LayoutMismatch(DigestMismatch):
    """A file was laid out from unchecked header bytes that its checked blob contradicts:
    the layout is dropped and built again."""


class RegistryError(ModelfsError):
    """The registry answered with an error status we cannot recover from."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unauthorized(RegistryError):
    """The registry refused our credentials (401/403)."""


class Transient(ModelfsError):
    """A network failure that may succeed if tried again (reset, stall, 5xx, 429)."""

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class CacheFull(ModelfsError):
    """The cache's filesystem has no room (ENOSPC) or the cache hit its size bound."""


class CacheError(ModelfsError):
    """The on-disk cache is unusable (permissions, I/O error, corrupted state)."""


class UsageError(ModelfsError):
    """A command was called with arguments that do not fit together."""


class InputInvalid(ModelfsError):
    """A file or value given to a command is refused for what it says (a Modelfile line, a model
    parameter); the message names where. The command line itself was fine: exit 1, not 2."""


class MountError(ModelfsError):
    """Mounting or unmounting failed."""


class ShuttingDown(ModelfsError):
    """Work was ended because modelfs is shutting down: not a failure of what it was asking
    (a mirror, a registry), so nothing is retried, rested or logged for it."""


ERRNO: dict[type[ModelfsError], int] = {
    ModelfsError: errno.EIO,
    NameInvalid: errno.ENOENT,
    ModelNotFound: errno.ENOENT,
    ManifestInvalid: errno.EIO,
    GGUFInvalid: errno.EIO,
    DigestInvalid: errno.ENOENT,
    DigestMismatch: errno.EIO,
    LayoutMismatch: errno.EIO,
    RegistryError: errno.EIO,
    Unauthorized: errno.EACCES,
    Transient: errno.EIO,
    CacheFull: errno.ENOSPC,
    CacheError: errno.EIO,
    UsageError: errno.EINVAL,
    InputInvalid: errno.EINVAL,
    MountError: errno.EIO,
    ShuttingDown: errno.EIO,
}


def errno_for(exc: ModelfsError) -> int:
    """The errno a reader sees for ``exc``: the row of its nearest class in ``ERRNO``."""
    for cls in type(exc).__mro__:
        if cls in ERRNO:
            return ERRNO[cls]
    return errno.EIO


def registry_words(body: bytes, limit: int = 200) -> str:
    """A registry's own words from an error body: Docker's ``{"errors": [{code, message}]}``,
    Ollama's single ``{code, message}`` (or ``error``), or plain text; "" if it said nothing."""
    try:
        doc = json.loads(body)
    except ValueError:
        return " ".join(body.decode("utf-8", "replace").split())[:limit]
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("message") or first.get("code") or "")[:limit]
        for key in ("error", "message", "details", "code"):
            if isinstance(doc.get(key), str):
                return doc[key][:limit]
    return ""


def first_modelfs_error(group: BaseExceptionGroup) -> ModelfsError | None:
    """The first modelfs error in a group of concurrent failures (nested groups searched in
    order): the one a caller reports, as one line, for all of them."""
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            if (found := first_modelfs_error(e)) is not None:
                return found
        elif isinstance(e, ModelfsError):
            return e
    return None
