"""What the operators mean: C#-style typing, three-valued logic (None is *unknown*) and the
property lookups (case-insensitive user properties, normalised system property names)."""

from __future__ import annotations

import datetime
import math
import operator
import types
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from .names import SYSTEM_PROPERTIES, normalise_system_name

__all__ = [
    "ARITHMETIC",
    "COMPARE",
    "EMPTY",
    "MIRRORED",
    "MISSING",
    "PY_ARITHMETIC",
    "PY_COMPARE",
    "Props",
    "ci_lookup",
    "eq",
    "negate",
    "plus",
    "system_lookup",
    "system_value",
    "user_value",
]

Props = Mapping[str, Any]
"""A message's user (application) or system properties, by name."""

MISSING: Final = object()
"""What a lookup returns for a property that is not there (``None`` is a value)."""

EMPTY: Final[Props] = types.MappingProxyType({})
"""No properties (the system properties when none are given)."""

_NUM, _STR, _BOOL, _TIME, _SPAN, _GUID, _OTHER = range(7)


def _category(value: Any) -> int:
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, (int, float)):
        return _NUM
    if isinstance(value, str):
        return _STR
    if isinstance(value, (datetime.date, datetime.time)):
        return _TIME
    if isinstance(value, datetime.timedelta):
        return _SPAN
    if isinstance(value, uuid.UUID):
        return _GUID
    return _OTHER


def _eq_slow(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    category = _category(a)
    if category != _category(b):
        return None
    if category == _OTHER and type(a) is not type(b):
        return None
    try:
        result = a == b
    except (TypeError, ValueError):
        return None
    return result if isinstance(result, bool) else None


def eq(a: Any, b: Any) -> bool | None:
    """SQL ``=``: True or False for comparable operands, None (unknown) otherwise."""
    kind = type(a)
    if kind is type(b) and (kind is str or kind is int or kind is float or kind is bool):
        return bool(a == b)
    return _eq_slow(a, b)


def _ne(a: Any, b: Any) -> bool | None:
    result = eq(a, b)
    return None if result is None else not result


def _order_slow(a: Any, b: Any, op: Callable[[Any, Any], Any]) -> bool | None:
    if a is None or b is None:
        return None
    category = _category(a)
    if category != _category(b) or category not in (_NUM, _TIME, _SPAN):
        return None
    try:
        result = op(a, b)
    except (TypeError, ValueError, OverflowError):
        return None
    return result if isinstance(result, bool) else None


def _lt(a: Any, b: Any) -> bool | None:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        return bool(a < b)
    return _order_slow(a, b, operator.lt)


def _le(a: Any, b: Any) -> bool | None:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        return bool(a <= b)
    return _order_slow(a, b, operator.le)


def _gt(a: Any, b: Any) -> bool | None:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        return bool(a > b)
    return _order_slow(a, b, operator.gt)


def _ge(a: Any, b: Any) -> bool | None:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        return bool(a >= b)
    return _order_slow(a, b, operator.ge)


#: SQL comparison by operator, three-valued (see :func:`eq`).
COMPARE: Final[Mapping[str, Callable[[Any, Any], bool | None]]] = {
    "=": eq,
    "<>": _ne,
    "<": _lt,
    "<=": _le,
    ">": _gt,
    ">=": _ge,
}
#: Python's comparison by operator, for operands already known to be numbers.
PY_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
#: The operator that gives the same result with the operands swapped.
MIRRORED: Final = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _numeric(op: str, a: Any, b: Any) -> Any:
    """C#-style arithmetic on two numbers (bool excluded by the caller)."""
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            return None
        integral = isinstance(a, int) and isinstance(b, int)
        if op == "/":
            if integral:
                quotient = abs(a) // abs(b)
                return quotient if (a < 0) == (b < 0) else -quotient
            return a / b
        if integral:
            remainder = abs(a) % abs(b)
            return remainder if a >= 0 else -remainder
        return math.fmod(a, b)
    except (OverflowError, ValueError, ZeroDivisionError):
        return None


def _arith_slow(op: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    ca, cb = _category(a), _category(b)
    if ca == _NUM and cb == _NUM:
        return _numeric(op, a, b)
    if ca == _STR and cb == _STR:
        return a + b if op == "+" else None
    if op in ("+", "-") and (ca in (_TIME, _SPAN) or cb in (_TIME, _SPAN)):
        if _BOOL in (ca, cb) or _STR in (ca, cb) or _NUM in (ca, cb):
            return None
        try:
            return a + b if op == "+" else a - b
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _add(a: Any, b: Any) -> Any:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        try:
            return a + b
        except OverflowError:
            return None
    if ka is str and kb is str:
        return a + b
    return _arith_slow("+", a, b)


def _sub(a: Any, b: Any) -> Any:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        try:
            return a - b
        except OverflowError:
            return None
    return _arith_slow("-", a, b)


def _mul(a: Any, b: Any) -> Any:
    ka, kb = type(a), type(b)
    if (ka is int or ka is float) and (kb is int or kb is float):
        try:
            return a * b
        except OverflowError:
            return None
    return _arith_slow("*", a, b)


def _div(a: Any, b: Any) -> Any:
    return _arith_slow("/", a, b)


def _mod(a: Any, b: Any) -> Any:
    return _arith_slow("%", a, b)


#: SQL arithmetic by operator: C# typing, None (unknown) for what does not compute.
ARITHMETIC: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}


#: Python's arithmetic by operator, for operands already known to be numbers.
PY_ARITHMETIC: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}


def negate(a: Any) -> Any:
    """Unary ``-``: numbers and time spans; unknown for anything else."""
    category = _category(a) if a is not None else -1
    if category == _NUM or category == _SPAN:
        return -a
    return None


def plus(a: Any) -> Any:
    """Unary ``+``: numbers and time spans; unknown for anything else."""
    category = _category(a) if a is not None else -1
    if category == _NUM or category == _SPAN:
        return a
    return None


def ci_lookup(props: Props, folded: str) -> Any:
    """Case-insensitive property lookup; ``MISSING`` if there is no such key."""
    for key, value in props.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return MISSING


def user_value(props: Props, name: str) -> Any:
    """A user property by (case-insensitive) name; None when missing."""
    value = props.get(name, MISSING)
    if value is MISSING:
        value = ci_lookup(props, name.casefold())
        if value is MISSING:
            return None
    return value


def system_lookup(system: Props, keys: tuple[str, ...], normalised: str) -> Any:
    """A system property under one of its ``keys`` or a spelling that normalises the same;
    :data:`MISSING` if there is none."""
    for key in keys:
        value = system.get(key, MISSING)
        if value is not MISSING:
            return value
    accepted = ("subject", "label") if normalised in ("subject", "label") else (normalised,)
    for key, value in system.items():
        if isinstance(key, str) and normalise_system_name(key) in accepted:
            return value
    return MISSING


def system_value(system: Props, name: str) -> Any:
    """A system property by its SQL name (``MessageId``, ``message_id``...); None when
    missing or unknown."""
    normalised = normalise_system_name(name)
    keys = SYSTEM_PROPERTIES.get(normalised)
    if keys is None:
        return None
    value = system_lookup(system, keys, normalised)
    return None if value is MISSING else value
