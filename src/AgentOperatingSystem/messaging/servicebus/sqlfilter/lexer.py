"""The lexer: a filter expression's text as a list of tokens (numbers, strings, identifiers,
keywords and operators); malformed text raises :class:`FilterSyntaxError` at its offset."""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

from ...errors import FilterSyntaxError
from .names import INT64_MAX, is_keyword

__all__ = ["Token", "tokenize"]


class Token(NamedTuple):
    """One token: its kind, its value and its 0-based offset in the expression."""

    kind: str  # num | str | ident | kw | op | param | eof
    value: Any
    pos: int
    delimited: bool = False

    def describe(self) -> str:
        """How an error message names this token."""
        if self.kind == "eof":
            return "end of expression"
        if self.kind == "str":
            return "string constant"
        if self.kind == "num":
            return "number"
        if self.kind == "ident":
            return f"identifier {self.value!r}"
        return repr(self.value)


_TWO_CHAR_OPS: Final = frozenset({"<>", "!=", ">=", "<="})
_ONE_CHAR_OPS: Final = frozenset("=<>+-*/%(),.")


def _read_delimited(text: str, start: int, close: str, what: str) -> tuple[str, int]:
    """Read text enclosed by text[start] and ``close`` (doubled ``close`` is literal)."""
    parts: list[str] = []
    i = start + 1
    n = len(text)
    while True:
        j = text.find(close, i)
        if j < 0:
            raise FilterSyntaxError(f"unterminated {what}", start)
        parts.append(text[i:j])
        if j + 1 < n and text[j + 1] == close:
            parts.append(close)
            i = j + 2
            continue
        return "".join(parts), j + 1


def _read_number(text: str, start: int) -> tuple[int | float, int]:
    n = len(text)
    i = start
    while i < n and "0" <= text[i] <= "9":
        i += 1
    is_float = False
    if i < n and text[i] == ".":
        is_float = True
        i += 1
        while i < n and "0" <= text[i] <= "9":
            i += 1
    if i < n and text[i] in "eE":
        is_float = True
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        digits = i
        while i < n and "0" <= text[i] <= "9":
            i += 1
        if i == digits:
            raise FilterSyntaxError("malformed number: exponent has no digits", start)
    if i < n and (text[i].isalnum() or text[i] in "_."):
        raise FilterSyntaxError("malformed number", start)
    literal = text[start:i]
    if literal == ".":
        raise FilterSyntaxError("malformed number", start)
    if is_float:
        value = float(literal)
        if not math.isfinite(value):
            raise FilterSyntaxError("numeric constant out of range", start)
        return value, i
    number = int(literal)
    if number > INT64_MAX:
        raise FilterSyntaxError("integer constant out of the 64-bit range", start)
    return number, i


def tokenize(text: str) -> list[Token]:
    """Split an expression into tokens, ending with an ``eof`` token."""
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "'":
            value, i2 = _read_delimited(text, i, "'", "string constant")
            tokens.append(Token("str", value, i))
            i = i2
        elif ch == "[" or ch == '"':
            close = "]" if ch == "[" else '"'
            value, i2 = _read_delimited(text, i, close, "identifier")
            if not value:
                raise FilterSyntaxError("empty identifier", i)
            tokens.append(Token("ident", value, i, True))
            i = i2
        elif "0" <= ch <= "9" or (ch == "." and i + 1 < n and "0" <= text[i + 1] <= "9"):
            number, i2 = _read_number(text, i)
            tokens.append(Token("num", number, i))
            i = i2
        elif ch.isalpha():
            j = i + 1
            while j < n and (text[j].isalpha() or text[j].isdecimal() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if is_keyword(word):
                tokens.append(Token("kw", word.upper(), i))
            else:
                tokens.append(Token("ident", word, i))
            i = j
        elif text[i : i + 2] in _TWO_CHAR_OPS:
            tokens.append(Token("op", text[i : i + 2], i))
            i += 2
        elif ch in _ONE_CHAR_OPS:
            tokens.append(Token("op", ch, i))
            i += 1
        elif ch == "@":
            raise FilterSyntaxError("filter parameters (@name) are not supported", i)
        else:
            raise FilterSyntaxError(f"unexpected character {ch!r}", i)
    tokens.append(Token("eof", None, n))
    return tokens
