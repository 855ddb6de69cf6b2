"""Content digests: parsing, the two spellings (``sha256:hex`` and ``sha256-hex``), hashing.

Only sha256 is accepted: it is what Ollama and the Docker registry use, and a
digest we cannot check is a digest we must not trust.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from modelfs.errors import CacheError, DigestInvalid

_HEX_RE = re.compile(r"[0-9a-f]{64}")
HASH_READ_BYTES = 4 << 20


@dataclass(frozen=True, order=True)
class Digest:
    """A sha256 digest; ``str()`` gives the registry form ``sha256:<hex>``."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX_RE.fullmatch(self.hex):
            raise DigestInvalid(f"invalid digest {self.hex!r}: want 64 lowercase hex characters")

    @classmethod
    def parse(cls, text: object) -> Digest:
        """Parse ``sha256:<hex>`` (registry form) or ``sha256-<hex>`` (file-name form)."""
        if not isinstance(text, str):
            raise DigestInvalid(f"invalid digest {text!r}: not a string")
        algo, sep, hexpart = text.partition(":")
        if not sep:
            algo, sep, hexpart = text.partition("-")
        if not sep or algo != "sha256":
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise DigestInvalid(f"invalid digest {shown!r}: only sha256:<hex> is supported")
        if not _HEX_RE.fullmatch(hexpart):
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise DigestInvalid(f"invalid digest {shown!r}: want 64 lowercase hex characters")
        return cls(hexpart)

    @classmethod
    def of_bytes(cls, data: bytes | bytearray | memoryview) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    @property
    def filename(self) -> str:
        """The name Ollama gives the blob file: ``sha256-<hex>``."""
        return f"sha256-{self.hex}"

    @property
    def short(self) -> str:
        """A 12-character prefix for logs and progress lines."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def hash_file_into(h: hashlib._Hash, fd: int, start: int, end: int) -> None:
    """Feed bytes ``[start, end)`` of an open file to ``h``; blocking, call it in a worker thread."""
    pos = start
    while pos < end:
        data = os.pread(fd, min(HASH_READ_BYTES, end - pos), pos)
        if not data:
            raise CacheError(f"file ended at byte {pos} of {end} while hashing")
        h.update(data)
        pos += len(data)
