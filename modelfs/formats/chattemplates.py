"""Chat templates: a GGUF's Jinja ``tokenizer.chat_template`` to the Go template Ollama uses.

An Ollama model's template layer is a Go ``text/template``, not Jinja, and nothing converts
one into the other in general. ``ollama create`` from a GGUF does what this module does: it
compares the GGUF's Jinja with the Jinja of the templates in its table (``template/index.json``
in ollama/ollama), takes the nearest by Levenshtein distance if that is under 100 edits, and
writes that entry's hand-written Go template (``<name>.gotmpl``) as the template layer, with
its stop words (``<name>.json``) as params. A Jinja template near none of them gets no
template layer (Ollama then prompts with ``{{ .Prompt }}`` alone). Same table, same choice,
same bytes: a model created here has the digests ``ollama create`` gives it.

The table is Ollama's own files, copied unchanged into ``ollama_templates/`` with Ollama's
MIT license (see ``ollama_templates/README.md`` for where they come from).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

# Ollama's template.Named: a match is the nearest table entry closer than this many edits.
MATCH_DISTANCE = 100


@dataclass(frozen=True)
class OllamaTemplate:
    """One entry of Ollama's table: its name, Go template and stop words."""

    name: str
    template: bytes  # the Go template, line endings normalised to "\n" as Ollama does
    stop: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    jinja: str
    known: OllamaTemplate


@functools.cache
def _table() -> tuple[_Entry, ...]:
    files = resources.files(__package__).joinpath("ollama_templates")
    entries = []
    for item in json.loads(files.joinpath("index.json").read_text("utf-8")):
        name = item["name"]
        body = files.joinpath(f"{name}.gotmpl").read_bytes().replace(b"\r\n", b"\n")
        stop: tuple[str, ...] = ()
        params = files.joinpath(f"{name}.json")
        if params.is_file():
            stop = tuple(json.loads(params.read_text("utf-8")).get("stop") or ())
        entries.append(_Entry(item["template"], OllamaTemplate(name, body, stop)))
    return tuple(entries)


def ollama_template(jinja: str) -> OllamaTemplate | None:
    """The template ``ollama create`` takes for a GGUF whose chat template is ``jinja``: the
    nearest entry of its table (the first of equals), if nearer than MATCH_DISTANCE; else None.

    Only entries within MATCH_DISTANCE of ``jinja``'s length can match, so a long or hostile
    template costs nothing: every comparison is bounded by the table's own sizes.
    """
    best: OllamaTemplate | None = None
    best_distance = MATCH_DISTANCE
    for entry in _table():
        if abs(len(entry.jinja) - len(jinja)) >= best_distance:
            continue  # at least that many insertions or deletions
        distance = levenshtein(jinja, entry.jinja)
        if distance < best_distance:
            best, best_distance = entry.known, distance
    return best


def levenshtein(a: str, b: str) -> int:
    """Edit distance between two strings, in code points (as Go's levenshtein on runes).

    Myers' bit-parallel algorithm (Hyyrö's formulation for the global distance), one column
    of the dynamic-programming table per character of ``a`` in a few operations on an
    integer as wide as ``b``: O(len(a) * len(b) / word) rather than O(len(a) * len(b)).
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    positions: dict[str, int] = {}
    for i, ch in enumerate(b):
        positions[ch] = positions.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    vp, vn, distance = mask, 0, m
    for ch in a:
        eq = positions.get(ch, 0)
        xv = eq | vn
        xh = (((eq & vp) + vp) ^ vp) | eq
        hp = (vn | ~(xh | vp)) & mask
        hn = vp & xh
        if hp & top:
            distance += 1
        elif hn & top:
            distance -= 1
        hp = ((hp << 1) | 1) & mask
        hn = (hn << 1) & mask
        vp = (hn | ~(xv | hp)) & mask
        vn = hp & xv
    return distance
