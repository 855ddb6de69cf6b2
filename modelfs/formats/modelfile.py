"""Modelfiles: read as ``ollama create`` reads them, printed as ``ollama show --modelfile`` does.

This module owns the Modelfile syntax (Ollama's ``parser/parser.go``: its state
machine, quoting and comment rules, quirks included), the table of PARAMETER
names and their types (``api.Options``), turning PARAMETER values into the typed
values Ollama stores (``api.FormatParams``: float32, int64, bool, []string), and
the exact bytes of the params and messages blobs Ollama's server writes for them
(``server/create.go``). It reads no files and resolves nothing: FROM, ADAPTER and
DRAFT come back as written, for the caller to tell paths from model names.

A Modelfile is usually someone else's text, so its size and command count are
bounded, every scan is linear, and every problem becomes ``ModelfileInvalid``
with a one-line message naming the line. Where Ollama silently does something
odd (drops a NUL, reads ``PARAMETER system x`` as SYSTEM, replaces bad UTF-8)
this module refuses instead; everything it accepts means what Ollama would make
of it.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from modelfs.errors import InputInvalid
from modelfs.formats.gofmt import (
    go_json_any,
    go_json_string,
    go_parse_float32,
    go_v_float,
)
from modelfs.formats.manifest import (
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
)

# Bounds on hostile input. Real Modelfiles are a few KiB and a few dozen commands;
# the biggest are long templates or licenses (tens of KiB) and few-shot MESSAGE lists.
MAX_MODELFILE_BYTES = 16 << 20
MAX_COMMANDS = 1 << 16
MAX_SHOWN_CHARS = 60  # of user text quoted in an error message

# PARAMETER names and the Python type of their value, from the json tags and Go types of
# api.Options and its embedded api.Runner (ollama/ollama api/types.go), as api.FormatParams
# converts them: float32 -> float, int and *int -> int, *bool -> bool, []string -> list (of str).
PARAMETER_TYPES: dict[str, type] = {
    # api.Runner
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,
    # api.Options
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}

# Ollama's parser.deprecatedParameters: accepted (whatever the value), warned about, dropped.
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

COMMANDS = (
    "from",
    "parameter",
    "template",
    "system",
    "adapter",
    "license",
    "message",
    "draft",
    "renderer",
    "parser",
    "requires",
)
MESSAGE_ROLES = ("system", "user", "assistant")

# CreateRequest switches on the command's name before it treats one as a parameter, so
# Ollama reads "PARAMETER system x" as SYSTEM x ("model" is its name for FROM). Refused here.
_COMMAND_NAMES_IN_CREATE = {
    "model": "FROM",
    "draft": "DRAFT",
    "adapter": "ADAPTER",
    "template": "TEMPLATE",
    "system": "SYSTEM",
    "license": "LICENSE",
    "renderer": "RENDERER",
    "parser": "PARSER",
    "requires": "REQUIRES",
    "message": "MESSAGE",
}

_BOOL_WORDS = {
    "1": True,
    "t": True,
    "T": True,
    "true": True,
    "TRUE": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "false": False,
    "FALSE": False,
    "False": False,
}


class ModelfileInvalid(InputInvalid):
    """A Modelfile Ollama would refuse (or silently misread); the message names the line."""


class ParametersInvalid(InputInvalid):
    """Model parameters given as JSON (``create --params``) that a PARAMETER line could not
    give; the message names the parameter."""


@dataclass(frozen=True)
class Modelfile:
    """What a Modelfile asks ``ollama create`` for, with Ollama's rules for repeats applied:
    the last TEMPLATE, SYSTEM, RENDERER, PARSER and REQUIRES win (an empty TEMPLATE or SYSTEM
    leaves the base model's, so it reads as None); every LICENSE is its own layer; PARAMETER
    stop lines add up while a repeated scalar parameter keeps its last value.

    FROM, ADAPTER and DRAFT keep every line, in order, because what Ollama does with repeats
    depends on the filesystem: it merges the files of every FROM (or DRAFT) that is a local
    path (a model and its projector) and, of FROMs that are model names, keeps the last. Of
    several ADAPTER lines Ollama uses only the last.
    """

    from_: str
    from_line: int = field(default=0, compare=False)
    template: str | None = None
    system: str | None = None
    parameters: dict[str, object] = field(default_factory=dict)
    licenses: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    adapters: tuple[str, ...] = ()
    more_from: tuple[str, ...] = ()  # FROM lines after the first
    drafts: tuple[str, ...] = ()
    renderer: str | None = None
    parser: str | None = None
    requires: str | None = None  # a semver without the "v", as Ollama stores it
    # Deprecated parameters the Modelfile set; Ollama warns about them and drops them.
    ignored_parameters: tuple[str, ...] = field(default=(), compare=False)

    def params_json(self) -> bytes | None:
        """The params blob (``application/vnd.ollama.image.params``) exactly as Ollama's
        server writes it for these parameters, or None when there are none.

        Ollama's client sends the typed values as JSON, the server decodes them into a
        ``map[string]any`` (so every number becomes a float64) and writes that with
        ``json.NewEncoder``: keys sorted, compact, ``<``, ``>`` and ``&`` escaped, a final
        newline. A base model's params blob is merged in by the server (these keys win);
        that is the caller's to do.
        """
        if not self.parameters:
            return None
        try:
            return (go_json_any(dict(self.parameters)) + "\n").encode()
        except ValueError as e:
            raise ModelfileInvalid(f"parameter {e}") from None

    def messages_json(self) -> bytes | None:
        """The messages blob (``application/vnd.ollama.image.messages``) as Ollama writes it:
        a JSON array of ``{"role", "content"}`` objects and a final newline; None if none."""
        if not self.messages:
            return None
        items = ",".join(
            f'{{"role":{go_json_string(role)},"content":{go_json_string(content)}}}'
            for role, content in self.messages
        )
        return f"[{items}]\n".encode()

    def ollama_layers(self) -> list[tuple[str, bytes]]:
        """The Modelfile layers ``ollama create`` writes for this Modelfile's TEMPLATE,
        SYSTEM, LICENSE, PARAMETER and MESSAGE lines (``ollama_layer_blobs``)."""
        return ollama_layer_blobs(
            template=self.template.encode() if self.template is not None else None,
            system=self.system.encode() if self.system is not None else None,
            licenses=[text.encode() for text in self.licenses],
            params=self.params_json(),
            messages=self.messages_json(),
        )


def ollama_layer_blobs(
    *,
    template: bytes | None = None,
    system: bytes | None = None,
    licenses: Iterable[bytes] = (),
    params: bytes | None = None,
    messages: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """(media type, bytes) of the Modelfile layers of a model, in the order Ollama's server
    appends them: template, system, each license, params, messages; None: no layer."""
    out: list[tuple[str, bytes]] = []
    if template is not None:
        out.append((MEDIA_TYPE_TEMPLATE, template))
    if system is not None:
        out.append((MEDIA_TYPE_SYSTEM, system))
    out += [(MEDIA_TYPE_LICENSE, text) for text in licenses]
    if params is not None:
        out.append((MEDIA_TYPE_PARAMS, params))
    if messages is not None:
        out.append((MEDIA_TYPE_MESSAGES, messages))
    return out


# -- reading ----------------------------------------------------------------------------------


def parse_modelfile(text: str | bytes) -> Modelfile:
    """Parse a Modelfile as ``ollama create`` does, or raise ``ModelfileInvalid``.

    Bytes are decoded as Ollama decodes a file: UTF-8, or UTF-16 when they start with a
    UTF-16 byte-order mark; a UTF-8 byte-order mark is skipped.
    """
    text = _decode(text)
    if text.startswith("\ufeff"):
        text = text[1:]
    if (nul := text.find("\x00")) >= 0:
        raise _invalid(_Lines(text).at(nul), "contains a NUL character")
    commands = _scan(text)
    return _interpret(commands)


@dataclass(frozen=True)
class _Command:
    line: int
    name: str  # one of COMMANDS
    word: str  # the command as written, for messages
    value: str
    key: str = ""  # the parameter name or the message role


def _invalid(line: int | None, what: str) -> ModelfileInvalid:
    where = "Modelfile" if line is None else f"Modelfile line {line}"
    return ModelfileInvalid(f"{where}: {what}")


def _show(s: str) -> str:
    """User text quoted for a one-line message: escaped, and cut if long."""
    cut = s[:MAX_SHOWN_CHARS] + ("…" if len(s) > MAX_SHOWN_CHARS else "")
    return json.dumps(cut, ensure_ascii=False)


def _decode(text: str | bytes) -> str:
    if isinstance(text, str):
        if len(text) > MAX_MODELFILE_BYTES:
            raise _too_big(len(text))
        if (bad := _SURROGATE.search(text)) is not None:
            raise _invalid(_Lines(text).at(bad.start()), "not valid UTF-8")
        size = len(text.encode())
        if size > MAX_MODELFILE_BYTES:
            raise _too_big(size)
        return text
    data = bytes(text)
    if len(data) > MAX_MODELFILE_BYTES:
        raise _too_big(len(data))
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        encoding = "utf-16-le" if data[:2] == b"\xff\xfe" else "utf-16-be"
        body = data[2:]
    else:
        encoding = "utf-8"
        body = data[3:] if data[:3] == b"\xef\xbb\xbf" else data
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as e:
        before = body[: e.start - e.start % 2] if encoding != "utf-8" else body[: e.start]
        line = _Lines(before.decode(encoding, "replace")).at(None)
        name = "UTF-8" if encoding == "utf-8" else "UTF-16"
        raise _invalid(line, f"not valid {name}") from None


def _too_big(size: int) -> ModelfileInvalid:
    return ModelfileInvalid(
        f"Modelfile is {size / (1 << 20):.1f} MiB, over the {MAX_MODELFILE_BYTES >> 20} MiB limit"
    )


_SURROGATE = re.compile("[\ud800-\udfff]")
# Ollama's stateNil: spaces, tabs and line breaks between commands, and "#" comments that
# run to the end of their line. One match skips any run of them.
_SKIP = re.compile(r"(?:[ \t\r\n]++|#[^\r\n]*+)*+")
_LETTERS = re.compile(r"[A-Za-z]*")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_]*")
_LINE_BREAK = re.compile(r"[\r\n]")
_UNTIL_SPACE = re.compile(r"[^ \t\r\n]*")
_BLANKS = " \t\r\n"  # all the whitespace a value's buffer can hold (the rest is dropped)


class _Lines:
    """Line numbers of positions in ``text``: "\\n", "\\r\\n" and a lone "\\r" each end a
    line. Counting is incremental, so asking in increasing order is linear overall."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int | None) -> int:
        t = self.text
        if pos is None:
            pos = len(t)
        if pos < self.pos:
            self.pos, self.line = 0, 1
        a = self.pos
        n = t.count("\n", a, pos) + t.count("\r", a, pos) - t.count("\r\n", a, pos)
        if 0 < a < pos and t[a - 1] == "\r" and t[a] == "\n":
            n -= 1  # the "\n" of a "\r\n" already counted at its "\r"
        self.pos, self.line = pos, self.line + n
        return self.line


def _has_odd(s: str) -> bool:
    """Whether s holds a rune Ollama drops from values (anything but printable runes, tabs
    and line breaks)."""
    return not s.replace("\n", "").replace("\r", "").replace("\t", "").isprintable()


@functools.cache
def _odd_ranges() -> tuple[str, tuple[tuple[int, str], ...]]:
    """Regex class bodies of the runes Ollama drops from values (not strconv.IsPrint, and
    not a tab or line break): the BMP ones, and the astral ones grouped by 4096-rune block
    of plane 1 (key: the block's first rune) with everything above plane 1 under key 0.
    Python's isprintable draws the same line as IsPrint: categories L, M, N, P, S and the
    ASCII space. Built on first need, from every code point (~0.2 s)."""
    bmp: list[str] = []
    astral: dict[int, list[str]] = {}
    start = -1
    for cp in range(0x110001):
        odd = cp < 0x110000 and cp not in (9, 10, 13) and not chr(cp).isprintable()
        if odd and start < 0:
            start = cp
        elif not odd and start >= 0:
            while start < cp:  # split at the BMP's end, at plane-1 blocks, at plane 2
                if start < 0x10000:
                    end, bucket = min(cp, 0x10000), bmp
                elif start < 0x20000:
                    key = start & ~0xFFF
                    end, bucket = min(cp, key + 0x1000), astral.setdefault(key, [])
                else:
                    end, bucket = cp, astral.setdefault(0, [])
                bucket.append(f"\\U{start:08x}-\\U{end - 1:08x}")
                start = end
            start = -1
    return "".join(bmp), tuple((k, "".join(v)) for k, v in sorted(astral.items()))


@functools.cache
def _odd(extra: str = "") -> str:
    """A regex atom for one dropped rune (or one of ``extra``). sre tests the BMP class in
    constant time but a class of astral ranges one range after another, so astral runes go
    through a lookahead per plane-1 block first (emoji's block first): a dozen tests and a
    short list instead of some 350 ranges."""
    bmp, astral = _odd_ranges()
    branches = []
    for key, body in sorted(astral, key=lambda kv: kv[0] != 0x1F000):
        if key:
            branches.append(f"(?=[\\U{key:08x}-\\U{key + 0xFFF:08x}])[{body}]")
        else:
            branches.append(f"(?=[\\U00020000-\\U0010ffff])[{body}]")
    return f"(?:[{extra}{bmp}]|(?=[\\U00010000-\\U0010ffff])(?:{'|'.join(branches)}))"


@functools.cache
def _odd_re() -> re.Pattern[str]:
    return re.compile(f"{_odd()}++")


@functools.cache
def _closing_re(quote: str, odd: bool) -> re.Pattern[str]:
    """A line that closes an open quote: its kept text, right-trimmed, ends with the quote.
    With ``odd``, dropped runes may sit between and after the quote marks."""
    gap = _odd() + "*+" if odd else ""
    blank = _odd(" \t") + "*+" if odd else "[ \t]*+"
    marks = gap.join('"' * len(quote))
    return re.compile(f"{marks}{blank}(?=[\\r\\n]|\\Z)")


def _printable(s: str, odd: bool | None = None) -> str:
    """What Ollama keeps of a value's text: the runes strconv.IsPrint accepts, tabs, breaks."""
    if s.isprintable() or not (_has_odd(s) if odd is None else odd):
        return s
    return _odd_re().sub("", s)


def _scan(text: str) -> list[_Command]:
    """Ollama's ParseFile: the command words and their raw values, in order."""
    commands: list[_Command] = []
    lines = _Lines(text)
    odd = _has_odd(text)
    n = len(text)
    pos = 0
    while True:
        pos = _SKIP.match(text, pos).end()
        if pos >= n:
            return commands
        if len(commands) >= MAX_COMMANDS:
            raise _invalid(lines.at(pos), f"more than {MAX_COMMANDS} commands")
        line = lines.at(pos)
        # stateName: whatever rune starts the word is part of it (a non-printable one is
        # dropped, as Ollama keeps only printable runes), then only ASCII letters.
        first = text[pos]
        end = _LETTERS.match(text, pos + 1).end()
        word = (first if first.isprintable() else "") + text[pos + 1 : end]
        name = word.lower()
        if end >= n or text[end] not in " \t":
            shown = text[pos : _UNTIL_SPACE.match(text, pos).end()]
            if name in COMMANDS and (end >= n or text[end] in "\r\n"):
                raise _invalid(line, f"{word} has no {_ARGUMENT[name]}")
            raise _invalid(line, f"unknown command {_show(shown)} ({_EXPECTED})")
        if name not in COMMANDS:
            raise _invalid(line, f"unknown command {_show(word)} ({_EXPECTED})")
        pos = end + 1
        key = ""
        if name in ("parameter", "message"):
            pattern = _PARAM_NAME if name == "parameter" else _LETTERS
            end = pattern.match(text, pos).end()
            key = text[pos:end]
            if end >= n or text[end] not in " \t":
                if end >= n or text[end] in "\r\n":
                    what = "value" if name == "parameter" else "text"
                    raise _invalid(line, f"{word} {key} has no {what}".replace("  ", " "))
                bad = text[pos : _UNTIL_SPACE.match(text, pos).end()]
                if name == "parameter":
                    raise _invalid(line, f"PARAMETER {_show(bad)}: not a parameter name")
                raise _invalid(line, _bad_role(bad))
            if name == "message" and key not in MESSAGE_ROLES:
                raise _invalid(line, _bad_role(key))
            if name == "parameter" and not key:
                raise _invalid(line, "PARAMETER has no name (one space before the name)")
            pos = end + 1
        value, pos = _read_value(text, pos, line, word, odd)
        commands.append(_Command(line, name, word, value, key))


_ARGUMENT = {
    "from": "model name or path",
    "parameter": "name and value",
    "template": "template",
    "system": "system prompt",
    "adapter": "path",
    "license": "license text",
    "message": "role and text",
    "draft": "path",
    "renderer": "renderer name",
    "parser": "parser name",
    "requires": "version",
}
_EXPECTED = "expected one of " + ", ".join(c.upper() for c in COMMANDS)


def _bad_role(role: str) -> str:
    return f"MESSAGE role must be system, user or assistant, not {_show(role)}"


def _read_value(text: str, start: int, line: int, word: str, odd: bool = True) -> tuple[str, int]:
    """Ollama's stateValue from ``start``: the value and the position after it.

    The value runs to a line break at which its kept text so far (printable runes, spaces,
    tabs and line breaks; trimmed) is not an open quote: a bare value ends with its line; a
    quoted one at the first line break after its closing quote, so text after the closing
    quote on the same line keeps it open. On lines after the first that means the line's
    kept text, right-trimmed, ends with the quote, which one regex search finds (``odd``
    says whether the text may hold runes Ollama drops, which that search must skip).
    """
    n = len(text)
    i = _next_break(text, start)
    first = _printable(text[start:i], None if odd else False)
    lead = first.lstrip(" \t")
    if not lead.startswith('"'):
        return first.strip(" \t"), i + 1
    quote = '"""' if lead.startswith('"""') else '"'
    q = len(quote)
    trimmed = lead.rstrip(" \t")
    if len(trimmed) >= 2 * q and trimmed.endswith(quote):
        return trimmed[q:-q], i + 1
    close = _closing_re(quote, odd).search(text, i + 1) if i < n else None
    if close is None:
        raise _invalid(
            line,
            f"{word}: the {quote} opened here is never closed (a closing {quote} must end its line)",
        )
    end = close.end()
    value = _printable(text[start:end], None if odd else False).strip(_BLANKS)
    return value[q:-q], end + 1


def _next_break(text: str, pos: int) -> int:
    brk = _LINE_BREAK.search(text, pos)
    return brk.start() if brk else len(text)


def _interpret(commands: list[_Command]) -> Modelfile:
    """Ollama's CreateRequest: what the commands ask for, typed, with repeats resolved."""
    froms = [c for c in commands if c.name == "from"]
    if not froms:
        raise ModelfileInvalid("Modelfile has no FROM line")
    fields: dict[str, str | None] = {}
    parameters: dict[str, object] = {}
    lists: dict[str, list[str]] = {
        "from": [],
        "adapter": [],
        "draft": [],
        "license": [],
    }
    messages: list[tuple[str, str]] = []
    ignored: list[str] = []
    for c in commands:
        if c.name in ("from", "adapter", "draft"):
            if not c.value:
                raise _invalid(c.line, f"{c.word} has no {_ARGUMENT[c.name]}")
            lists[c.name].append(c.value)
        elif c.name == "license":
            lists["license"].append(c.value)
        elif c.name in ("template", "system", "renderer", "parser"):
            fields[c.name] = c.value
        elif c.name == "requires":
            version = c.value if c.value.startswith("v") else "v" + c.value
            if not _semver_valid(version):
                raise _invalid(c.line, f"REQUIRES: {_show(c.value)} is not a version like 0.14.0")
            fields["requires"] = version[1:]
        elif c.name == "message":
            messages.append((c.key, c.value))
        elif c.key in DEPRECATED_PARAMETERS:
            if c.key not in ignored:
                ignored.append(c.key)
        else:
            kind = _parameter_type(c)
            typed = _typed_value(c, kind)
            if kind is list:
                stops = parameters.setdefault(c.key, [])
                assert isinstance(stops, list)
                stops.append(typed)
            else:
                parameters[c.key] = typed
    return Modelfile(
        from_=lists["from"][0],
        from_line=froms[0].line,
        template=fields.get("template") or None,
        system=fields.get("system") or None,
        parameters=parameters,
        licenses=tuple(lists["license"]),
        messages=tuple(messages),
        adapters=tuple(lists["adapter"]),
        more_from=tuple(lists["from"][1:]),
        drafts=tuple(lists["draft"]),
        renderer=fields.get("renderer") or None,
        parser=fields.get("parser") or None,
        requires=fields.get("requires"),
        ignored_parameters=tuple(ignored),
    )


def _parameter_type(c: _Command) -> type:
    if c.key in _COMMAND_NAMES_IN_CREATE:
        command = _COMMAND_NAMES_IN_CREATE[c.key]
        raise _invalid(c.line, f"PARAMETER {c.key}: not a parameter (write it as {command})")
    kind = PARAMETER_TYPES.get(c.key)
    if kind is None:
        raise _invalid(c.line, f"PARAMETER {c.key}: {_unknown_parameter(c.key)}")
    return kind


def _unknown_parameter(name: str) -> str:
    close = difflib.get_close_matches(name, PARAMETER_TYPES, n=1)
    return "unknown parameter" + (f" (did you mean {close[0]}?)" if close else "")


_FLOAT32_MAX_VALUE = 3.4028234663852886e38


def parameters_from_json(
    doc: Mapping[str, object], where: str = "params"
) -> tuple[dict[str, object], tuple[str, ...]]:
    """Model parameters given as a JSON object (``modelfs create --params``), checked by the
    table PARAMETER lines are: the same names, and values of the types Ollama stores (a
    finite number for a float, a whole number for an int, true or false, a list of strings
    for stop). Returns the parameters, the deprecated ones left out as Ollama leaves them
    out, and the names left out; raises ParametersInvalid naming ``where`` and the name."""
    kept: dict[str, object] = {}
    ignored: list[str] = []
    for name, value in doc.items():
        if name in DEPRECATED_PARAMETERS:
            ignored.append(name)
            continue
        kind = PARAMETER_TYPES.get(name)
        if kind is None:
            shown = name if _PARAM_NAME.fullmatch(name) and name else _show(name)
            raise ParametersInvalid(f"{where}: {shown}: {_unknown_parameter(name)}")
        problem = _json_type_problem(kind, value)
        if problem:
            text = json.dumps(value, ensure_ascii=False)
            text = text[:MAX_SHOWN_CHARS] + ("…" if len(text) > MAX_SHOWN_CHARS else "")
            raise ParametersInvalid(f"{where}: {name}: {text} {problem}")
        kept[name] = value
    return kept, tuple(ignored)


def _json_type_problem(kind: type, value: object) -> str | None:
    """Why a JSON value cannot be a parameter of this type, or None."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool:
        return None if isinstance(value, bool) else "is not true or false"
    if kind is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else 'is not a list of strings (e.g. ["</s>"])'
    if kind is int:
        if not number or (isinstance(value, float) and not value.is_integer()):
            return "is not a whole number"  # PARAMETER's words; inf and nan are not whole either
        return None if -(1 << 63) <= int(value) < (1 << 63) else "is out of range (64-bit integer)"
    if not number or not math.isfinite(value):  # type: ignore[arg-type]
        return "is not a finite number"
    return None if abs(value) <= _FLOAT32_MAX_VALUE else "is out of range (32-bit float)"  # type: ignore[operator]


def _typed_value(c: _Command, kind: type) -> object:
    """api.FormatParams for one value: strconv.ParseFloat(v, 32), ParseInt(v, 10, 64),
    ParseBool(v), or the string itself."""
    v = c.value
    if kind is list:
        return v
    if kind is bool:
        if v not in _BOOL_WORDS:
            raise _invalid(c.line, f"PARAMETER {c.key}: {_show(v)} is not true or false")
        return _BOOL_WORDS[v]
    if kind is int:
        if not _GO_INT.fullmatch(v):
            raise _invalid(c.line, f"PARAMETER {c.key}: {_show(v)} is not a whole number")
        digits = v.lstrip("+-").lstrip("0")
        number = int(v) if len(digits) <= 19 else None
        if number is None or not -(1 << 63) <= number < (1 << 63):
            raise _invalid(
                c.line, f"PARAMETER {c.key}: {_show(v)} is out of range (64-bit integer)"
            )
        return number
    try:
        return go_parse_float32(v)
    except ValueError as e:
        raise _invalid(c.line, f"PARAMETER {c.key}: {_show(v)} {e}") from None


_GO_INT = re.compile(r"[+-]?[0-9]+")


# -- golang.org/x/mod/semver.IsValid ------------------------------------------------------------


def _semver_int(s: str, i: int) -> int:
    """End of the number at s[i:], or -1: digits, no leading zero."""
    j = i
    while j < len(s) and s[j].isascii() and s[j].isdigit():
        j += 1
    if j == i or (s[i] == "0" and j - i > 1):
        return -1
    return j


def _semver_idents(s: str, numeric_check: bool) -> bool:
    for ident in s.split("."):
        if not ident or not all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in ident):
            return False
        if numeric_check and ident.isdigit() and len(ident) > 1 and ident[0] == "0":
            return False
    return True


def _semver_valid(v: str) -> bool:
    """vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]]: the shorthands v1 and v1.2 count."""
    if not v.startswith("v"):
        return False
    i = 1
    for part in range(3):
        i = _semver_int(v, i)
        if i < 0:
            return False
        if i == len(v):
            return True
        if part < 2:
            if v[i] != ".":
                return False
            i += 1
    rest = v[i:]
    pre, plus, build = rest.partition("+")
    if pre and (not pre.startswith("-") or not _semver_idents(pre[1:], True)):
        return False
    return not plus or _semver_idents(build, False)


# -- printing -----------------------------------------------------------------------------------


def format_modelfile(
    from_: str,
    *,
    template: str | None = None,
    system: str | None = None,
    parameters: Mapping[str, object] | None = None,
    licenses: Iterable[str] = (),
    messages: Iterable[tuple[str, str]] = (),
    adapters: Iterable[str] = (),
    more_from: Iterable[str] = (),
    drafts: Iterable[str] = (),
    renderer: str | None = None,
    parser: str | None = None,
    requires: str | None = None,
) -> str:
    """A Modelfile as ``ollama show --modelfile`` prints one (Ollama's ``Model.String``):
    FROM, ADAPTER, DRAFT, more FROMs, TEMPLATE, SYSTEM, RENDERER, PARSER (and REQUIRES,
    which show leaves out), then one PARAMETER line per value (``stop`` repeated), LICENSE
    and MESSAGE lines. Show's own comment header is the caller's. An empty TEMPLATE or
    SYSTEM prints nothing, as it would mean nothing.

    Values are quoted as Ollama quotes them, except where Ollama's output would not read
    back (a value starting with a quote, a tab at either end, a lone carriage return) and
    integers, which Ollama prints as floats (``1e+06``) its own parser then rejects.
    Whatever this prints, ``parse_modelfile`` reads back to the same values. A value no
    quoting carries through Ollama's parser raises ModelfileInvalid: one holding runes the
    parser drops (control characters, say), or with a line before its last that ends in
    three quotes, which closes every kind of quote early.
    """
    out = [_line("FROM", _nonempty("FROM", from_), raw=True)]
    out += [_line("ADAPTER", _nonempty("ADAPTER", a)) for a in adapters]
    out += [_line("DRAFT", _nonempty("DRAFT", d)) for d in drafts]
    out += [_line("FROM", _nonempty("FROM", f), raw=True) for f in more_from]
    for word, text in (
        ("TEMPLATE", template),
        ("SYSTEM", system),
        ("RENDERER", renderer),
        ("PARSER", parser),
        ("REQUIRES", requires),
    ):
        if text:
            out.append(_line(word, text))
    for name, value in (parameters or {}).items():
        if not _PARAM_NAME.fullmatch(name) or not name:
            raise ModelfileInvalid(f"parameter name {_show(name)} cannot be written in a Modelfile")
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            out.append(_line(f"PARAMETER {name}", _parameter_text(name, v)))
    out += [_line("LICENSE", text) for text in licenses]
    for role, content in messages:
        if not role or not _LETTERS.fullmatch(role):
            raise ModelfileInvalid(f"message role {_show(role)} cannot be written in a Modelfile")
        out.append(_line(f"MESSAGE {role}", content))
    return "".join(out)


def _nonempty(word: str, value: str) -> str:
    if not value:
        raise ModelfileInvalid(f"{word} needs a {_ARGUMENT[word.lower()]}, not an empty string")
    return value


def _parameter_text(name: str, value: object) -> str:
    """fmt's %v of the value as decoded from JSON, except whole numbers stay whole."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if PARAMETER_TYPES.get(name) is int and value.is_integer():
            return str(int(value))
        try:
            return go_v_float(value)
        except ValueError as e:
            raise ModelfileInvalid(f"parameter {e}") from None
    if isinstance(value, str):
        return value
    raise ModelfileInvalid(
        f"PARAMETER {name}: a value of type {type(value).__name__} cannot be written in a Modelfile"
    )


def _ollama_quote(s: str) -> str:
    """Ollama's quote: quotes only around line breaks or leading/trailing spaces."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return f'"""{s}"""' if '"' in s else f'"{s}"'
    return s


def _line(prefix: str, value: str, raw: bool = False) -> str:
    """``prefix value`` and a line break, with the first quoting that reads back as value
    (FROM is printed bare by Ollama, everything else through its quote)."""
    first = value if raw else _ollama_quote(value)
    for candidate in (first, f'"{value}"', f'"""{value}"""'):
        try:
            got, end = _read_value(candidate + "\n", 0, 0, prefix, _has_odd(candidate))
        except ModelfileInvalid:
            continue
        if got == value and end == len(candidate) + 1:
            return f"{prefix} {candidate}\n"
    raise ModelfileInvalid(f"{prefix}: {_show(value)} cannot be written in a Modelfile")
