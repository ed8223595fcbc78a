"""Strict JSON for the codec: compact UTF-8 out, no NaN or infinities either way.

:func:`dumps_text` and :func:`dumps_utf8` write (``InvalidMessageError`` for what is not
JSON data); :func:`loads` reads (``ValueError``/``RecursionError`` for what is not strict
JSON: NaN, Infinity, numbers that overflow to infinity, nesting past the recursion limit).

Values are written with orjson and read with msgspec when they are installed
(both several times faster than the standard library here). Whatever either would do
differently from the strict standard-library path falls back to it: output that holds a
``null`` (NaN and infinities come out as ``null`` there) or that orjson refuses (lone
surrogates, integers past 64 bits, keys that are not strings, dataclasses, datetimes,
subclasses of builtins, nesting past 254), and any input msgspec refuses. So NaN,
infinities, numbers that overflow, nesting, lone surrogates and sizes are refused exactly
as before. orjson does write enum members (as their value) and UUIDs (as text), which the
standard library refuses.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from ..errors import InvalidMessageError

__all__ = ["FAST_DUMPS", "FAST_LOADS", "dumps_text", "dumps_utf8", "loads"]

# Built once: ``json.dumps`` with non-default arguments builds an encoder on every call,
# which costs as much as encoding a small envelope.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _c_encoder() -> Callable[[Any], str]:
    """The C encoder behind ``_ENCODER``, made once: ``JSONEncoder.encode`` makes a new one
    per call. It runs without the circular-reference record (a cycle ends in
    ``RecursionError`` instead, reported the same way); where CPython's accelerator is
    missing, ``_ENCODER.encode`` is used."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return _ENCODER.encode
    # markers, default, encode_str, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan
    chunks = make(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


_encode_json = _c_encoder()


def _fast_json() -> tuple[Callable[[Any], bytes] | None, Callable[[Any], Any] | None]:
    """orjson's ``dumps`` (with every type the standard library refuses passed through to
    a refusal) and msgspec's JSON decoder, or ``None`` for a library that is missing."""
    dumps: Callable[[Any], bytes] | None = None
    loads: Callable[[Any], Any] | None = None
    try:
        import orjson
    except ImportError:  # pragma: no cover - a dependency; the stdlib path serves without it
        pass
    else:
        option = (
            orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_SUBCLASS
        )

        def orjson_dumps(value: Any) -> bytes:
            # orjson's bytes keep the capacity of its 4 KiB write buffer (tracemalloc: 4,097
            # bytes for a 120-byte result); a copy of the exact size is what is kept, so an
            # envelope held in a batch or a queue costs its length, not 4 KiB
            return bytes(memoryview(orjson.dumps(value, option=option)))

        dumps = orjson_dumps
    try:
        import msgspec
    except ImportError:  # pragma: no cover - a dependency; the stdlib path serves without it
        pass
    else:
        loads = msgspec.json.Decoder().decode
    return dumps, loads


#: The fast JSON functions (``None``: the standard library alone). The codec benchmark sets
#: them to ``None`` for its standard-library baseline.
FAST_DUMPS, FAST_LOADS = _fast_json()


def _fast_bytes(value: Any) -> bytes | None:
    """``value`` as compact JSON by the fast encoder, or None where the strict path must
    decide (no fast encoder, a refusal, or a ``null`` that might be a NaN)."""
    dumps = FAST_DUMPS
    if dumps is None:
        return None
    try:
        out = dumps(value)
    except Exception:  # orjson.JSONEncodeError (a TypeError) and anything odd: stdlib decides
        return None
    return None if b"null" in out else out


def dumps_text(value: Any) -> str:
    """JSON of ``value`` as text (``InvalidMessageError`` when it is not JSON data)."""
    fast = _fast_bytes(value)
    if fast is not None:
        return fast.decode("utf-8")
    try:
        return _encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"message is not JSON-serialisable: {exc}") from exc


def dumps_utf8(value: Any) -> bytes:
    """JSON of ``value`` as UTF-8; strings with lone surrogates (which UTF-8 cannot carry)
    are written as ``\\u`` escapes instead, so they round-trip."""
    fast = _fast_bytes(value)
    if fast is not None:
        return fast
    try:
        text = _encode_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"message is not JSON-serialisable: {exc}") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(value).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(data: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no numbers that overflow to infinity. Raises
    ``ValueError`` (``UnicodeDecodeError`` included) or ``RecursionError``.

    The fast decoder answers for what it accepts (the same values, as the strict path
    gives them); what it refuses goes to the strict path, which gives the error or, for
    what only it accepts (lone surrogates, a BOM, UTF-16/32), the value."""
    fast = FAST_LOADS
    if isinstance(data, str):
        if fast is not None and data[:1] == "{":
            try:
                return fast(data)
            except Exception:  # msgspec.DecodeError, RecursionError: the strict path decides
                pass
        return _DECODER.decode(data)
    if fast is not None and data[:1] == b"{":
        try:
            return fast(data)
        except Exception:  # as above
            pass
    # RFC 8259 JSON between systems is UTF-8; UTF-16/32 (a NUL among the first bytes) and a
    # BOM are still recognised as json.loads does.
    encoding = "utf-8" if data[:1] == b"{" and data[1:2] != b"\x00" else None
    return _DECODER.decode(data.decode(encoding or json.detect_encoding(data), "surrogatepass"))
