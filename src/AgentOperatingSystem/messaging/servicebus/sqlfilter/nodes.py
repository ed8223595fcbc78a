"""The filter AST: one frozen dataclass per construct, and :func:`to_sql`, which prints a
tree back as canonical SQL (``str(node)`` does the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Union

from .names import is_regular_identifier

__all__ = [
    "PREDICATE_NODES",
    "And",
    "Arithmetic",
    "Comparison",
    "Constant",
    "ConstantValue",
    "Exists",
    "Function",
    "In",
    "IsNull",
    "Like",
    "Node",
    "Not",
    "Or",
    "Property",
    "Unary",
    "is_predicate",
    "to_sql",
]

ConstantValue = Union[None, bool, int, float, str]
"""The Python types a :class:`Constant` holds."""


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
class _Binary(Node):
    """``left op right``: the fields and children of :class:`Arithmetic` and
    :class:`Comparison` (never built itself)."""

    op: str
    left: Node
    right: Node

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, slots=True)
class Arithmetic(_Binary):
    """A binary arithmetic operation: ``+``, ``-``, ``*``, ``/`` or ``%``."""


@dataclass(frozen=True, slots=True)
class Comparison(_Binary):
    """A comparison: ``=``, ``<>`` (``!=`` is parsed as ``<>``), ``>``, ``>=``, ``<``, ``<=``."""


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
class _Junction(Node):
    """Two or more ``operands``: the fields and children of :class:`And` and :class:`Or`
    (never built itself)."""

    operands: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.operands


@dataclass(frozen=True, slots=True)
class And(_Junction):
    """``p1 AND p2 AND ...`` (two or more operands)."""


@dataclass(frozen=True, slots=True)
class Or(_Junction):
    """``p1 OR p2 OR ...`` (two or more operands)."""


PREDICATE_NODES: Final = (Comparison, In, Like, IsNull, Exists, Not, And, Or)
"""The node classes that are conditions (TRUE, FALSE or unknown) rather than values."""


def is_predicate(node: Node) -> bool:
    """Whether ``node`` is a condition (one of :data:`PREDICATE_NODES`)."""
    return isinstance(node, PREDICATE_NODES)


# ------------------------------------------------------------------------------------ printing


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
    if is_regular_identifier(name):
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
