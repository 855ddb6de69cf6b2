"""Values written and read the way Go writes and reads them, for bytes that must equal what
Ollama and Docker's model tools produce: ``strconv.ParseFloat(s, 32)`` (float32 rounding,
then the shortest digits), ``encoding/json`` (numbers, HTML-safe strings, ``json.Marshal``
of a struct or of a decoded ``any``), ``fmt``'s ``%v`` and ``%f`` of a float64, and
``time.Time``'s JSON form.

Pure functions; a value Go would refuse (NaN in JSON, a type JSON has no form for) raises
ValueError saying so, for the caller to put in its own words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from fractions import Fraction

# -- numbers, the way Go's strconv reads and writes them ---------------------------------------

_FLOAT32_MAX = Fraction((1 << 24) - 1) * (1 << 104)
_GO_DECIMAL = re.compile(r"([+-]?)([0-9_]*)(?:\.([0-9_]*))?(?:[eE]([+-]?)([0-9][0-9_]*))?")
_GO_HEX = re.compile(r"([+-]?)0[xX]([0-9a-fA-F_]*)(?:\.([0-9a-fA-F_]*))?[pP]([+-]?)([0-9][0-9_]*)")
_BAD_UNDERSCORE_DEC = re.compile(r"(?<![0-9])_|_(?![0-9])")
_BAD_UNDERSCORE_HEX = re.compile(r"(?<![0-9a-fA-F])_|_(?![0-9a-fA-F])")
_SPECIALS = ("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan")
# Significant digits kept when rounding; the rest fold into a sticky digit. A float32
# rounding boundary has under 120 significant decimal digits, so this decides exactly.
_KEPT_DIGITS = 200


def _go_exponent(digits: str) -> int:
    """Go's readFloat stops adding exponent digits once the exponent reaches 10000."""
    digits = digits.replace("_", "").lstrip("0")
    return int(digits[:5] or "0")


def go_parse_float32(s: str) -> float:
    """strconv.ParseFloat(s, 32), correctly rounded to float32, then written the way Go's
    JSON writes a float32 and read back as the float64 Ollama's server sees. Raises
    ValueError with the reason for anything Ollama would fail on (NaN and Inf parse in Go,
    but the client cannot marshal them)."""
    if s.lower() in _SPECIALS:
        raise ValueError("is not a finite number")
    hexa = _GO_HEX.fullmatch(s)
    m = hexa or _GO_DECIMAL.fullmatch(s)
    if m is None:
        raise ValueError("is not a number")
    sign, whole, frac, esign, edigits = m.groups(default="")
    body = s.lstrip("+-")
    if "_" in s:
        bad = (
            _BAD_UNDERSCORE_HEX.search("0" + body[2:]) if hexa else _BAD_UNDERSCORE_DEC.search(body)
        )
        if bad is not None:
            raise ValueError("is not a number")
    whole, frac = whole.replace("_", ""), frac.replace("_", "")
    if not whole and not frac:
        raise ValueError("is not a number")
    exponent = _go_exponent(edigits) * (-1 if esign == "-" else 1)
    if hexa:
        value = _exact_hex(whole + frac, exponent - 4 * len(frac))
    else:
        value = _exact_decimal(whole + frac, len(whole), exponent)
    rounded = _round_float32(value)
    if rounded is None:
        raise ValueError("is out of range (32-bit float)")
    number = float(_float32_shortest(rounded)) if rounded else 0.0
    return -number if sign == "-" else number


def _exact_decimal(digits: str, point: int, exponent: int) -> Fraction:
    """0.<significant digits> x 10^dp as an exact fraction, or a stand-in that rounds the
    same (0 below float32's range, above FLT_MAX beyond it)."""
    stripped = digits.lstrip("0")
    if not stripped.rstrip("0"):
        return Fraction(0)
    dp = point - (len(digits) - len(stripped)) + exponent
    if dp > 40:
        return _FLOAT32_MAX * 2
    if dp < -46:
        return Fraction(0)  # under 1e-46, less than half the smallest subnormal
    if len(stripped) > _KEPT_DIGITS:
        sticky = "1" if stripped[_KEPT_DIGITS:].strip("0") else "0"
        stripped = stripped[:_KEPT_DIGITS] + sticky
    return Fraction(int(stripped)) * Fraction(10) ** (dp - len(stripped))


def _exact_hex(digits: str, exponent: int) -> Fraction:
    stripped = digits.lstrip("0")
    if not stripped.rstrip("0"):
        return Fraction(0)
    if len(stripped) > 40:
        sticky = "1" if stripped[40:].strip("0") else "0"
        exponent += 4 * (len(stripped) - 41)
        stripped = stripped[:40] + sticky
    mantissa = int(stripped, 16)
    top = mantissa.bit_length() + exponent  # the value is below 2**top
    if top > 129:
        return _FLOAT32_MAX * 2
    if top < -150:
        return Fraction(0)
    return Fraction(mantissa) * Fraction(2) ** exponent


def _round_float32(q: Fraction) -> float | None:
    """The float32 nearest to q >= 0 (ties to even), as a Python float; None on overflow."""
    if q == 0:
        return 0.0
    e = q.numerator.bit_length() - q.denominator.bit_length() - 24
    if q / Fraction(2) ** e >= 1 << 24:
        e += 1
    e = max(e, -149)
    scaled = q / Fraction(2) ** e
    m = math.floor(scaled)
    rest = scaled - m
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and m % 2):
        m += 1
    if m == 1 << 24:
        m, e = 1 << 23, e + 1
    if Fraction(m) * Fraction(2) ** e > _FLOAT32_MAX:
        return None
    return math.ldexp(m, e)


def _float32_neighbours(v: float) -> tuple[Fraction, Fraction, bool]:
    """The interval of reals that round to the float32 v > 0, and whether its ends do."""
    e = max(math.frexp(v)[1] - 24, -149)  # v = mantissa * 2**e, mantissa < 2**24
    mantissa = int(Fraction(v) / Fraction(2) ** e)
    ulp = Fraction(2) ** e
    below = ulp / 2 if mantissa == 1 << 23 and e > -149 else ulp
    exact = Fraction(v)
    return exact - below / 2, exact + ulp / 2, mantissa % 2 == 0


def _float32_shortest(v: float) -> str:
    """The shortest decimal that reads back as the float32 v > 0 (the nearer when there
    are two): the digits of Go's strconv.FormatFloat(v, 'e', -1, 32)."""
    low, high, inclusive = _float32_neighbours(v)
    exact, exact_q = Decimal(v), Fraction(v)
    for digits in range(1, 10):
        candidates = []
        for rounding in (ROUND_FLOOR, ROUND_CEILING):
            with localcontext() as ctx:
                ctx.prec, ctx.rounding = digits, rounding
                d = +exact
            q = Fraction(d)
            if low < q < high or (inclusive and q in (low, high)):
                candidates.append(d)
        if candidates:
            # The nearer; on a tie the one whose last digit is even (Go's ryuDigits32).
            best = min(
                candidates,
                key=lambda d: (abs(Fraction(d) - exact_q), d.as_tuple().digits[-1] % 2),
            )
            return str(best)
    return repr(v)  # not reached: 9 digits always identify a float32


def _shortest_digits(x: float) -> tuple[str, int]:
    """Shortest round-trip digits of a finite float64 x != 0 and its decimal point position:
    abs(x) = 0.<digits> x 10**point. Python's repr and Go's shortest formatting agree on these
    (both pick, of the shortest digit strings that read back, the nearest)."""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    stripped = digits.lstrip("0")
    point = len(digits) + exponent - (len(digits) - len(stripped))
    return stripped.rstrip("0"), point


def _go_fmt_e(neg: bool, digits: str, point: int) -> str:
    exp = point - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if exp < 0 else "+"
    return f"{'-' if neg else ''}{mantissa}e{sign}{abs(exp):02d}"


def _go_fmt_f(neg: bool, digits: str, point: int) -> str:
    if point <= 0:
        body = "0." + "0" * -point + digits
    elif point >= len(digits):
        body = digits + "0" * (point - len(digits))
    else:
        body = digits[:point] + "." + digits[point:]
    return ("-" if neg else "") + body


def _check_finite(x: float) -> None:
    if not math.isfinite(x):
        raise ValueError(f"value {x!r} is not a finite number")


def go_json_float(x: float) -> str:
    """encoding/json's float64: shortest digits, exponent form only below 1e-6 or from
    1e21 on, and "e-07" cleaned up to "e-7"."""
    _check_finite(x)
    neg = math.copysign(1.0, x) < 0
    if x == 0:
        return "-0" if neg else "0"
    digits, point = _shortest_digits(x)
    if abs(x) < 1e-6 or abs(x) >= 1e21:
        out = _go_fmt_e(neg, digits, point)
        return re.sub(r"e-0(\d)$", r"e-\1", out)
    return _go_fmt_f(neg, digits, point)


def go_v_float(x: float) -> str:
    """fmt's %v of a float64 (how ``ollama show`` prints a number): %g with the shortest
    digits, exponent form below 1e-4 or from 1e6 on (``1e+06``)."""
    _check_finite(x)
    neg = math.copysign(1.0, x) < 0
    if x == 0:
        return "-0" if neg else "0"
    digits, point = _shortest_digits(x)
    if point - 1 < -4 or point - 1 >= 6:
        return _go_fmt_e(neg, digits, point)
    return _go_fmt_f(neg, digits, point)


# -- JSON, the way Go's encoding/json writes it -----------------------------------------------

_JSON_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')
_JSON_SHORT = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def go_json_string(s: str) -> str:
    """A Go JSON string: HTML-safe (``<``, ``>``, ``&`` as \\u003c...), U+2028/9 escaped,
    other control characters as \\u00XX, everything else as UTF-8."""
    return '"' + _JSON_ESCAPE.sub(lambda m: _JSON_SHORT.get(m[0]) or f"\\u{ord(m[0]):04x}", s) + '"'


def go_f_float(value: float) -> str:
    """fmt's ``%f`` of a float64."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6f}"


def go_json(doc: object) -> bytes:
    """What Go's ``json.Marshal`` writes for ``doc`` held as structs and slices: dicts in the
    order given (a struct's field order), ints as ints, floats as float64."""
    return _json(doc, decoded=False).encode("utf-8")


def go_json_any(value: object) -> str:
    """A value decoded into Go's ``any`` and encoded again: map keys sorted, every number a
    float64."""
    return _json(value, decoded=True)


def _json(value: object, *, decoded: bool) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not decoded:
            return str(value)
        try:
            return go_json_float(float(value))
        except OverflowError:
            raise ValueError(f"value {value} is too big for JSON") from None
    if isinstance(value, float):
        return go_json_float(value)
    if isinstance(value, str):
        return go_json_string(value)
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
        if decoded:
            items.sort()
        return (
            "{"
            + ",".join(f"{go_json_string(k)}:{_json(v, decoded=decoded)}" for k, v in items)
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(v, decoded=decoded) for v in value) + "]"
    raise ValueError(f"value of type {type(value).__name__} cannot go in JSON")


def go_time(t: datetime) -> str:
    """Go's ``time.Time`` JSON form (RFC 3339, fraction without trailing zeros)."""
    offset = t.utcoffset()
    if offset is None:
        raise ValueError("created must be a timezone-aware datetime")
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if frac := f"{t.microsecond:06d}".rstrip("0"):
        text += "." + frac
    if offset == timedelta(0):
        return text + "Z"
    sign = "+" if offset > timedelta(0) else "-"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
