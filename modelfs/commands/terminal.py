"""Text from a registry, made safe to print on a terminal.

A model's header, manifest and small blobs are someone else's text: an escape
sequence in a model name can retitle the terminal, hide what follows or move
the cursor, and a newline can forge lines of the report around it. Every such
string is printed through ``printable``: control characters (C0, DEL, C1),
format characters (bidi overrides, zero-width ones) and line or paragraph
separators become Python-style escapes (``\\x1b``, ``\\n``, ``\\u202e``); all
other text, non-ASCII included, is printed as it is.
"""

from __future__ import annotations

import unicodedata

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if (short := _SHORT.get(char)) is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, keep: str = "") -> str:
    """``text`` with its control characters escaped, except those in ``keep`` (e.g. "\\n")."""
    if text.isprintable():  # nearly always: nothing to do
        return text
    return "".join(
        _escape(c) if c not in keep and unicodedata.category(c) in _ESCAPED_CATEGORIES else c
        for c in text
    )
