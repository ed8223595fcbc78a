"""SQL filters for topic subscription rules, following the Azure Service Bus SQL filter grammar.

A subscription rule such as ``filter_rule="agent_id = 'ceo_agent'"`` is parsed once by
:func:`parse_filter` into a :class:`SqlFilter`. Parsing builds an AST (the node classes below,
e.g. :class:`Comparison`) and compiles it into nested Python closures, so evaluating a filter
against a message never walks the AST again and never uses ``eval``/``exec``.

The grammar and semantics follow Microsoft's "Subscription Rule SQL Filter Syntax":

* predicates: ``NOT``, ``AND``, ``OR``; ``=``, ``<>``, ``!=``, ``>``, ``>=``, ``<``, ``<=``;
  ``[NOT] IN (...)``; ``[NOT] LIKE pattern [ESCAPE 'c']`` with ``%`` and ``_``;
  ``property IS [NOT] NULL``; ``EXISTS(property)``; parentheses.
* expressions: constants (integers, decimals such as ``2.0``, approximate numbers such as
  ``101.5E5``, ``'strings'`` with ``''`` for a quote, ``TRUE``, ``FALSE``, ``NULL``),
  properties, the functions ``newid()`` and ``property(name)``/``p(name)``, binary
  ``+ - * / %`` (``* / %`` bind tighter than ``+ -``) and unary ``+``/``-``.
* properties are ``[scope.]name``. The scope is ``sys`` (message system properties, read
  from the ``system`` mapping) or ``user`` (application properties, the default when no
  scope is written). Names are regular identifiers (a letter, then letters, digits or
  underscores), ``[delimited identifiers]`` (``]]`` for a ``]``) or ``"quoted identifiers"``
  (``""`` for a ``"``). Keywords and property names are case-insensitive; string values
  compare case-sensitively.
* a user property that does not exist evaluates to *unknown*, as does ``NULL``. Unknown
  propagates through arithmetic and comparisons and follows three-valued logic in ``AND``,
  ``OR`` and ``NOT``; a filter matches only when its predicate is TRUE. ``IS NULL`` is TRUE
  for a missing property and for one whose value is ``None``; ``EXISTS`` is TRUE when the
  property is present (for ``sys`` properties: present and not ``None``).
* operands follow C# typing: numbers compare and compute with numbers (``int`` op ``int``
  stays integral, ``/`` truncates towards zero and ``%`` takes the dividend's sign), strings
  support ``=``, ``<>`` and ``+`` (concatenation), booleans support ``=``/``<>``, and dates /
  time spans support ordering and ``+``/``-``. Any other combination (``'1' = 1``,
  ``'a' < 'b'``, ``TRUE = 1``) is unknown rather than an error, and so is division by zero.
  Integer arithmetic is not wrapped to 64 bits.
* an unknown ``sys.`` property name is a syntax error; the known names are those of the
  Service Bus message (``MessageId``, ``CorrelationId``, ``To``, ``ReplyTo``, ``Label`` /
  ``Subject``, ``SessionId``, ``ReplyToSessionId``, ``ContentType``, ...), matched
  case-insensitively and ignoring underscores, so ``sys.message_id`` works too. They are
  read from the ``system`` mapping under snake_case keys (``message_id``, ``subject`` or
  ``label``, ...); one that is absent evaluates to unknown.
* expressions are at most :data:`MAX_EXPRESSION_LENGTH` (1024) characters, like Azure.
  Parameters (``@name``) are not supported.

:class:`CorrelationFilter`, :class:`TrueFilter` and :class:`FalseFilter` share the
:class:`Filter` interface, and :func:`filter_from_rule` turns a rule given as text, a filter
or ``None`` into a filter.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import functools
import math
import operator
import re
import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Union

from ..errors import ConfigurationError, FilterEvaluationError, FilterSyntaxError

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_NESTING_DEPTH",
    "And",
    "Arithmetic",
    "Comparison",
    "Constant",
    "CorrelationFilter",
    "Exists",
    "FalseFilter",
    "Filter",
    "Function",
    "In",
    "IsNull",
    "Like",
    "Node",
    "Not",
    "Or",
    "Property",
    "SqlFilter",
    "TrueFilter",
    "Unary",
    "filter_from_rule",
    "parse_filter",
    "to_sql",
]

MAX_EXPRESSION_LENGTH: Final = 1024
"""Longest accepted filter expression, in characters (the Azure Service Bus limit)."""

MAX_NESTING_DEPTH: Final = 128
"""Deepest accepted expression tree; parentheses, ``NOT`` and signs may nest 32 deep."""

_MAX_PAREN_NESTING: Final = 32
_INT64_MAX: Final = 2**63 - 1

_KEYWORDS: Final = frozenset(
    {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "ESCAPE", "EXISTS", "TRUE", "FALSE"}
)
_COMPARISON_OPS: Final = frozenset({"=", "<>", "!=", ">", ">=", "<", "<="})
_ARITHMETIC_OPS: Final = frozenset({"+", "-", "*", "/", "%"})

ConstantValue = Union[None, bool, int, float, str]
"""The Python types a :class:`Constant` holds."""

# System properties of a Service Bus message: normalised name -> keys tried in ``system``.
_SYSTEM_PROPERTIES: Final[Mapping[str, tuple[str, ...]]] = {
    "messageid": ("message_id",),
    "correlationid": ("correlation_id",),
    "to": ("to",),
    "replyto": ("reply_to",),
    "label": ("subject", "label"),
    "subject": ("subject", "label"),
    "sessionid": ("session_id",),
    "replytosessionid": ("reply_to_session_id",),
    "contenttype": ("content_type",),
    "partitionkey": ("partition_key",),
    "viapartitionkey": ("via_partition_key",),
    "transactionpartitionkey": ("transaction_partition_key",),
    "deliverycount": ("delivery_count",),
    "enqueuedsequencenumber": ("enqueued_sequence_number",),
    "enqueuedtimeutc": ("enqueued_time_utc", "enqueued_time"),
    "expiresatutc": ("expires_at_utc", "expires_at"),
    "scheduledenqueuetimeutc": ("scheduled_enqueue_time_utc", "scheduled_enqueue_time"),
    "sequencenumber": ("sequence_number",),
    "size": ("size",),
    "timetolive": ("time_to_live",),
    "locktoken": ("lock_token",),
    "lockeduntilutc": ("locked_until_utc", "locked_until"),
    "deadlettersource": ("dead_letter_source",),
    "state": ("state",),
}


def _normalise_system_name(name: str) -> str:
    return name.replace("_", "").casefold()


def _is_keyword(word: str) -> bool:
    return word.isascii() and word.upper() in _KEYWORDS


def _is_regular_identifier(name: str) -> bool:
    if not name or not name[0].isalpha():
        return False
    for ch in name[1:]:
        if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
            return False
    return not _is_keyword(name)


# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """Base of the filter AST. ``pos`` is the 0-based source offset (ignored by ``==``)."""

    pos: int = field(default=0, compare=False, repr=False, kw_only=True)
    depth: int = field(default=1, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        children = self.children()
        if children:
            object.__setattr__(self, "depth", 1 + max(child.depth for child in children))

    def children(self) -> tuple[Node, ...]:
        """The direct sub-nodes, in source order."""
        return ()

    def __str__(self) -> str:
        return to_sql(self)


@dataclass(frozen=True, slots=True, eq=False)
class Constant(Node):
    """A literal: ``NULL`` (``None``), ``TRUE``/``FALSE``, an integer, a float or a string.

    Numeric constants are never negative (``-5`` is ``Unary('-', Constant(5))``).
    Two constants are equal only if their values have the same type and value.
    """

    value: ConstantValue

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Constant):
            return NotImplemented
        return type(self.value) is type(other.value) and self.value == other.value

    def __hash__(self) -> int:
        return hash((type(self.value), self.value))


@dataclass(frozen=True, slots=True)
class Property(Node):
    """A message property: ``scope`` is ``"user"`` (application properties) or ``"sys"``."""

    name: str
    scope: str = "user"


@dataclass(frozen=True, slots=True)
class Function(Node):
    """A function call: ``newid()`` (no arguments) or ``property(name)`` (one argument)."""

    name: str
    args: tuple[Node, ...] = ()

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True, slots=True)
class Unary(Node):
    """Unary ``+`` or ``-``."""

    op: str
    operand: Node

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, slots=True)
class Arithmetic(Node):
    """A binary arithmetic operation: ``+``, ``-``, ``*``, ``/`` or ``%``."""

    op: str
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, slots=True)
class Comparison(Node):
    """A comparison: ``=``, ``<>`` (``!=`` is parsed as ``<>``), ``>``, ``>=``, ``<``, ``<=``."""

    op: str
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, slots=True)
class In(Node):
    """``operand [NOT] IN (items...)``."""

    operand: Node
    items: tuple[Node, ...]
    negated: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand, *self.items)


@dataclass(frozen=True, slots=True)
class Like(Node):
    """``operand [NOT] LIKE pattern [ESCAPE escape]``."""

    operand: Node
    pattern: Node
    escape: Node | None = None
    negated: bool = False

    def children(self) -> tuple[Node, ...]:
        if self.escape is None:
            return (self.operand, self.pattern)
        return (self.operand, self.pattern, self.escape)


@dataclass(frozen=True, slots=True)
class IsNull(Node):
    """``property IS [NOT] NULL``."""

    operand: Property
    negated: bool = False

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, slots=True)
class Exists(Node):
    """``EXISTS(property)``."""

    operand: Property

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, slots=True)
class Not(Node):
    """``NOT predicate``."""

    operand: Node

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


@dataclass(frozen=True, slots=True)
class And(Node):
    """``p1 AND p2 AND ...`` (two or more operands)."""

    operands: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.operands


@dataclass(frozen=True, slots=True)
class Or(Node):
    """``p1 OR p2 OR ...`` (two or more operands)."""

    operands: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.operands


_PREDICATE_NODES: Final = (Comparison, In, Like, IsNull, Exists, Not, And, Or)


def _is_predicate(node: Node) -> bool:
    return isinstance(node, _PREDICATE_NODES)


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def _precedence(node: Node) -> int:
    if isinstance(node, Or):
        return 1
    if isinstance(node, And):
        return 2
    if isinstance(node, Not):
        return 3
    if isinstance(node, (Comparison, In, Like, IsNull, Exists)):
        return 4
    if isinstance(node, Arithmetic):
        return 5 if node.op in ("+", "-") else 6
    if isinstance(node, Unary):
        return 7
    return 8


def _format_name(name: str) -> str:
    if _is_regular_identifier(name):
        return name
    return "[" + name.replace("]", "]]") + "]"


def _format_constant(value: ConstantValue) -> str:
    if value is None:
        return "NULL"
    if value is True:
        return "TRUE"
    if value is False:
        return "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text if ("." in text or "e" in text) else text + ".0"


def _wrap(node: Node, parenthesise: bool) -> str:
    text = to_sql(node)
    return f"({text})" if parenthesise else text


def to_sql(node: Node) -> str:
    """Print a filter AST as canonical SQL, with only the parentheses its structure needs.

    ``to_sql(parse_filter(to_sql(node)).ast) == to_sql(node)`` holds for every valid tree.
    """
    if isinstance(node, Constant):
        return _format_constant(node.value)
    if isinstance(node, Property):
        prefix = "sys." if node.scope == "sys" else ""
        return prefix + _format_name(node.name)
    if isinstance(node, Function):
        return node.name + "(" + ", ".join(to_sql(arg) for arg in node.args) + ")"
    if isinstance(node, Unary):
        inner = node.operand
        return node.op + _wrap(inner, isinstance(inner, Unary) or _precedence(inner) < 7)
    if isinstance(node, Arithmetic):
        prec = _precedence(node)
        left = _wrap(node.left, _precedence(node.left) < prec)
        right = _wrap(node.right, _precedence(node.right) <= prec)
        return f"{left} {node.op} {right}"
    if isinstance(node, Comparison):
        left = _wrap(node.left, _precedence(node.left) <= 4)
        right = _wrap(node.right, _precedence(node.right) <= 4)
        return f"{left} {node.op} {right}"
    if isinstance(node, In):
        items = ", ".join(to_sql(item) for item in node.items)
        keyword = "NOT IN" if node.negated else "IN"
        return f"{_wrap(node.operand, _precedence(node.operand) <= 4)} {keyword} ({items})"
    if isinstance(node, Like):
        keyword = "NOT LIKE" if node.negated else "LIKE"
        text = (
            f"{_wrap(node.operand, _precedence(node.operand) <= 4)} {keyword} "
            f"{_wrap(node.pattern, _precedence(node.pattern) <= 4)}"
        )
        if node.escape is not None:
            text += f" ESCAPE {_wrap(node.escape, _precedence(node.escape) <= 4)}"
        return text
    if isinstance(node, IsNull):
        return f"{to_sql(node.operand)} IS {'NOT NULL' if node.negated else 'NULL'}"
    if isinstance(node, Exists):
        return f"EXISTS({to_sql(node.operand)})"
    if isinstance(node, Not):
        return "NOT " + _wrap(node.operand, _precedence(node.operand) < 3)
    if isinstance(node, (And, Or)):
        prec = _precedence(node)
        joiner = " AND " if isinstance(node, And) else " OR "
        return joiner.join(_wrap(op, _precedence(op) <= prec) for op in node.operands)
    raise TypeError(f"not a filter node: {node!r}")


# --------------------------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str  # num | str | ident | kw | op | param | eof
    value: Any
    pos: int
    delimited: bool = False

    def describe(self) -> str:
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
    if number > _INT64_MAX:
        raise FilterSyntaxError("integer constant out of the 64-bit range", start)
    return number, i


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "'":
            value, i2 = _read_delimited(text, i, "'", "string constant")
            tokens.append(_Token("str", value, i))
            i = i2
        elif ch == "[" or ch == '"':
            close = "]" if ch == "[" else '"'
            value, i2 = _read_delimited(text, i, close, "identifier")
            if not value:
                raise FilterSyntaxError("empty identifier", i)
            tokens.append(_Token("ident", value, i, True))
            i = i2
        elif "0" <= ch <= "9" or (ch == "." and i + 1 < n and "0" <= text[i + 1] <= "9"):
            number, i2 = _read_number(text, i)
            tokens.append(_Token("num", number, i))
            i = i2
        elif ch.isalpha():
            j = i + 1
            while j < n and (text[j].isalpha() or text[j].isdecimal() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if _is_keyword(word):
                tokens.append(_Token("kw", word.upper(), i))
            else:
                tokens.append(_Token("ident", word, i))
            i = j
        elif text[i : i + 2] in _TWO_CHAR_OPS:
            tokens.append(_Token("op", text[i : i + 2], i))
            i += 2
        elif ch in _ONE_CHAR_OPS:
            tokens.append(_Token("op", ch, i))
            i += 1
        elif ch == "@":
            raise FilterSyntaxError("filter parameters (@name) are not supported", i)
        else:
            raise FilterSyntaxError(f"unexpected character {ch!r}", i)
    tokens.append(_Token("eof", None, n))
    return tokens


# --------------------------------------------------------------------------------------------
# LIKE patterns
# --------------------------------------------------------------------------------------------


def _like_segments(pattern: str, escape: str | None) -> list[str]:
    """Split a LIKE pattern into ``"%"``, ``"_"`` and literal runs (prefixed with ``"L"``)."""
    segments: list[str] = []
    literal: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if escape is not None and ch == escape:
            if i + 1 >= n:
                raise ValueError("LIKE pattern ends with its escape character")
            literal.append(pattern[i + 1])
            i += 2
            continue
        if ch == "%" or ch == "_":
            if literal:
                segments.append("L" + "".join(literal))
                literal = []
            segments.append(ch)
        else:
            literal.append(ch)
        i += 1
    if literal:
        segments.append("L" + "".join(literal))
    return segments


@functools.lru_cache(maxsize=256)
def _like_matcher(pattern: str, escape: str | None) -> Callable[[str], bool]:
    """Compile a LIKE pattern to a predicate on strings; ``ValueError`` if it is invalid."""
    segments = _like_segments(pattern, escape)
    literals = [s[1:] for s in segments if s[0] == "L"]
    shape = "".join("L" if s[0] == "L" else s for s in segments)
    if shape == "":
        return "".__eq__
    if shape == "L":
        return literals[0].__eq__
    if shape == "L%":
        return operator.methodcaller("startswith", literals[0])
    if shape == "%L":
        return operator.methodcaller("endswith", literals[0])
    if shape == "%L%":
        needle = literals[0]
        return lambda value: needle in value
    if shape and set(shape) == {"%"}:
        return lambda value: True
    return _segment_matcher(segments)


class _Piece:
    """A run of a LIKE pattern between two ``%``: literal characters and ``_`` wildcards."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, segments: list[str]) -> None:
        self.length = sum(1 if s == "_" else len(s) - 1 for s in segments)
        if "_" in segments:
            source = "".join("." if s == "_" else re.escape(s[1:]) for s in segments)
            self.literal: str | None = None
            self.regex: re.Pattern[str] | None = re.compile(source, re.DOTALL)
        else:
            self.literal = "".join(s[1:] for s in segments)
            self.regex = None

    def matches_at(self, value: str, index: int) -> bool:
        if self.literal is not None:
            return value.startswith(self.literal, index)
        assert self.regex is not None
        return self.regex.match(value, index) is not None

    def find(self, value: str, start: int, end: int) -> int:
        """Leftmost index >= start where the piece matches and ends by ``end``; -1 if none."""
        if self.literal is not None:
            return value.find(self.literal, start, end)
        assert self.regex is not None
        found = self.regex.search(value, start, end)
        return -1 if found is None else found.start()


def _segment_matcher(segments: list[str]) -> Callable[[str], bool]:
    """A LIKE matcher without backtracking: the pieces between ``%`` are fixed-length, so
    matching the first piece at the start, the last at the end and each middle piece at its
    leftmost place is exact, in O(len(value) * len(pattern)) at worst."""
    groups: list[list[str]] = [[]]
    for segment in segments:
        if segment == "%":
            groups.append([])
        else:
            groups[-1].append(segment)
    pieces = [_Piece(group) for group in groups]
    if len(pieces) == 1:
        only = pieces[0]
        return lambda value: len(value) == only.length and only.matches_at(value, 0)
    first, last = pieces[0], pieces[-1]
    middle = [piece for piece in pieces[1:-1] if piece.length]
    minimum = sum(piece.length for piece in pieces)

    def match(value: str) -> bool:
        size = len(value)
        if size < minimum or not first.matches_at(value, 0):
            return False
        end = size - last.length
        if not last.matches_at(value, end):
            return False
        position = first.length
        for piece in middle:
            index = piece.find(value, position, end)
            if index < 0:
                return False
            position = index + piece.length
        return True

    return match


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.nesting = 0

    # token helpers -----------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "eof":
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "kw" and token.value in words

    def at_op(self, *ops: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "op" and token.value in ops

    def expect_op(self, op: str) -> _Token:
        token = self.peek()
        if token.kind != "op" or token.value != op:
            raise FilterSyntaxError(f"expected {op!r}, found {token.describe()}", token.pos)
        return self.advance()

    def enter(self, pos: int) -> None:
        self.nesting += 1
        if self.nesting > _MAX_PAREN_NESTING:
            raise FilterSyntaxError("expression nested too deeply", pos)

    def leave(self) -> None:
        self.nesting -= 1

    def make(self, node: Node) -> Node:
        if node.depth > MAX_NESTING_DEPTH:
            raise FilterSyntaxError("expression nested too deeply", node.pos)
        return node

    def require_predicate(self, node: Node, pos: int) -> None:
        if not _is_predicate(node):
            raise FilterSyntaxError(
                "expected a comparison, IN, LIKE or IS [NOT] NULL after the expression", pos
            )

    @staticmethod
    def require_value(node: Node) -> None:
        if _is_predicate(node):
            raise FilterSyntaxError("expected a value, found a condition", node.pos)

    # grammar -----------------------------------------------------------------------------
    def parse(self) -> Node:
        node = self.parse_or()
        token = self.peek()
        if token.kind != "eof" and _is_predicate(node):
            raise FilterSyntaxError(f"unexpected {token.describe()}", token.pos)
        self.require_predicate(node, token.pos)
        return node

    def parse_or(self) -> Node:
        return self._parse_chain("OR", self.parse_and, Or)

    def parse_and(self) -> Node:
        return self._parse_chain("AND", self.parse_not, And)

    def _parse_chain(
        self, keyword: str, parse_operand: Callable[[], Node], cls: type[And] | type[Or]
    ) -> Node:
        first = parse_operand()
        if not self.at_keyword(keyword):
            return first
        operands = [first]
        while self.at_keyword(keyword):
            token = self.advance()
            self.require_predicate(operands[-1], token.pos)
            operands.append(parse_operand())
        self.require_predicate(operands[-1], self.peek().pos)
        return self.make(cls(tuple(operands), pos=first.pos))

    def parse_not(self) -> Node:
        if self.at_keyword("NOT"):
            token = self.advance()
            self.enter(token.pos)
            operand = self.parse_not()
            self.require_predicate(operand, self.peek().pos)
            self.leave()
            return self.make(Not(operand, pos=token.pos))
        return self.parse_predicate()

    def parse_predicate(self) -> Node:
        if self.at_keyword("EXISTS"):
            token = self.advance()
            self.expect_op("(")
            operand = self.parse_property_only("EXISTS")
            self.expect_op(")")
            return self.make(Exists(operand, pos=token.pos))
        left = self.parse_additive()
        token = self.peek()
        if token.kind == "op" and token.value in _COMPARISON_OPS:
            self.advance()
            self.require_value(left)
            right = self.parse_additive()
            self.require_value(right)
            op = "<>" if token.value == "!=" else token.value
            return self.make(Comparison(op, left, right, pos=left.pos))
        negated = False
        if self.at_keyword("NOT"):
            following = self.peek(1)
            if not (following.kind == "kw" and following.value in ("IN", "LIKE")):
                raise FilterSyntaxError(
                    f"expected IN or LIKE after NOT, found {following.describe()}",
                    following.pos,
                )
            self.advance()
            negated = True
        if self.at_keyword("IN"):
            self.advance()
            self.require_value(left)
            self.expect_op("(")
            items = [self.parse_value()]
            while self.at_op(","):
                self.advance()
                items.append(self.parse_value())
            self.expect_op(")")
            return self.make(In(left, tuple(items), negated, pos=left.pos))
        if self.at_keyword("LIKE"):
            self.advance()
            self.require_value(left)
            pattern = self.parse_value()
            escape: Node | None = None
            if self.at_keyword("ESCAPE"):
                self.advance()
                escape = self.parse_value()
            _check_like_constants(pattern, escape)
            return self.make(Like(left, pattern, escape, negated, pos=left.pos))
        if self.at_keyword("IS"):
            self.advance()
            if not isinstance(left, Property):
                raise FilterSyntaxError("IS [NOT] NULL needs a property on its left", left.pos)
            is_not = False
            if self.at_keyword("NOT"):
                self.advance()
                is_not = True
            if not self.at_keyword("NULL"):
                found = self.peek()
                raise FilterSyntaxError(f"expected NULL, found {found.describe()}", found.pos)
            self.advance()
            return self.make(IsNull(left, is_not, pos=left.pos))
        return left

    def parse_value(self) -> Node:
        node = self.parse_additive()
        self.require_value(node)
        return node

    def parse_additive(self) -> Node:
        left = self.parse_multiplicative()
        while self.at_op("+", "-"):
            token = self.advance()
            self.require_value(left)
            right = self.parse_multiplicative()
            self.require_value(right)
            left = self.make(Arithmetic(token.value, left, right, pos=left.pos))
        return left

    def parse_multiplicative(self) -> Node:
        left = self.parse_unary()
        while self.at_op("*", "/", "%"):
            token = self.advance()
            self.require_value(left)
            right = self.parse_unary()
            self.require_value(right)
            left = self.make(Arithmetic(token.value, left, right, pos=left.pos))
        return left

    def parse_unary(self) -> Node:
        if self.at_op("+", "-"):
            token = self.advance()
            self.enter(token.pos)
            operand = self.parse_unary()
            self.require_value(operand)
            self.leave()
            return self.make(Unary(token.value, operand, pos=token.pos))
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.advance()
        if token.kind in ("num", "str"):
            return Constant(token.value, pos=token.pos)
        if token.kind == "kw":
            if token.value == "NULL":
                return Constant(None, pos=token.pos)
            if token.value in ("TRUE", "FALSE"):
                return Constant(token.value == "TRUE", pos=token.pos)
            raise FilterSyntaxError(f"unexpected keyword {token.value}", token.pos)
        if token.kind == "ident":
            if not token.delimited and self.at_op("("):
                return self.parse_function(token)
            if self.at_op("."):
                return self.parse_scoped(token)
            return Property(token.value, "user", pos=token.pos)
        if token.kind == "op" and token.value == "(":
            self.enter(token.pos)
            inner = self.parse_or()
            self.expect_op(")")
            self.leave()
            return dataclasses.replace(inner, pos=token.pos)
        raise FilterSyntaxError(f"unexpected {token.describe()}", token.pos)

    def parse_scoped(self, scope_token: _Token) -> Property:
        scope = str(scope_token.value).casefold()
        if scope not in ("sys", "user"):
            raise FilterSyntaxError(
                f"unknown scope {scope_token.value!r}: use sys or user", scope_token.pos
            )
        self.advance()  # the dot
        name_token = self.advance()
        if name_token.kind != "ident":
            raise FilterSyntaxError(
                f"expected a property name, found {name_token.describe()}", name_token.pos
            )
        name = str(name_token.value)
        if scope == "sys" and _normalise_system_name(name) not in _SYSTEM_PROPERTIES:
            raise FilterSyntaxError(f"unknown system property {name!r}", name_token.pos)
        return Property(name, scope, pos=scope_token.pos)

    def parse_function(self, name_token: _Token) -> Node:
        name = str(name_token.value).casefold()
        self.advance()  # (
        if name == "newid":
            self.expect_op(")")
            return Function("newid", (), pos=name_token.pos)
        if name in ("property", "p"):
            argument = self.parse_value()
            self.expect_op(")")
            return self.make(Function("property", (argument,), pos=name_token.pos))
        raise FilterSyntaxError(f"unknown function {name_token.value!r}", name_token.pos)

    def parse_property_only(self, context: str) -> Property:
        node = self.parse_primary()
        if not isinstance(node, Property):
            raise FilterSyntaxError(f"{context} needs a property", node.pos)
        return node


def _check_like_constants(pattern: Node, escape: Node | None) -> None:
    escape_char: str | None = None
    if isinstance(escape, Constant):
        if not isinstance(escape.value, str) or len(escape.value) != 1:
            raise FilterSyntaxError("ESCAPE needs a string of one character", escape.pos)
        escape_char = escape.value
    if isinstance(pattern, Constant):
        if not isinstance(pattern.value, str):
            raise FilterSyntaxError("the LIKE pattern must be a string", pattern.pos)
        if escape is None or escape_char is not None:
            try:
                _like_segments(pattern.value, escape_char)
            except ValueError as exc:
                raise FilterSyntaxError(str(exc), pattern.pos) from exc


def _validate(node: Node, want_predicate: bool) -> None:
    """Check a hand-built AST the way the parser checks parsed text."""
    if _is_predicate(node) != want_predicate:
        kind = "a condition" if want_predicate else "a value"
        raise FilterSyntaxError(f"expected {kind}, found {type(node).__name__}", node.pos)
    if node.depth > MAX_NESTING_DEPTH:
        raise FilterSyntaxError("expression nested too deeply", node.pos)
    if isinstance(node, Constant):
        value = node.value
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int) and 0 <= value <= _INT64_MAX:
            return
        if isinstance(value, float) and math.isfinite(value) and math.copysign(1.0, value) > 0:
            return
        raise FilterSyntaxError(f"invalid constant {value!r}", node.pos)
    if isinstance(node, Property):
        if node.scope not in ("user", "sys") or not node.name:
            raise FilterSyntaxError(f"invalid property {node!r}", node.pos)
        if node.scope == "sys" and _normalise_system_name(node.name) not in _SYSTEM_PROPERTIES:
            raise FilterSyntaxError(f"unknown system property {node.name!r}", node.pos)
        return
    if isinstance(node, Function):
        arity = {"newid": 0, "property": 1}.get(node.name)
        if arity is None or len(node.args) != arity:
            raise FilterSyntaxError(f"invalid function {node.name!r}", node.pos)
        for arg in node.args:
            _validate(arg, False)
        return
    if isinstance(node, Unary) and node.op not in ("+", "-"):
        raise FilterSyntaxError(f"invalid unary operator {node.op!r}", node.pos)
    if isinstance(node, Arithmetic) and node.op not in _ARITHMETIC_OPS:
        raise FilterSyntaxError(f"invalid arithmetic operator {node.op!r}", node.pos)
    if isinstance(node, Comparison) and node.op not in _COMPARISON_OPS - {"!="}:
        raise FilterSyntaxError(f"invalid comparison operator {node.op!r}", node.pos)
    if isinstance(node, In) and not node.items:
        raise FilterSyntaxError("IN needs at least one item", node.pos)
    if isinstance(node, (And, Or)) and len(node.operands) < 2:
        raise FilterSyntaxError("AND/OR need at least two operands", node.pos)
    if isinstance(node, (IsNull, Exists)) and not isinstance(node.operand, Property):
        raise FilterSyntaxError("IS NULL and EXISTS need a property", node.pos)
    if isinstance(node, Like):
        _check_like_constants(node.pattern, node.escape)
    child_is_predicate = isinstance(node, (Not, And, Or))
    for child in node.children():
        _validate(child, child_is_predicate)


# --------------------------------------------------------------------------------------------
# Evaluation semantics
# --------------------------------------------------------------------------------------------

_Props = Mapping[str, Any]
_ValueFn = Callable[[_Props, _Props], Any]
_PredFn = Callable[[_Props, _Props], "bool | None"]

_MISSING: Final = object()
_EMPTY: Final[_Props] = types.MappingProxyType({})

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


def _eq(a: Any, b: Any) -> bool | None:
    kind = type(a)
    if kind is type(b) and (kind is str or kind is int or kind is float or kind is bool):
        return bool(a == b)
    return _eq_slow(a, b)


def _ne(a: Any, b: Any) -> bool | None:
    result = _eq(a, b)
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


_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool | None]]] = {
    "=": _eq,
    "<>": _ne,
    "<": _lt,
    "<=": _le,
    ">": _gt,
    ">=": _ge,
}
_PY_COMPARE: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_MIRRORED: Final = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


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


_ARITHMETIC: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}


_PY_ARITHMETIC: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}


def _negate(a: Any) -> Any:
    category = _category(a) if a is not None else -1
    if category == _NUM or category == _SPAN:
        return -a
    return None


def _plus(a: Any) -> Any:
    category = _category(a) if a is not None else -1
    if category == _NUM or category == _SPAN:
        return a
    return None


def _ci_lookup(props: _Props, folded: str) -> Any:
    """Case-insensitive property lookup; ``_MISSING`` if there is no such key."""
    for key, value in props.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return _MISSING


def _user_value(props: _Props, name: str) -> Any:
    value = props.get(name, _MISSING)
    if value is _MISSING:
        value = _ci_lookup(props, name.casefold())
        if value is _MISSING:
            return None
    return value


def _system_lookup(system: _Props, keys: tuple[str, ...], normalised: str) -> Any:
    for key in keys:
        value = system.get(key, _MISSING)
        if value is not _MISSING:
            return value
    accepted = ("subject", "label") if normalised in ("subject", "label") else (normalised,)
    for key, value in system.items():
        if isinstance(key, str) and _normalise_system_name(key) in accepted:
            return value
    return _MISSING


def _system_value(system: _Props, name: str) -> Any:
    normalised = _normalise_system_name(name)
    keys = _SYSTEM_PROPERTIES.get(normalised)
    if keys is None:
        return None
    value = _system_lookup(system, keys, normalised)
    return None if value is _MISSING else value


# --------------------------------------------------------------------------------------------
# Compilation to closures
# --------------------------------------------------------------------------------------------


class _Const:
    """A compile-time constant result (value or three-valued truth)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Compiled = Union[_Const, Callable[[_Props, _Props], Any]]


def _as_function(compiled: _Compiled) -> Callable[[_Props, _Props], Any]:
    if isinstance(compiled, _Const):
        value = compiled.value
        return lambda props, system: value
    return compiled


def _compile_property(node: Property) -> Callable[[_Props, _Props], Any]:
    if node.scope == "sys":
        normalised = _normalise_system_name(node.name)
        keys = _SYSTEM_PROPERTIES[normalised]

        def get_system(props: _Props, system: _Props) -> Any:
            value = _system_lookup(system, keys, normalised)
            return None if value is _MISSING else value

        return get_system
    name = node.name
    folded = name.casefold()

    def get_user(props: _Props, system: _Props) -> Any:
        value = props.get(name, _MISSING)
        if value is _MISSING:
            value = _ci_lookup(props, folded)
            if value is _MISSING:
                return None
        return value

    return get_user


def _compile_value(node: Node) -> _Compiled:
    if isinstance(node, Constant):
        return _Const(node.value)
    if isinstance(node, Property):
        return _compile_property(node)
    if isinstance(node, Function):
        if node.name == "newid":
            return lambda props, system: uuid.uuid4()
        argument = _as_function(_compile_value(node.args[0]))

        def get_dynamic(props: _Props, system: _Props) -> Any:
            name = argument(props, system)
            if not isinstance(name, str):
                return None
            lowered = name.casefold()
            if lowered.startswith("sys."):
                return _system_value(system, name[4:])
            if lowered.startswith("user."):
                name = name[5:]
            return _user_value(props, name)

        return get_dynamic
    if isinstance(node, Unary):
        unary = _negate if node.op == "-" else _plus
        operand = _compile_value(node.operand)
        if isinstance(operand, _Const):
            return _Const(unary(operand.value))
        operand_fn = operand
        return lambda props, system: unary(operand_fn(props, system))
    if isinstance(node, Arithmetic):
        op = _ARITHMETIC[node.op]
        left = _compile_value(node.left)
        right = _compile_value(node.right)
        if isinstance(left, _Const) and isinstance(right, _Const):
            return _Const(op(left.value, right.value))
        if isinstance(right, _Const):
            constant = right.value
            if isinstance(node.left, Property) and node.left.scope == "user":
                return _arith_user_constant(node.op, node.left.name, constant)
            left_fn = left
            assert not isinstance(left_fn, _Const)
            return lambda props, system: op(left_fn(props, system), constant)
        left_fn2 = _as_function(left)
        right_fn = right
        return lambda props, system: op(left_fn2(props, system), right_fn(props, system))
    raise TypeError(f"not a value node: {node!r}")


def _arith_user_constant(op_name: str, name: str, constant: Any) -> _ValueFn:
    """``user_property <op> constant`` with the property read inline."""
    op = _ARITHMETIC[op_name]
    folded = name.casefold()
    fast = _PY_ARITHMETIC.get(op_name)
    if fast is not None and type(constant) in (int, float):
        fast_op = fast

        def arith_user_number(props: _Props, system: _Props) -> Any:
            value = props.get(name, _MISSING)
            if value is _MISSING:
                value = _ci_lookup(props, folded)
                if value is _MISSING:
                    return None
            kind = type(value)
            if kind is int or kind is float:
                try:
                    return fast_op(value, constant)
                except OverflowError:
                    return None
            return op(value, constant)

        return arith_user_number

    def arith_user(props: _Props, system: _Props) -> Any:
        value = props.get(name, _MISSING)
        if value is _MISSING:
            value = _ci_lookup(props, folded)
            if value is _MISSING:
                return None
        return op(value, constant)

    return arith_user


def _compile_comparison(node: Comparison) -> _Compiled:
    left = _compile_value(node.left)
    right = _compile_value(node.right)
    op_name = node.op
    if isinstance(left, _Const) and isinstance(right, _Const):
        return _Const(_COMPARE[op_name](left.value, right.value))
    operand_node = node.left
    if isinstance(left, _Const):
        # constant on the left: mirror so the constant is on the right
        left, right = right, left
        op_name = _MIRRORED[op_name]
        operand_node = node.right
    compare = _COMPARE[op_name]
    if isinstance(right, _Const):
        constant = right.value
        assert not isinstance(left, _Const)
        getter = left
        if isinstance(operand_node, Property) and operand_node.scope == "user":
            name = operand_node.name
            folded = name.casefold()
            if op_name == "=" and type(constant) is str:

                def user_eq_str(props: _Props, system: _Props) -> bool | None:
                    value = props.get(name, _MISSING)
                    if value is _MISSING:
                        value = _ci_lookup(props, folded)
                        if value is _MISSING:
                            return None
                    if type(value) is str:
                        return value == constant
                    return _eq(value, constant)

                return user_eq_str

            fast = _PY_COMPARE.get(op_name)
            if fast is not None and type(constant) in (int, float):
                fast_op = fast

                def user_compare_number(props: _Props, system: _Props) -> bool | None:
                    value = props.get(name, _MISSING)
                    if value is _MISSING:
                        value = _ci_lookup(props, folded)
                        if value is _MISSING:
                            return None
                    kind = type(value)
                    if kind is int or kind is float:
                        return fast_op(value, constant)
                    return compare(value, constant)

                return user_compare_number

            def user_compare(props: _Props, system: _Props) -> bool | None:
                value = props.get(name, _MISSING)
                if value is _MISSING:
                    value = _ci_lookup(props, folded)
                    if value is _MISSING:
                        return None
                return compare(value, constant)

            return user_compare
        fast = _PY_COMPARE.get(op_name)
        if fast is not None and type(constant) in (int, float):
            fast_op = fast

            def compare_number(props: _Props, system: _Props) -> bool | None:
                value = getter(props, system)
                kind = type(value)
                if kind is int or kind is float:
                    return fast_op(value, constant)
                return compare(value, constant)

            return compare_number
        return lambda props, system: compare(getter(props, system), constant)
    left_fn = _as_function(left)
    right_fn = right
    return lambda props, system: compare(left_fn(props, system), right_fn(props, system))


def _compile_in(node: In) -> _Compiled:
    operand = _as_function(_compile_value(node.operand))
    compiled_items = [_compile_value(item) for item in node.items]
    negated = node.negated
    if all(isinstance(item, _Const) for item in compiled_items):
        values = [item.value for item in compiled_items if isinstance(item, _Const)]
        strings = frozenset(v for v in values if type(v) is str)
        numbers = frozenset(v for v in values if type(v) in (int, float) and v == v)
        others = tuple(v for v in values if v is not None and type(v) not in (str, int, float))
        slow_values = (*others, *strings, *numbers)

        def slow_member(value: Any) -> bool:
            return any(_eq(value, other) is True for other in slow_values)

        if isinstance(node.operand, Property) and node.operand.scope == "user":
            name = node.operand.name
            folded = name.casefold()

            def in_constants_user(props: _Props, system: _Props) -> bool | None:
                value = props.get(name, _MISSING)
                if value is _MISSING:
                    value = _ci_lookup(props, folded)
                    if value is _MISSING:
                        return None
                kind = type(value)
                if kind is str:
                    found = value in strings
                elif kind is int or kind is float:
                    found = value in numbers
                elif value is None:
                    return None
                else:
                    found = slow_member(value)
                return (not found) if negated else found

            return in_constants_user

        def in_constants(props: _Props, system: _Props) -> bool | None:
            value = operand(props, system)
            kind = type(value)
            if kind is str:
                found = value in strings
            elif kind is int or kind is float:
                found = value in numbers
            elif value is None:
                return None
            else:
                found = slow_member(value)
            return (not found) if negated else found

        return in_constants
    item_fns = tuple(_as_function(item) for item in compiled_items)

    def in_expressions(props: _Props, system: _Props) -> bool | None:
        value = operand(props, system)
        if value is None:
            return None
        found = False
        for item_fn in item_fns:
            if _eq(value, item_fn(props, system)) is True:
                found = True
                break
        return (not found) if negated else found

    return in_expressions


def _compile_like(node: Like) -> _Compiled:
    operand = _as_function(_compile_value(node.operand))
    pattern = _compile_value(node.pattern)
    escape = _compile_value(node.escape) if node.escape is not None else _Const(None)
    negated = node.negated
    if isinstance(pattern, _Const) and isinstance(escape, _Const):
        if pattern.value is None or (node.escape is not None and escape.value is None):
            return _Const(None)
        matcher = _like_matcher(pattern.value, escape.value)
        if isinstance(node.operand, Property) and node.operand.scope == "user":
            name = node.operand.name
            folded = name.casefold()

            def like_constant_user(props: _Props, system: _Props) -> bool | None:
                value = props.get(name, _MISSING)
                if type(value) is not str:
                    if value is _MISSING:
                        value = _ci_lookup(props, folded)
                    if not isinstance(value, str):
                        return None
                found = matcher(value)
                return (not found) if negated else found

            return like_constant_user

        def like_constant(props: _Props, system: _Props) -> bool | None:
            value = operand(props, system)
            if type(value) is not str:
                if not isinstance(value, str):
                    return None
            found = matcher(value)
            return (not found) if negated else found

        return like_constant
    pattern_fn = _as_function(pattern)
    escape_fn = _as_function(escape)
    has_escape = node.escape is not None

    def like_dynamic(props: _Props, system: _Props) -> bool | None:
        value = operand(props, system)
        text = pattern_fn(props, system)
        escape_char = escape_fn(props, system)
        if not isinstance(value, str) or not isinstance(text, str):
            return None
        if has_escape and (not isinstance(escape_char, str) or len(escape_char) != 1):
            return None
        try:
            matcher = _like_matcher(text, escape_char if has_escape else None)
        except ValueError:
            return None
        found = matcher(value)
        return (not found) if negated else found

    return like_dynamic


def _compile_exists(prop: Property) -> _Compiled:
    if prop.scope == "sys":
        getter = _compile_property(prop)
        return lambda props, system: getter(props, system) is not None
    name = prop.name
    folded = name.casefold()

    def exists_user(props: _Props, system: _Props) -> bool | None:
        return name in props or _ci_lookup(props, folded) is not _MISSING

    return exists_user


def _compile_junction(node: And | Or) -> _Compiled:
    is_and = isinstance(node, And)
    dominant = not is_and  # False dominates AND, True dominates OR
    functions: list[Callable[[_Props, _Props], Any]] = []
    constant_unknown = False
    for operand in node.operands:
        compiled = _compile_predicate(operand)
        if isinstance(compiled, _Const):
            if compiled.value is dominant:
                return _Const(dominant)
            if compiled.value is None:
                constant_unknown = True
            continue
        functions.append(compiled)
    if not functions:
        return _Const(None if constant_unknown else (not dominant))
    fns = tuple(functions)
    start_unknown = constant_unknown
    if is_and:

        def all_of(props: _Props, system: _Props) -> bool | None:
            unknown = start_unknown
            for fn in fns:
                result = fn(props, system)
                if result is False:
                    return False
                if result is None:
                    unknown = True
            return None if unknown else True

        return all_of

    def any_of(props: _Props, system: _Props) -> bool | None:
        unknown = start_unknown
        for fn in fns:
            result = fn(props, system)
            if result is True:
                return True
            if result is None:
                unknown = True
        return None if unknown else False

    return any_of


def _compile_predicate(node: Node) -> _Compiled:
    if isinstance(node, Comparison):
        return _compile_comparison(node)
    if isinstance(node, In):
        return _compile_in(node)
    if isinstance(node, Like):
        return _compile_like(node)
    if isinstance(node, IsNull):
        getter = _compile_property(node.operand)
        if node.negated:
            return lambda props, system: getter(props, system) is not None
        return lambda props, system: getter(props, system) is None
    if isinstance(node, Exists):
        return _compile_exists(node.operand)
    if isinstance(node, Not):
        inner = _compile_predicate(node.operand)
        if isinstance(inner, _Const):
            return _Const(None if inner.value is None else not inner.value)
        inner_fn = inner

        def negation(props: _Props, system: _Props) -> bool | None:
            result = inner_fn(props, system)
            return None if result is None else not result

        return negation
    if isinstance(node, (And, Or)):
        return _compile_junction(node)
    raise TypeError(f"not a predicate node: {node!r}")


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


class Filter(abc.ABC):
    """The interface shared by :class:`SqlFilter`, :class:`CorrelationFilter`,
    :class:`TrueFilter` and :class:`FalseFilter`."""

    __slots__ = ()

    @abc.abstractmethod
    def evaluate(self, properties: _Props, system: _Props | None = None) -> bool:
        """Whether a message with these user ``properties`` and ``system`` properties matches."""

    @abc.abstractmethod
    def to_sql(self) -> str:
        """The filter as SQL filter text."""


class SqlFilter(Filter):
    """A parsed and compiled SQL filter expression (see the module docstring for the grammar).

    ``SqlFilter(text)`` is the same as :func:`parse_filter`; :meth:`from_ast` builds one from
    an AST. Two SQL filters are equal when their canonical SQL (:meth:`to_sql`) is equal.
    """

    __slots__ = ("_ast", "_expression", "_function", "_sql")

    def __init__(self, expression: str, *, max_length: int | None = MAX_EXPRESSION_LENGTH) -> None:
        if not isinstance(expression, str):
            raise TypeError(f"a filter expression is a str, not {type(expression).__name__}")
        if max_length is not None and len(expression) > max_length:
            raise FilterSyntaxError(
                f"filter expression is longer than {max_length} characters", max_length
            )
        if not expression.strip():
            raise FilterSyntaxError("empty filter expression", 0)
        self._setup(expression, _Parser(expression).parse())

    def _setup(self, expression: str, ast: Node) -> None:
        self._expression = expression
        self._ast = ast
        self._sql = to_sql(ast)
        self._function = _as_function(_compile_predicate(ast))

    @classmethod
    def from_ast(cls, ast: Node) -> SqlFilter:
        """Build a filter from an AST (checked like parsed text); ``expression`` is its SQL."""
        _validate(ast, True)
        instance = cls.__new__(cls)
        instance._setup(to_sql(ast), ast)
        return instance

    @property
    def expression(self) -> str:
        """The expression text as given."""
        return self._expression

    @property
    def ast(self) -> Node:
        """The parsed expression tree."""
        return self._ast

    def to_sql(self) -> str:
        """Canonical SQL: ``parse_filter(f.to_sql()).to_sql() == f.to_sql()``."""
        return self._sql

    def evaluate(self, properties: _Props, system: _Props | None = None) -> bool:
        """True only when the predicate is TRUE (FALSE and unknown are both ``False``).

        Raises :class:`FilterEvaluationError` only if reading the mappings or a property
        value itself fails; type mismatches and division by zero are *unknown*.
        """
        try:
            return self._function(properties, _EMPTY if system is None else system) is True
        except Exception as exc:
            raise FilterEvaluationError(f"filter {self._sql!r} failed: {exc}") from exc

    def evaluate_tristate(self, properties: _Props, system: _Props | None = None) -> bool | None:
        """The three-valued result: ``True``, ``False`` or ``None`` for unknown."""
        try:
            result = self._function(properties, _EMPTY if system is None else system)
        except Exception as exc:
            raise FilterEvaluationError(f"filter {self._sql!r} failed: {exc}") from exc
        return result if isinstance(result, bool) else None

    def __str__(self) -> str:
        return self._sql

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._expression!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SqlFilter):
            return NotImplemented
        return self._sql == other._sql

    def __hash__(self) -> int:
        return hash(self._sql)


class TrueFilter(SqlFilter):
    """Matches every message; the SQL filter ``1=1``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("1=1")

    def evaluate(self, properties: _Props, system: _Props | None = None) -> bool:
        """Always ``True``."""
        return True

    def __repr__(self) -> str:
        return "TrueFilter()"


class FalseFilter(SqlFilter):
    """Matches no message; the SQL filter ``1=0``."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("1=0")

    def evaluate(self, properties: _Props, system: _Props | None = None) -> bool:
        """Always ``False``."""
        return False

    def __repr__(self) -> str:
        return "FalseFilter()"


_TRUE_AST: Final = Comparison("=", Constant(1), Constant(1))
_FALSE_AST: Final = Comparison("=", Constant(1), Constant(0))


def parse_filter(expression: str, *, max_length: int | None = MAX_EXPRESSION_LENGTH) -> SqlFilter:
    """Parse and compile a SQL filter expression.

    Raises :class:`FilterSyntaxError` (with the 0-based ``position`` of the offending token)
    for invalid, empty or over-long (``max_length``) expressions.
    """
    return SqlFilter(expression, max_length=max_length)


def _sql_constant(value: Any, what: str) -> Node:
    if value is None or isinstance(value, (bool, str)):
        return Constant(value)
    if isinstance(value, int) and abs(value) <= _INT64_MAX:
        return Constant(value) if value >= 0 else Unary("-", Constant(-value))
    if isinstance(value, float) and math.isfinite(value):
        if math.copysign(1.0, value) > 0:
            return Constant(value)
        return Unary("-", Constant(-value))
    raise ConfigurationError(f"{what}: a {type(value).__name__} value cannot be written as SQL")


class CorrelationFilter(Filter):
    """Matches messages whose given system fields and user properties all equal the values.

    System fields are read from the ``system`` mapping (``correlation_id``, ``message_id``,
    ``to``, ``reply_to``, ``subject`` or ``label``, ``session_id``, ``reply_to_session_id``,
    ``content_type``); ``label`` is an alias of ``subject``. Each entry of ``properties``
    must equal the message's user property of that (case-insensitive) name, with the same
    typing rules as SQL ``=``; an entry whose value is ``None`` requires the property to be
    missing or ``None``. At least one condition is required.
    """

    __slots__ = (
        "_hash",
        "_properties",
        "_system_checks",
        "_system_values",
        "_user_checks",
    )

    _FIELDS: Final = (
        ("correlation_id", "CorrelationId"),
        ("message_id", "MessageId"),
        ("to", "To"),
        ("reply_to", "ReplyTo"),
        ("subject", "Label"),
        ("session_id", "SessionId"),
        ("reply_to_session_id", "ReplyToSessionId"),
        ("content_type", "ContentType"),
    )

    def __init__(
        self,
        *,
        correlation_id: str | None = None,
        message_id: str | None = None,
        to: str | None = None,
        reply_to: str | None = None,
        subject: str | None = None,
        label: str | None = None,
        session_id: str | None = None,
        reply_to_session_id: str | None = None,
        content_type: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        if subject is not None and label is not None and subject != label:
            raise ConfigurationError("subject and label are aliases: give one value")
        given = {
            "correlation_id": correlation_id,
            "message_id": message_id,
            "to": to,
            "reply_to": reply_to,
            "subject": subject if subject is not None else label,
            "session_id": session_id,
            "reply_to_session_id": reply_to_session_id,
            "content_type": content_type,
        }
        system_values: dict[str, str] = {}
        checks: list[tuple[Callable[[_Props, _Props], Any], str]] = []
        for key, sql_name in self._FIELDS:
            value = given[key]
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigurationError(f"CorrelationFilter {key} must be a str")
            system_values[key] = value
            checks.append((_compile_property(Property(sql_name, "sys")), value))
        props = dict(properties or {})
        for name in props:
            if not isinstance(name, str) or not name:
                raise ConfigurationError("CorrelationFilter property names are non-empty str")
        if not checks and not props:
            raise ConfigurationError("a CorrelationFilter needs at least one condition")
        self._system_values: Mapping[str, str] = types.MappingProxyType(system_values)
        self._properties: Mapping[str, Any] = types.MappingProxyType(props)
        self._system_checks = tuple(checks)
        self._user_checks = tuple((name, name.casefold(), value) for name, value in props.items())
        self._hash = hash((tuple(system_values.items()), frozenset(props)))

    @property
    def system_values(self) -> Mapping[str, str]:
        """The system fields this filter requires, by snake_case name."""
        return self._system_values

    @property
    def properties(self) -> Mapping[str, Any]:
        """The user properties this filter requires."""
        return self._properties

    @property
    def correlation_id(self) -> str | None:
        """The required correlation id, if any."""
        return self._system_values.get("correlation_id")

    @property
    def message_id(self) -> str | None:
        """The required message id, if any."""
        return self._system_values.get("message_id")

    @property
    def to(self) -> str | None:
        """The required ``to`` address, if any."""
        return self._system_values.get("to")

    @property
    def reply_to(self) -> str | None:
        """The required reply-to address, if any."""
        return self._system_values.get("reply_to")

    @property
    def subject(self) -> str | None:
        """The required subject (label), if any."""
        return self._system_values.get("subject")

    @property
    def label(self) -> str | None:
        """Alias of :attr:`subject`."""
        return self._system_values.get("subject")

    @property
    def session_id(self) -> str | None:
        """The required session id, if any."""
        return self._system_values.get("session_id")

    @property
    def reply_to_session_id(self) -> str | None:
        """The required reply-to session id, if any."""
        return self._system_values.get("reply_to_session_id")

    @property
    def content_type(self) -> str | None:
        """The required content type, if any."""
        return self._system_values.get("content_type")

    def evaluate(self, properties: _Props, system: _Props | None = None) -> bool:
        """True when every given field and property matches."""
        system_props = _EMPTY if system is None else system
        try:
            for getter, expected in self._system_checks:
                if _eq(getter(properties, system_props), expected) is not True:
                    return False
            for name, folded, expected in self._user_checks:
                value = properties.get(name, _MISSING)
                if value is _MISSING:
                    value = _ci_lookup(properties, folded)
                    if value is _MISSING:
                        value = None
                if expected is None:
                    if value is not None:
                        return False
                elif _eq(value, expected) is not True:
                    return False
        except Exception as exc:
            raise FilterEvaluationError(f"correlation filter failed: {exc}") from exc
        return True

    def to_ast(self) -> Node:
        """The equivalent SQL filter AST (``ConfigurationError`` if a value has no SQL form)."""
        conditions: list[Node] = []
        for key, sql_name in self._FIELDS:
            if key in self._system_values:
                conditions.append(
                    Comparison("=", Property(sql_name, "sys"), Constant(self._system_values[key]))
                )
        for name, value in self._properties.items():
            if value is None:
                conditions.append(IsNull(Property(name)))
            else:
                conditions.append(Comparison("=", Property(name), _sql_constant(value, name)))
        return conditions[0] if len(conditions) == 1 else And(tuple(conditions))

    def to_sql(self) -> str:
        """The equivalent SQL filter text, e.g. ``sys.CorrelationId = 'x' AND color = 'red'``."""
        return to_sql(self.to_ast())

    def to_sql_filter(self) -> SqlFilter:
        """The equivalent :class:`SqlFilter`."""
        return SqlFilter.from_ast(self.to_ast())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CorrelationFilter):
            return NotImplemented
        return (
            dict(self._system_values) == dict(other._system_values)
            and dict(self._properties) == dict(other._properties)
            and all(type(v) is type(other._properties[k]) for k, v in self._properties.items())
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        parts = [f"{key}={value!r}" for key, value in self._system_values.items()]
        if self._properties:
            parts.append(f"properties={dict(self._properties)!r}")
        return f"CorrelationFilter({', '.join(parts)})"

    def __str__(self) -> str:
        try:
            return self.to_sql()
        except ConfigurationError:
            return repr(self)


def filter_from_rule(rule: str | Filter | None) -> Filter:
    """Turn a subscription rule into a filter.

    ``None`` gives :class:`TrueFilter`; a string is parsed (``"1=1"`` gives
    :class:`TrueFilter` and ``"1=0"`` :class:`FalseFilter`); a filter is returned as is.
    """
    if rule is None:
        return TrueFilter()
    if isinstance(rule, Filter):
        return rule
    if isinstance(rule, str):
        parsed = parse_filter(rule)
        if parsed.ast == _TRUE_AST:
            return TrueFilter()
        if parsed.ast == _FALSE_AST:
            return FalseFilter()
        return parsed
    raise TypeError(f"a rule is a str, a Filter or None, not {type(rule).__name__}")
