"""modelfs.formats.gofmt: numbers, JSON and times as Go writes and reads them (the bytes of
Ollama's params blob and of Docker's model config depend on each digit)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelfs.formats.gofmt import (
    go_f_float,
    go_json,
    go_json_any,
    go_json_float,
    go_parse_float32,
    go_time,
    go_v_float,
)


def test_created_is_rfc3339_as_go_writes_time():
    assert go_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
    assert go_time(datetime(2025, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)) == "2025-01-02T03:04:05.12Z"
    cet = timezone(timedelta(hours=1))
    assert go_time(datetime(2025, 1, 2, 3, 4, 5, tzinfo=cet)) == "2025-01-02T03:04:05+01:00"
    with pytest.raises(ValueError):
        go_time(datetime(2025, 1, 2))


def test_go_json_escapes_html_and_line_separators():
    assert go_json({"k": "<a&b>\u2028é\n"}) == b'{"k":"\\u003ca\\u0026b\\u003e\\u2028\xc3\xa9\\n"}'


def test_marshal_keeps_struct_order_and_ints_while_decoded_any_sorts_and_goes_through_float64():
    doc = {"size": 9007199254740993, "digest": "sha256:x", "layers": [1, 2]}
    # json.Marshal of a struct: fields in their order, an int64 as it is.
    assert go_json(doc) == b'{"size":9007199254740993,"digest":"sha256:x","layers":[1,2]}'
    # The same JSON decoded into map[string]any and written again: sorted, float64.
    assert go_json_any(doc) == '{"digest":"sha256:x","layers":[1,2],"size":9007199254740992}'
    with pytest.raises(ValueError, match="too big for JSON"):
        go_json_any({"n": 1 << 1100})
    with pytest.raises(ValueError, match="of type object cannot go in JSON"):
        go_json_any([object()])


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (1e-7, "1e-7"),  # encoding/json's exponent has no leading zero
        (0.000001, "0.000001"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-0.0, "-0"),
        (0.1, "0.1"),
    ],
)
def test_json_floats_are_written_as_encoding_json_writes_float64(x: float, text: str) -> None:
    assert go_json_float(x) == text
    assert go_json({"x": x}) == f'{{"x":{text}}}'.encode()


@pytest.mark.parametrize(
    ("x", "v", "f"),
    [
        (1e-05, "1e-05", "0.000010"),
        (0.0001, "0.0001", "0.000100"),
        (1234567.0, "1.234567e+06", "1234567.000000"),
        (100000.0, "100000", "100000.000000"),
        (-2.5, "-2.5", "-2.500000"),
    ],
)
def test_percent_v_and_percent_f(x: float, v: str, f: str) -> None:
    assert go_v_float(x) == v
    assert go_f_float(x) == f


def test_non_finite_numbers() -> None:
    # %f prints them; JSON and %v (as modelfs uses it, for Modelfile text) refuse them.
    assert (go_f_float(math.nan), go_f_float(math.inf), go_f_float(-math.inf)) == (
        "NaN",
        "+Inf",
        "-Inf",
    )
    for write in (go_json_float, go_v_float):
        with pytest.raises(ValueError, match="not a finite number"):
            write(math.nan)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.1234567891", 0.12345679),  # float32, written back with its shortest digits
        ("16777217", 16777216.0),
        ("1_000.5", 1000.5),
        ("0x1.8P1", 3.0),
        ("-0", -0.0),
    ],
)
def test_parse_float32(text: str, value: float) -> None:
    got = go_parse_float32(text)
    assert got == value and math.copysign(1, got) == math.copysign(1, value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1__0", "is not a number"),
        ("_1", "is not a number"),
        ("Inf", "is not a finite number"),
        ("3.5e38", "is out of range"),
    ],
)
def test_parse_float32_refuses_what_ollama_fails_on(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        go_parse_float32(text)
