"""The filters a rule holds: the :class:`Filter` interface, :class:`SqlFilter` (parsed and
compiled once), :class:`TrueFilter`/:class:`FalseFilter`, and :func:`filter_from_rule`."""

from __future__ import annotations

import abc
from typing import ClassVar, Final

from ...errors import FilterEvaluationError, FilterSyntaxError
from .compiler import compile_filter
from .names import MAX_EXPRESSION_LENGTH
from .nodes import Comparison, Constant, Node, to_sql
from .parser import parse_expression, validate
from .semantics import EMPTY, Props

__all__ = [
    "FalseFilter",
    "Filter",
    "SqlFilter",
    "TrueFilter",
    "filter_from_rule",
    "parse_filter",
]


class Filter(abc.ABC):
    """The interface shared by :class:`SqlFilter`, :class:`CorrelationFilter`,
    :class:`TrueFilter` and :class:`FalseFilter`."""

    __slots__ = ()

    @abc.abstractmethod
    def evaluate(self, properties: Props, system: Props | None = None) -> bool:
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
        self._setup(expression, parse_expression(expression))

    def _setup(self, expression: str, ast: Node) -> None:
        self._expression = expression
        self._ast = ast
        self._sql = to_sql(ast)
        self._function = compile_filter(ast)

    @classmethod
    def from_ast(cls, ast: Node) -> SqlFilter:
        """Build a filter from an AST (checked like parsed text); ``expression`` is its SQL."""
        validate(ast, True)
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

    def evaluate(self, properties: Props, system: Props | None = None) -> bool:
        """True only when the predicate is TRUE (FALSE and unknown are both ``False``).

        Raises :class:`FilterEvaluationError` only if reading the mappings or a property
        value itself fails; type mismatches and division by zero are *unknown*.
        """
        try:
            return self._function(properties, EMPTY if system is None else system) is True
        except Exception as exc:
            raise FilterEvaluationError(f"filter {self._sql!r} failed: {exc}") from exc

    def evaluate_tristate(self, properties: Props, system: Props | None = None) -> bool | None:
        """The three-valued result: ``True``, ``False`` or ``None`` for unknown."""
        try:
            result = self._function(properties, EMPTY if system is None else system)
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


class _ConstantFilter(SqlFilter):
    """A filter whose answer is the same for every message: ``_MATCHES``, the SQL filter
    ``_SQL`` (the base of :class:`TrueFilter` and :class:`FalseFilter`)."""

    __slots__ = ()
    _SQL: ClassVar[str]
    _MATCHES: ClassVar[bool]

    def __init__(self) -> None:
        super().__init__(self._SQL)

    def evaluate(self, properties: Props, system: Props | None = None) -> bool:
        """Always the same answer, whatever the message."""
        return self._MATCHES

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TrueFilter(_ConstantFilter):
    """Matches every message; the SQL filter ``1=1``."""

    __slots__ = ()
    _SQL = "1=1"
    _MATCHES = True


class FalseFilter(_ConstantFilter):
    """Matches no message; the SQL filter ``1=0``."""

    __slots__ = ()
    _SQL = "1=0"
    _MATCHES = False


_TRUE_AST: Final = Comparison("=", Constant(1), Constant(1))
_FALSE_AST: Final = Comparison("=", Constant(1), Constant(0))


def parse_filter(expression: str, *, max_length: int | None = MAX_EXPRESSION_LENGTH) -> SqlFilter:
    """Parse and compile a SQL filter expression.

    Raises :class:`FilterSyntaxError` (with the 0-based ``position`` of the offending token)
    for invalid, empty or over-long (``max_length``) expressions.
    """
    return SqlFilter(expression, max_length=max_length)


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
