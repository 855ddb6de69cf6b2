"""modelfs.formats.modelfile: Ollama's Modelfile syntax, typed PARAMETERs, the params and
messages blobs, printing one back, and the bounds on hostile input.

"Ollama" below means ollama/ollama at the commit read for this module: parser/parser.go
(ParseFile, Command.String, quote, CreateRequest), api/types.go (Options, Runner,
FormatParams), server/create.go (setParameters, setMessages) and server/images.go
(Model.String, which ``ollama show --modelfile`` prints).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfs.errors import InputInvalid, UsageError
from modelfs.formats.modelfile import (
    DEPRECATED_PARAMETERS,
    MAX_COMMANDS,
    MAX_MODELFILE_BYTES,
    PARAMETER_TYPES,
    Modelfile,
    ModelfileInvalid,
    ParametersInvalid,
    _scan,
    format_modelfile,
    parameters_from_json,
    parse_modelfile,
)


def parse(*lines: str) -> Modelfile:
    return parse_modelfile("\n".join(lines) + "\n")


def error_of(text: str | bytes) -> str:
    with pytest.raises(ModelfileInvalid) as caught:
        parse_modelfile(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- every command ----------------------------------------------------------------------------


def test_a_modelfile_using_every_command() -> None:
    mf = parse(
        "# a comment",
        "FROM llama3.2:3b",
        "FROM ./mmproj.gguf",
        "ADAPTER ./lora.gguf",
        "DRAFT ./draft",
        'TEMPLATE """{{ .System }} {{ .Prompt }}"""',
        "SYSTEM You are Mario.",
        "PARAMETER temperature 0.6",
        "PARAMETER num_ctx 8192",
        "PARAMETER use_mmap false",
        "PARAMETER stop <|eot_id|>",
        "LICENSE MIT",
        "MESSAGE user Is it a me?",
        "MESSAGE assistant It is a you.",
        "RENDERER qwen3-coder",
        "PARSER qwen3-coder",
        "REQUIRES 0.14.0",
    )
    assert mf.from_ == "llama3.2:3b"
    assert mf.from_line == 2
    assert mf.more_from == ("./mmproj.gguf",)
    assert mf.adapters == ("./lora.gguf",)
    assert mf.drafts == ("./draft",)
    assert mf.template == "{{ .System }} {{ .Prompt }}"
    assert mf.system == "You are Mario."
    assert mf.parameters == {
        "temperature": 0.6,
        "num_ctx": 8192,
        "use_mmap": False,
        "stop": ["<|eot_id|>"],
    }
    assert mf.licenses == ("MIT",)
    assert mf.messages == (("user", "Is it a me?"), ("assistant", "It is a you."))
    assert mf.renderer == "qwen3-coder"
    assert mf.parser == "qwen3-coder"
    assert mf.requires == "0.14.0"


def test_only_from_is_required() -> None:
    mf = parse("FROM llama3.2")
    assert mf == Modelfile("llama3.2")
    assert (mf.template, mf.system, mf.parameters, mf.licenses, mf.messages) == (
        None,
        None,
        {},
        (),
        (),
    )
    assert mf.params_json() is None
    assert mf.messages_json() is None


@pytest.mark.parametrize("case", [str.upper, str.lower, str.title, str.swapcase])
def test_commands_are_case_insensitive(case: Callable[[str], str]) -> None:
    mf = parse(
        f"{case('from')} base",
        f"{case('system')} hi",
        f"{case('parameter')} top_k 5",
        f"{case('message')} user hello",
        f"{case('license')} MIT",
    )
    assert mf.from_ == "base"
    assert mf.system == "hi"
    assert mf.parameters == {"top_k": 5}
    assert mf.messages == (("user", "hello"),)
    assert mf.licenses == ("MIT",)


def test_parameter_names_and_roles_are_case_sensitive() -> None:
    # FormatParams looks names up by their exact json tag; the role check is exact too.
    assert "unknown parameter" in error_of("FROM x\nPARAMETER Temperature 1\n")
    assert "MESSAGE role" in error_of("FROM x\nMESSAGE User hi\n")


def test_comments_blank_lines_and_indentation() -> None:
    mf = parse_modelfile(
        "\n\n# leading comment\n   # indented comment\n\t\nFROM base\n\n  SYSTEM   hello   \n#end"
    )
    assert mf.from_ == "base"
    assert mf.from_line == 6
    assert mf.system == "hello"


def test_a_hash_after_a_command_is_part_of_its_value() -> None:
    # Comments are whole lines: Ollama has no trailing comments.
    assert parse("FROM base # the base model").from_ == "base # the base model"


def test_bare_values_run_to_the_end_of_the_line_and_are_trimmed() -> None:
    assert parse("FROM     FOOO BAR    ").from_ == "FOOO BAR"
    assert parse("FROM x", "SYSTEM \t a \t b \t").system == "a \t b"


def test_quoted_values_keep_their_spaces() -> None:
    mf = parse('FROM "     model 1"', 'LICENSE "MIT       "')
    assert mf.from_ == "     model 1"
    assert mf.licenses == ("MIT       ",)


def test_triple_quotes_span_lines() -> None:
    mf = parse("FROM x", 'TEMPLATE """', "{{ .Prompt }}", "", '  indented"""')
    assert mf.template == "\n{{ .Prompt }}\n\n  indented"


def test_triple_quotes_hold_quotes() -> None:
    mf = parse("FROM x", 'SYSTEM """Say "Hello!"', 'and "bye"."""')
    assert mf.system == 'Say "Hello!"\nand "bye".'
    # From Ollama's TestParseFileQuoted: SYSTEM """''"'""'""'"'''''""'""'"""
    inner = "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'"
    assert parse("FROM x", f'SYSTEM """{inner}"""').system == inner


def test_single_quotes_span_lines_too() -> None:
    assert parse("FROM x", 'SYSTEM "one', 'two"').system == "one\ntwo"


def test_a_quote_closes_only_at_the_end_of_a_line() -> None:
    # Ollama checks for the closing quote only at line breaks, so a quote followed by more
    # text on its line does not close: the value runs on to a line that ends in a quote.
    assert parse("FROM x", 'SYSTEM "a" b', 'c"').system == 'a" b\nc'
    # ...and a line ending in three quotes closes a triple-quoted value mid-"sentence".
    mf = parse("FROM x", 'SYSTEM """say """', "PARAMETER top_k 1")
    assert mf.system == "say "
    assert mf.parameters == {"top_k": 1}


def test_empty_quoted_values() -> None:
    assert parse("FROM x", 'LICENSE ""', 'LICENSE """"""', "LICENSE ").licenses == ("", "", "")


def test_crlf_line_endings() -> None:
    mf = parse_modelfile('FROM x\r\nSYSTEM """a\r\nb"""\r\nLICENSE L\r\n')
    # Inside a quoted value Ollama keeps every line break rune as it is, "\r" included.
    assert mf.system == "a\r\nb"
    assert mf.licenses == ("L",)


def test_runes_ollama_drops_from_values() -> None:
    # Ollama keeps only strconv.IsPrint runes (and spaces, tabs, line breaks) in a value:
    # a no-break space, a zero-width joiner and a tag character vanish.
    mf = parse("FROM x", "SYSTEM a\u00a0b\u200dc\U000e0041d\x0be")
    assert mf.system == "abcde"
    # A dropped rune may sit inside the closing quotes.
    assert parse("FROM x", 'SYSTEM """a', '""\u200b"\u00a0').system == "a\n"


def test_an_invisible_rune_before_a_command_is_ignored_like_ollama() -> None:
    assert parse("\u00a0FROM x").from_ == "x"
    assert "unknown command" in error_of("\u00a0\u00a0FROM x\n")


# -- repeats ----------------------------------------------------------------------------------


def test_last_template_system_renderer_parser_requires_win() -> None:
    mf = parse(
        "FROM x",
        "TEMPLATE one",
        "TEMPLATE two",
        "SYSTEM one",
        "SYSTEM two",
        "RENDERER r1",
        "RENDERER r2",
        "PARSER p1",
        "PARSER p2",
        "REQUIRES 0.1.0",
        "REQUIRES v0.2.0",
    )
    assert (mf.template, mf.system, mf.renderer, mf.parser, mf.requires) == (
        "two",
        "two",
        "r2",
        "p2",
        "0.2.0",
    )


def test_an_empty_template_or_system_means_none() -> None:
    # The server sets a template or system layer only for a non-empty one, so an empty
    # last TEMPLATE leaves the base model's: the earlier TEMPLATE is lost too.
    mf = parse("FROM x", "TEMPLATE t", 'TEMPLATE ""', 'SYSTEM ""')
    assert mf.template is None
    assert mf.system is None


def test_licenses_messages_adapters_and_froms_accumulate() -> None:
    mf = parse(
        "FROM a",
        "LICENSE one",
        "ADAPTER x.gguf",
        "FROM b",
        "LICENSE two",
        "MESSAGE user q",
        "MESSAGE assistant a",
        "ADAPTER y.gguf",
        "MESSAGE system s",
    )
    assert mf.from_ == "a"
    assert mf.more_from == ("b",)
    assert mf.licenses == ("one", "two")
    assert mf.adapters == ("x.gguf", "y.gguf")
    assert mf.messages == (("user", "q"), ("assistant", "a"), ("system", "s"))


def test_message_content_may_contain_colons_and_quotes() -> None:
    mf = parse("FROM x", 'MESSAGE user a: "b": c', 'MESSAGE assistant """', 'multi "line"', '"""')
    assert mf.messages == (("user", 'a: "b": c'), ("assistant", '\nmulti "line"\n'))


# -- typed parameters -------------------------------------------------------------------------


def test_the_parameter_table_follows_api_options() -> None:
    assert PARAMETER_TYPES["temperature"] is float
    assert PARAMETER_TYPES["num_ctx"] is int
    assert PARAMETER_TYPES["main_gpu"] is int  # *int in api.Runner
    assert PARAMETER_TYPES["use_mmap"] is bool  # *bool in api.Runner
    assert PARAMETER_TYPES["stop"] is list
    assert len(PARAMETER_TYPES) == 20
    assert not DEPRECATED_PARAMETERS & set(PARAMETER_TYPES)


def test_typed_values() -> None:
    mf = parse(
        "FROM x",
        "PARAMETER temperature 0.7",
        "PARAMETER top_k 40",
        "PARAMETER seed -1",
        "PARAMETER num_predict +128",
        "PARAMETER use_mmap T",
        "PARAMETER main_gpu 0",
        "PARAMETER min_p 1",
        "PARAMETER stop ### User:",
    )
    p = mf.parameters
    assert p == {
        "temperature": 0.7,
        "top_k": 40,
        "seed": -1,
        "num_predict": 128,
        "use_mmap": True,
        "main_gpu": 0,
        "min_p": 1.0,
        "stop": ["### User:"],
    }
    assert [type(p[k]) for k in p] == [float, int, int, int, bool, int, float, list]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.7", 0.7),
        ("1", 1.0),
        ("1.", 1.0),
        (".5", 0.5),
        ("-0", -0.0),
        ("1e-7", 1e-7),
        ("1E3", 1000.0),
        ("1_000.5", 1000.5),  # Go float syntax allows underscores between digits
        ("0x1p-2", 0.25),  # and hexadecimal floats
        ("0x1.8P1", 3.0),
        # float32, as the client sends it: the shortest digits that name the float32
        ("0.1234567891", 0.12345679),
        ("16777217", 16777216.0),
        ("3.4028235e38", 3.4028235e38),
        ("7.1e-46", 1e-45),  # rounds up to the smallest subnormal
        ("7e-46", 0.0),  # rounds down to zero
        ("1e-99999999", 0.0),
    ],
)
def test_floats_are_read_as_float32_like_go(text: str, value: float) -> None:
    got = parse("FROM x", f"PARAMETER temperature {text}").parameters["temperature"]
    assert got == value
    assert math.copysign(1, got) == math.copysign(1, value)


def test_floats_round_like_float32_exactly() -> None:
    # Halfway between the float32s 1 and 1+2**-23 rounds to even (1); a hair above rounds up;
    # a thousand digits later the hair still counts.
    halfway = "1.000000059604644775390625"  # 1 + 2**-24 exactly
    assert parse("FROM x", f"PARAMETER top_p {halfway}").parameters["top_p"] == 1.0
    above = halfway + "0" * 1000 + "1"
    got = parse("FROM x", f"PARAMETER top_p {above}").parameters["top_p"]
    assert struct.unpack("<f", struct.pack("<f", got))[0] == 1 + 2**-23
    assert got == 1.0000001  # kept as the shortest digits naming that float32


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("temperature", "hot", "is not a number"),
        ("temperature", '" 0.5"', "is not a number"),
        ("temperature", "1__0", "is not a number"),
        ("temperature", "_1", "is not a number"),
        ("temperature", "0x1", "is not a number"),  # a hex float needs its p exponent
        ("temperature", "1e", "is not a number"),
        ("temperature", "inf", "is not a finite number"),
        ("temperature", "NaN", "is not a finite number"),
        ("temperature", "3.5e38", "is out of range (32-bit float)"),
        ("num_ctx", "4k", "is not a whole number"),
        ("num_ctx", "1e6", "is not a whole number"),
        ("num_ctx", "4_096", "is not a whole number"),
        ("num_ctx", "٤", "is not a whole number"),  # Go reads ASCII digits only
        ("seed", "9223372036854775808", "is out of range (64-bit integer)"),
        ("use_mmap", "yes", "is not true or false"),
    ],
)
def test_values_of_the_wrong_type(name: str, text: str, why: str) -> None:
    message = error_of(f"FROM x\n\nPARAMETER {name} {text}\n")
    assert message.startswith(f"Modelfile line 3: PARAMETER {name}: ")
    assert message.endswith(why)


def test_a_long_exponent_is_capped_like_go() -> None:
    # Go's readFloat stops adding exponent digits once the exponent reaches 10000, so
    # 0.<99999 zeros>1e100000 (really 0.1) reads as 0.1e-89999, which is 0.
    text = "0." + "0" * 99_999 + "1e100000"
    assert parse("FROM x", f"PARAMETER temperature {text}").parameters["temperature"] == 0.0
    assert parse("FROM x", "PARAMETER temperature 0.0001e4").parameters["temperature"] == 1.0


def test_int64_limits() -> None:
    mf = parse("FROM x", "PARAMETER seed -9223372036854775808", "PARAMETER num_keep 00001")
    assert mf.parameters == {"seed": -(1 << 63), "num_keep": 1}


def test_a_repeated_scalar_keeps_the_last_value_and_stops_add_up() -> None:
    mf = parse(
        "FROM x",
        "PARAMETER stop a",
        "PARAMETER temperature 0.1",
        "PARAMETER stop b",
        "PARAMETER temperature 0.9",
        'PARAMETER stop "c "',
    )
    assert mf.parameters == {"stop": ["a", "b", "c "], "temperature": 0.9}


def test_deprecated_parameters_are_dropped_whatever_their_value() -> None:
    mf = parse("FROM x", "PARAMETER mirostat anything", "PARAMETER top_k 1")
    assert mf.parameters == {"top_k": 1}
    assert mf.ignored_parameters == ("mirostat",)


def test_command_names_are_not_parameters() -> None:
    # Ollama would read "PARAMETER system x" as SYSTEM x; refused here.
    assert error_of("FROM x\nPARAMETER system hi\n") == (
        "Modelfile line 2: PARAMETER system: not a parameter (write it as SYSTEM)"
    )
    assert "write it as FROM" in error_of("FROM x\nPARAMETER model y\n")


def test_unknown_parameters_suggest_a_near_name() -> None:
    assert error_of("FROM x\nPARAMETER temprature 1\n") == (
        "Modelfile line 2: PARAMETER temprature: unknown parameter (did you mean temperature?)"
    )


# -- the blobs ----------------------------------------------------------------------------------

TYPICAL = """FROM llama3.2
TEMPLATE \"\"\"{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}\"\"\"
PARAMETER temperature 0.6
PARAMETER top_p 0.9
PARAMETER num_ctx 8192
PARAMETER stop <|start_header_id|>
PARAMETER stop <|end_header_id|>
PARAMETER stop <|eot_id|>
PARAMETER use_mmap true
MESSAGE user Tom & Jerry?
MESSAGE assistant "Cat
and <mouse>."
"""


def test_params_json_is_what_ollama_writes() -> None:
    # CreateRequest types the values (float32 0.6, int64 8192, bool, []string); the client
    # marshals them (a float32 as its shortest digits, "0.6"); the server decodes into
    # map[string]any (float64 0.6) and setParameters writes json.NewEncoder(...).Encode(p):
    # keys sorted, no spaces, <, > and & escaped as \u003c \u003e \u0026, then "\n".
    assert parse_modelfile(TYPICAL).params_json() == (
        b'{"num_ctx":8192,'
        b'"stop":["\\u003c|start_header_id|\\u003e","\\u003c|end_header_id|\\u003e",'
        b'"\\u003c|eot_id|\\u003e"],'
        b'"temperature":0.6,"top_p":0.9,"use_mmap":true}\n'
    )


def test_params_json_numbers_go_through_float64() -> None:
    # float32(0.1234567891) marshals as 0.12345679; every number reaches the blob as a
    # float64, so a big int64 loses digits and is written as its shortest digits padded with
    # zeros ('f' format below 1e21), and encoding/json writes small numbers as 1e-7, not 1e-07.
    mf = parse(
        "FROM x",
        "PARAMETER temperature 0.1234567891",
        "PARAMETER seed 9007199254740993",
        "PARAMETER num_keep 9223372036854775807",
        "PARAMETER min_p 0.0000001",
        "PARAMETER top_p -0",
        "PARAMETER typical_p 1",
    )
    assert mf.params_json() == (
        b'{"min_p":1e-7,"num_keep":9223372036854776000,"seed":9007199254740992,'
        b'"temperature":0.12345679,"top_p":-0,"typical_p":1}\n'
    )


def test_params_json_refuses_what_go_cannot_write() -> None:
    with pytest.raises(ModelfileInvalid, match="parameter value nan is not a finite number"):
        Modelfile("x", parameters={"temperature": math.nan}).params_json()
    with pytest.raises(ModelfileInvalid, match="parameter value of type set cannot go in JSON"):
        Modelfile("x", parameters={"stop": {"a"}}).params_json()


def test_params_json_of_merged_base_params() -> None:
    # A base model's params blob, decoded, may hold anything JSON does; Go writes it back.
    mf = Modelfile("x", parameters={"num_gqa": None, "stop": [], "z": {"b": 1.5, "a": "&"}})
    assert mf.params_json() == b'{"num_gqa":null,"stop":[],"z":{"a":"\\u0026","b":1.5}}\n'


def test_messages_json_is_what_ollama_writes() -> None:
    # setMessages: json.NewEncoder(...).Encode([]api.Message): role then content (the
    # omitempty fields left out), HTML-escaped, a final "\n".
    assert parse_modelfile(TYPICAL).messages_json() == (
        b'[{"role":"user","content":"Tom \\u0026 Jerry?"},'
        b'{"role":"assistant","content":"Cat\\nand \\u003cmouse\\u003e."}]\n'
    )


def test_json_strings_escape_like_go() -> None:
    mf = Modelfile("x", messages=(("user", 'q"\\\b\f\t\x01\x7f\u2028é😀'),))
    assert mf.messages_json() == (
        '[{"role":"user","content":"q\\"\\\\\\b\\f\\t\\u0001\x7f\\u2028é😀"}]\n'.encode()
    )


# -- errors name the line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM x\n\nFORM y\n", 'Modelfile line 3: unknown command "FORM"'),
        ("FROM x\nFROM:y\n", 'Modelfile line 2: unknown command "FROM:y"'),
        ("FROM x\n\n\nSYSTEM\n", "Modelfile line 4: SYSTEM has no system prompt"),
        ("FROM x\nLICENSE", "Modelfile line 2: LICENSE has no license text"),
        ("FROM x\r\nPARAMETER\r\n", "Modelfile line 2: PARAMETER has no name and value"),
        ("FROM x\nPARAMETER top_k\n", "Modelfile line 2: PARAMETER top_k has no value"),
        (
            "FROM x\nPARAMETER top-k 1\n",
            'Modelfile line 2: PARAMETER "top-k": not a parameter name',
        ),
        ("FROM x\nPARAMETER  top_k 1\n", "Modelfile line 2: PARAMETER has no name"),
        ("FROM x\nMESSAGE user\n", "Modelfile line 2: MESSAGE user has no text"),
        (
            "FROM x\nMESSAGE tool hi\n",
            'Modelfile line 2: MESSAGE role must be system, user or assistant, not "tool"',
        ),
        (
            "FROM x\nMESSAGE user: hi\n",
            'Modelfile line 2: MESSAGE role must be system, user or assistant, not "user:"',
        ),
        ("FROM \n", "Modelfile line 1: FROM has no model name or path"),
        ('FROM x\nADAPTER ""\n', "Modelfile line 2: ADAPTER has no path"),
        (
            "FROM x\nREQUIRES soon\n",
            'Modelfile line 2: REQUIRES: "soon" is not a version like 0.14.0',
        ),
        ("FROM x\nREQUIRES 1.2-rc1\n", "Modelfile line 2: REQUIRES: "),
        ("# only\nSYSTEM hi\n", "Modelfile has no FROM line"),
        ("", "Modelfile has no FROM line"),
    ],
)
def test_errors_name_the_line_and_the_problem(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_an_unterminated_quote_names_the_line_where_it_opened() -> None:
    text = 'FROM x\n\nTEMPLATE """{{ .Prompt }}\nmore\n"" not closed\n'
    assert error_of(text) == (
        'Modelfile line 3: TEMPLATE: the """ opened here is never closed'
        ' (a closing """ must end its line)'
    )
    assert error_of('FROM x\nSYSTEM "a" b\n').startswith(
        'Modelfile line 2: SYSTEM: the " opened here is never closed'
    )
    assert "never closed" in error_of('FROM x\nSYSTEM """a"""b\n')


def test_line_numbers_count_crlf_once_and_a_lone_cr() -> None:
    assert error_of("FROM x\r\n\r\nBAD y\r\n").startswith("Modelfile line 3:")
    assert error_of("FROM x\r\rBAD y\r").startswith("Modelfile line 3:")
    assert error_of('FROM x\nSYSTEM """a\r\nb"""\r\n\nBAD y').startswith("Modelfile line 5:")


def test_a_syntax_error_is_reported_before_a_bad_value_above_it() -> None:
    # Ollama parses the whole file before it types a single value, and so does this module.
    assert error_of("FROM x\nPARAMETER top_k many\nBAD\n").startswith("Modelfile line 3:")


def test_modelfile_invalid_is_invalid_input_not_a_usage_error() -> None:
    # What a file says is refused with exit 1, as a bad GGUF is; exit 2 is for command lines.
    with pytest.raises(InputInvalid) as caught:
        parse_modelfile("SYSTEM no from\n")
    assert not isinstance(caught.value, UsageError)


def test_json_parameters_are_checked_as_parameter_lines_are() -> None:
    """`create --params` and PARAMETER lines: the same names, the same types, the same hint."""
    line = error_of("FROM x\nPARAMETER temprature 1\n")
    assert line.endswith("PARAMETER temprature: unknown parameter (did you mean temperature?)")
    with pytest.raises(ParametersInvalid) as caught:
        parameters_from_json({"temprature": 1}, "--params")
    assert (
        str(caught.value) == "--params: temprature: unknown parameter (did you mean temperature?)"
    )
    refused = {
        "temperature": "hot",
        "top_k": 2.5,
        "num_ctx": True,
        "use_mmap": 1,
        "stop": "</s>",
        "seed": 1 << 63,
        "top_p": float("inf"),
        "min_p": 1e39,
    }
    for name, value in refused.items():
        with pytest.raises(ParametersInvalid, match=f"^--params: {name}: "):
            parameters_from_json({name: value}, "--params")
    given = {"temperature": 1, "num_ctx": 2048.0, "stop": ["a"], "use_mmap": False, "mirostat": 2}
    kept, ignored = parameters_from_json(given)
    assert kept == {"temperature": 1, "num_ctx": 2048.0, "stop": ["a"], "use_mmap": False}
    assert ignored == ("mirostat",)


# -- encodings and bounds ----------------------------------------------------------------------


def test_bytes_are_utf8_with_an_optional_bom() -> None:
    assert parse_modelfile("FROM x\nSYSTEM 你好👋\n".encode()).system == "你好👋"
    assert parse_modelfile(b"\xef\xbb\xbfFROM x\n").from_ == "x"
    assert parse_modelfile("\ufeffFROM x\n").from_ == "x"


@pytest.mark.parametrize(("bom", "codec"), [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")])
def test_utf16_with_a_bom_is_read_like_ollama(bom: bytes, codec: str) -> None:
    data = bom + "FROM bob\nPARAMETER num_ctx 4096\nSYSTEM 你好👋\n".encode(codec)
    mf = parse_modelfile(data)
    assert (mf.from_, mf.parameters, mf.system) == ("bob", {"num_ctx": 4096}, "你好👋")


def test_invalid_utf8_names_its_line() -> None:
    # Ollama would put U+FFFD in its place; a Modelfile is text, so this refuses.
    assert error_of(b"FROM x\nSYSTEM ok\nSYSTEM \xff\n") == "Modelfile line 3: not valid UTF-8"
    assert error_of(b"\xff\xfeF\x00\n\x00\x00\xd8") == "Modelfile line 2: not valid UTF-16"
    assert error_of("FROM x\nSYSTEM \udcff\n") == "Modelfile line 2: not valid UTF-8"


def test_nul_names_its_line() -> None:
    # Ollama would drop the NUL silently.
    assert error_of("FROM x\n\nSYSTEM a\x00b\n") == "Modelfile line 3: contains a NUL character"
    assert error_of(b"FROM x\x00\n") == "Modelfile line 1: contains a NUL character"


def test_too_big_is_refused_before_reading() -> None:
    text = "FROM x\n" + "#" * MAX_MODELFILE_BYTES
    assert error_of(text) == "Modelfile is 16.0 MiB, over the 16 MiB limit"
    assert error_of(text.encode()).startswith("Modelfile is 16.0 MiB, over")
    # The limit is in UTF-8 bytes, not characters.
    assert "over the 16 MiB limit" in error_of("FROM x\n#" + "é" * (MAX_MODELFILE_BYTES // 2))


def test_too_many_commands_is_refused() -> None:
    ok = "FROM x\n" + "LICENSE l\n" * (MAX_COMMANDS - 1)
    assert len(parse_modelfile(ok).licenses) == MAX_COMMANDS - 1
    assert error_of(ok + "LICENSE l\n") == (
        f"Modelfile line {MAX_COMMANDS + 1}: more than {MAX_COMMANDS} commands"
    )


@pytest.mark.parametrize(
    "body",
    [
        'SYSTEM """\n' + '"\n' * 300_000 + 'x"""\n',  # a closing candidate on every line
        'SYSTEM """\n' + '"\x0b\n' * 200_000 + 'x"""\n',  # ... with dropped runes about
        'SYSTEM """\n' + '""" x\n' * 100_000,  # never closed
        'SYSTEM "' + " \t" * 300_000 + "\n",
        "#\n" * 300_000,
        "PARAMETER temperature 0." + "0" * 600_000 + "1e600000\n",
    ],
)
def test_hostile_input_is_linear(body: str) -> None:
    # Each of these is about 600 KiB; a quadratic scan would take minutes, not milliseconds.
    try:
        parse_modelfile("FROM x\n" + body)
    except ModelfileInvalid as e:
        assert "never closed" in str(e)


# -- printing ----------------------------------------------------------------------------------


def test_format_prints_like_ollama_show() -> None:
    text = format_modelfile(
        "/root/.ollama/models/blobs/sha256-abc",
        template="{{ .Prompt }}",
        system="You are a helpful assistant.\nBe brief.",
        parameters={"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7, "num_ctx": 4096},
        licenses=("MIT", 'The "License"\n'),
        messages=(("user", "hi"), ("assistant", " hello ")),
        adapters=("/blobs/sha256-def",),
    )
    assert text == (
        "FROM /root/.ollama/models/blobs/sha256-abc\n"
        "ADAPTER /blobs/sha256-def\n"
        "TEMPLATE {{ .Prompt }}\n"
        'SYSTEM "You are a helpful assistant.\nBe brief."\n'
        "PARAMETER stop <|im_start|>\n"
        "PARAMETER stop <|im_end|>\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        "LICENSE MIT\n"
        'LICENSE """The "License"\n"""\n'
        "MESSAGE user hi\n"
        'MESSAGE assistant " hello "\n'
    )


def test_format_prints_numbers_like_go_but_keeps_integers_whole() -> None:
    # Ollama prints every number with %v of a float64, so num_ctx 1048576 comes out as
    # 1.048576e+06, which its own parser then refuses; integers are printed whole here.
    text = format_modelfile(
        "x",
        parameters={
            "num_ctx": 1048576,
            "num_batch": 512.0,  # a whole float where an int belongs, as JSON may give
            "temperature": 1e-05,
            "top_p": 1.0,
            "min_p": 1234567.0,
            "use_mmap": False,
        },
    )
    assert text.splitlines()[1:] == [
        "PARAMETER num_ctx 1048576",
        "PARAMETER num_batch 512",
        "PARAMETER temperature 1e-05",
        "PARAMETER top_p 1",
        "PARAMETER min_p 1.234567e+06",
        "PARAMETER use_mmap false",
    ]


def test_format_quotes_where_ollamas_quoting_would_not_read_back() -> None:
    # Ollama's quote leaves these bare, and its parser would then read them differently:
    # a leading quote opens a quote, a tab at an end is trimmed, a lone "\r" ends the line.
    assert format_modelfile("x", system='"quoted"') == 'FROM x\nSYSTEM ""quoted""\n'
    assert format_modelfile("x", system="\ttab") == 'FROM x\nSYSTEM "\ttab"\n'
    assert format_modelfile("x", system="a\rb") == 'FROM x\nSYSTEM "a\rb"\n'
    assert format_modelfile(" x") == 'FROM " x"\n'
    # Ollama picks """ for a value holding a quote, and that reads back here.
    assert format_modelfile("x", system='say "hi"\nok') == 'FROM x\nSYSTEM """say "hi"\nok"""\n'


def test_format_leaves_out_empty_template_and_system() -> None:
    assert format_modelfile("x", template="", system="") == "FROM x\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"system": "bell\x07"},  # Ollama's parser would drop the control character
        {"system": 'a"""\nb'},  # a line ending in """ closes any quoting early
        {"parameters": {"temperature": math.nan}},
        {"parameters": {"top-k": 1}},
        {"parameters": {"stop": [None]}},
        {"messages": (("to ol", "x"),)},
        {"adapters": ("",)},
    ],
)
def test_format_refuses_what_cannot_be_written(kwargs: dict) -> None:
    with pytest.raises(ModelfileInvalid):
        format_modelfile("x", **kwargs)
    with pytest.raises(ModelfileInvalid):
        format_modelfile("")


def printed(mf: Modelfile) -> str:
    """``mf`` as ``modelfs show --modelfile`` prints a model with these fields."""
    return format_modelfile(
        mf.from_,
        template=mf.template,
        system=mf.system,
        parameters=mf.parameters,
        licenses=mf.licenses,
        messages=mf.messages,
        adapters=mf.adapters,
        more_from=mf.more_from,
        drafts=mf.drafts,
        renderer=mf.renderer,
        parser=mf.parser,
        requires=mf.requires,
    )


def test_a_typical_modelfile_round_trips() -> None:
    mf = parse_modelfile(TYPICAL)
    again = parse_modelfile(printed(mf))
    assert again == mf
    assert again.params_json() == mf.params_json()
    assert again.messages_json() == mf.messages_json()


# Text with every kind of quote, blank and line break about (none of the runes Ollama drops).
texts = st.lists(st.sampled_from([*'ab "#\t\r\n:é😀{}<>&\\', '"""']), max_size=20).map("".join)
names = st.text(alphabet=st.sampled_from(list('ab/.:-_ "')), min_size=1, max_size=12).filter(
    lambda s: s.strip(" \t")
)
# Floats as parsing leaves them: float32 values named by their shortest digits.
floats = st.builds(
    lambda m, e: float(f"{m}e{e}"), st.integers(-9999999, 9999999), st.integers(-30, 30)
)
parameters = st.fixed_dictionaries(
    {},
    optional={
        "temperature": floats.map(
            lambda f: parse_modelfile(f"FROM x\nPARAMETER temperature {f!r}").parameters[
                "temperature"
            ]
        ),
        "top_k": st.integers(-(1 << 63), (1 << 63) - 1),
        "use_mmap": st.booleans(),
        "stop": st.lists(texts, min_size=1, max_size=3),
    },
)


def writable(value: str) -> bool:
    """Whether any quoting carries value through Ollama's parser: not if a line before its
    last ends in three quotes (after blanks), which closes every kind of quote early."""
    return not any(line.rstrip(" \t").endswith('"""') for line in re.split("[\r\n]", value)[:-1])


@settings(max_examples=300, deadline=None)
@given(
    from_=names,
    template=st.none() | texts.filter(bool),
    system=st.none() | texts.filter(bool),
    parameters=parameters,
    licenses=st.lists(texts, max_size=2).map(tuple),
    messages=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), texts), max_size=3
    ).map(tuple),
    adapters=st.lists(names, max_size=2).map(tuple),
)
def test_format_then_parse_round_trips(
    from_: str,
    template: str | None,
    system: str | None,
    parameters: dict,
    licenses: tuple[str, ...],
    messages: tuple[tuple[str, str], ...],
    adapters: tuple[str, ...],
) -> None:
    fields = {
        "template": template,
        "system": system,
        "parameters": parameters,
        "licenses": licenses,
        "messages": messages,
        "adapters": adapters,
    }
    values = [template or "", system or "", *licenses, *(c for _, c in messages)]
    values += parameters.get("stop", [])
    if not all(map(writable, values)):
        with pytest.raises(ModelfileInvalid, match="cannot be written in a Modelfile"):
            format_modelfile(from_, **fields)
        return
    text = format_modelfile(from_, **fields)
    mf = parse_modelfile(text)
    assert mf == Modelfile(from_, **fields)
    assert printed(mf) == text


# -- the scanner against a port of Ollama's ParseFile ------------------------------------------


class OllamaError(Exception):
    pass


_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_VALID = {"from", "license", "template", "system", "adapter", "draft"}
_VALID |= {"renderer", "parser", "parameter", "message", "requires"}


def ollama_parse_file(text: str) -> list[tuple[str, str]]:
    """parser.ParseFile, rune by rune, as Go runs it (without the final FROM check)."""
    NIL, NAME, VALUE, PARAM, MSG, COMMENT = range(6)

    def alpha(r: str) -> bool:
        return r.isascii() and r.isalpha()

    def step(r: str, cs: int) -> tuple[int, str]:
        if cs == NIL:
            if r == "#":
                return COMMENT, ""
            if r in " \t\r\n":
                return NIL, ""
            return NAME, r
        if cs == NAME:
            if alpha(r):
                return NAME, r
            if r in " \t":
                return VALUE, ""
            raise OllamaError("invalid command")
        if cs == VALUE:
            return (NIL, r) if r in " \t\r\n" else (VALUE, r)
        if cs == PARAM:
            if alpha(r) or (r.isascii() and r.isdigit()) or r == "_":
                return PARAM, r
            if r in " \t":
                return VALUE, ""
            raise OllamaError("unexpected EOF")
        if cs == MSG:
            if alpha(r):
                return MSG, r
            if r in " \t":
                return VALUE, ""
            raise OllamaError("unexpected EOF")
        return (NIL, "") if r in "\r\n" else (COMMENT, "")

    def unquote(s: str) -> tuple[str, bool]:
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    commands: list[tuple[str, str]] = []
    name, role, cur, b = "", "", NIL, ""
    for r in text:
        nxt, r = step(r, cur)
        if nxt != cur:
            if cur == NAME:
                if b.lower() not in _VALID:
                    raise OllamaError("invalid command")
                s = b.lower()
                if s == "from":
                    name = "model"
                elif s == "parameter":
                    nxt = PARAM
                else:
                    name = s
                    if s == "message":
                        nxt = MSG
            elif cur == PARAM:
                name = b
            elif cur == MSG:
                if b not in ("system", "user", "assistant"):
                    raise OllamaError("invalid role")
                role = b
            elif cur == VALUE:
                s, ok = unquote(b.strip(_GO_SPACE))
                if not ok or r in " \t":
                    b += r
                    continue
                if role:
                    s, role = f"{role}: {s}", ""
                commands.append((name, s))
            b, cur = "", nxt
        if r and r.isprintable():
            b += r
    if cur == VALUE:
        s, ok = unquote(b.strip(_GO_SPACE))
        if not ok:
            raise OllamaError("unexpected EOF")
        commands.append((name, f"{role}: {s}" if role else s))
    elif cur not in (NIL, COMMENT):
        raise OllamaError("unexpected EOF")
    return commands


def as_ollama_commands(text: str) -> list[tuple[str, str]]:
    out = []
    for c in _scan(text):
        if c.name == "from":
            out.append(("model", c.value))
        elif c.name == "parameter":
            out.append((c.key, c.value))
        elif c.name == "message":
            out.append(("message", f"{c.key}: {c.value}"))
        else:
            out.append((c.name, c.value))
    return out


def test_the_port_agrees_with_ollamas_own_tests() -> None:
    # Cases from parser_test.go, so the oracle below is known to be a faithful port.
    assert ollama_parse_file('FROM "FOO  BAR  "') == [("model", "FOO  BAR  ")]
    assert ollama_parse_file("PARAMETER what the \nFROM lemons make lemonade ") == [
        ("what", "the"),
        ("model", "lemons make lemonade"),
    ]
    assert ollama_parse_file('\nFROM foo\nMESSAGE system """\nYou are a parser.\n"""\n\t\t\t') == [
        ("model", "foo"),
        ("message", "system: \nYou are a parser.\n"),
    ]
    for bad in ("\nFROM foo\nMESSAGE system\n", '\nFROM foo\nSYSTEM """x""\n', "BADCOMMAND x"):
        with pytest.raises(OllamaError):
            ollama_parse_file(bad)


_pieces = [
    "FROM ", "from\t", "PARAMETER ", "parameter top_k ", "MESSAGE ", "user ", "SYSTEM ",
    "TEMPLATE ", "LICENSE ", "x", "a b", " ", "  ", "\t", "\n", "\r\n", "\r", '"', '"""',
    "#", "é", "😀", "\x0b", "\u00a0", "\u200b", "\U000e0001", "_", "1", ":",
]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_pieces), max_size=30).map("".join))
def test_the_scanner_reads_what_ollama_reads(text: str) -> None:
    try:
        expected = ollama_parse_file(text)
    except OllamaError:
        with pytest.raises(ModelfileInvalid):
            _scan(text)
        return
    try:
        got = as_ollama_commands(text)
    except ModelfileInvalid as e:
        # Stricter than Ollama in one place: a PARAMETER with no name (two spaces after
        # PARAMETER), which Ollama parses and then fails on as "unknown parameter ''".
        assert "PARAMETER has no name" in str(e)
        assert any(name == "" for name, _ in expected)
        return
    assert got == expected
