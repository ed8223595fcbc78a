"""The parser: tokens to a checked AST, by recursive descent along the grammar's precedence
(OR, AND, NOT, predicates, additive, multiplicative, unary, primary), and :func:`validate`,
which checks a hand-built AST the same way."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from ...errors import FilterSyntaxError
from . import nodes
from .lexer import Token, tokenize
from .like import like_segments
from .names import (
    ARITHMETIC_OPS,
    COMPARISON_OPS,
    INT64_MAX,
    MAX_NESTING_DEPTH,
    MAX_PAREN_NESTING,
    SYSTEM_PROPERTIES,
    normalise_system_name,
)
from .nodes import Node, Property, is_predicate

__all__ = ["check_like_constants", "parse_expression", "validate"]


def parse_expression(text: str) -> Node:
    """The AST of a filter expression's predicate (:class:`FilterSyntaxError` if invalid)."""
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0
        self.nesting = 0

    # token helpers -----------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
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

    def expect_op(self, op: str) -> Token:
        token = self.peek()
        if token.kind != "op" or token.value != op:
            raise FilterSyntaxError(f"expected {op!r}, found {token.describe()}", token.pos)
        return self.advance()

    def enter(self, pos: int) -> None:
        self.nesting += 1
        if self.nesting > MAX_PAREN_NESTING:
            raise FilterSyntaxError("expression nested too deeply", pos)

    def leave(self) -> None:
        self.nesting -= 1

    def make(self, node: Node) -> Node:
        if node.depth > MAX_NESTING_DEPTH:
            raise FilterSyntaxError("expression nested too deeply", node.pos)
        return node

    def require_predicate(self, node: Node, pos: int) -> None:
        if not is_predicate(node):
            raise FilterSyntaxError(
                "expected a comparison, IN, LIKE or IS [NOT] NULL after the expression", pos
            )

    @staticmethod
    def require_value(node: Node) -> None:
        if is_predicate(node):
            raise FilterSyntaxError("expected a value, found a condition", node.pos)

    # grammar -----------------------------------------------------------------------------
    def parse(self) -> Node:
        node = self.parse_or()
        token = self.peek()
        if token.kind != "eof" and is_predicate(node):
            raise FilterSyntaxError(f"unexpected {token.describe()}", token.pos)
        self.require_predicate(node, token.pos)
        return node

    def parse_or(self) -> Node:
        return self._parse_chain("OR", self.parse_and, nodes.Or)

    def parse_and(self) -> Node:
        return self._parse_chain("AND", self.parse_not, nodes.And)

    def _parse_chain(
        self, keyword: str, parse_operand: Callable[[], Node], cls: type[nodes.And] | type[nodes.Or]
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
            return self.make(nodes.Not(operand, pos=token.pos))
        return self.parse_predicate()

    def parse_predicate(self) -> Node:
        if self.at_keyword("EXISTS"):
            token = self.advance()
            self.expect_op("(")
            operand = self.parse_property_only("EXISTS")
            self.expect_op(")")
            return self.make(nodes.Exists(operand, pos=token.pos))
        left = self.parse_additive()
        token = self.peek()
        if token.kind == "op" and token.value in COMPARISON_OPS:
            self.advance()
            self.require_value(left)
            right = self.parse_additive()
            self.require_value(right)
            op = "<>" if token.value == "!=" else token.value
            return self.make(nodes.Comparison(op, left, right, pos=left.pos))
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
            return self.make(nodes.In(left, tuple(items), negated, pos=left.pos))
        if self.at_keyword("LIKE"):
            self.advance()
            self.require_value(left)
            pattern = self.parse_value()
            escape: Node | None = None
            if self.at_keyword("ESCAPE"):
                self.advance()
                escape = self.parse_value()
            check_like_constants(pattern, escape)
            return self.make(nodes.Like(left, pattern, escape, negated, pos=left.pos))
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
            return self.make(nodes.IsNull(left, is_not, pos=left.pos))
        return left

    def parse_value(self) -> Node:
        node = self.parse_additive()
        self.require_value(node)
        return node

    def parse_additive(self) -> Node:
        return self._parse_arithmetic(("+", "-"), self.parse_multiplicative)

    def parse_multiplicative(self) -> Node:
        return self._parse_arithmetic(("*", "/", "%"), self.parse_unary)

    def _parse_arithmetic(self, ops: tuple[str, ...], parse_operand: Callable[[], Node]) -> Node:
        """One precedence level of binary arithmetic: operands joined left to right."""
        left = parse_operand()
        while self.at_op(*ops):
            token = self.advance()
            self.require_value(left)
            right = parse_operand()
            self.require_value(right)
            left = self.make(nodes.Arithmetic(token.value, left, right, pos=left.pos))
        return left

    def parse_unary(self) -> Node:
        if self.at_op("+", "-"):
            token = self.advance()
            self.enter(token.pos)
            operand = self.parse_unary()
            self.require_value(operand)
            self.leave()
            return self.make(nodes.Unary(token.value, operand, pos=token.pos))
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.advance()
        if token.kind in ("num", "str"):
            return nodes.Constant(token.value, pos=token.pos)
        if token.kind == "kw":
            if token.value == "NULL":
                return nodes.Constant(None, pos=token.pos)
            if token.value in ("TRUE", "FALSE"):
                return nodes.Constant(token.value == "TRUE", pos=token.pos)
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

    def parse_scoped(self, scope_token: Token) -> Property:
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
        if scope == "sys" and normalise_system_name(name) not in SYSTEM_PROPERTIES:
            raise FilterSyntaxError(f"unknown system property {name!r}", name_token.pos)
        return Property(name, scope, pos=scope_token.pos)

    def parse_function(self, name_token: Token) -> Node:
        name = str(name_token.value).casefold()
        self.advance()  # (
        if name == "newid":
            self.expect_op(")")
            return nodes.Function("newid", (), pos=name_token.pos)
        if name in ("property", "p"):
            argument = self.parse_value()
            self.expect_op(")")
            return self.make(nodes.Function("property", (argument,), pos=name_token.pos))
        raise FilterSyntaxError(f"unknown function {name_token.value!r}", name_token.pos)

    def parse_property_only(self, context: str) -> Property:
        node = self.parse_primary()
        if not isinstance(node, Property):
            raise FilterSyntaxError(f"{context} needs a property", node.pos)
        return node


def check_like_constants(pattern: Node, escape: Node | None) -> None:
    """Refuse a constant LIKE pattern or ESCAPE that can never be valid."""
    escape_char: str | None = None
    if isinstance(escape, nodes.Constant):
        if not isinstance(escape.value, str) or len(escape.value) != 1:
            raise FilterSyntaxError("ESCAPE needs a string of one character", escape.pos)
        escape_char = escape.value
    if isinstance(pattern, nodes.Constant):
        if not isinstance(pattern.value, str):
            raise FilterSyntaxError("the LIKE pattern must be a string", pattern.pos)
        if escape is None or escape_char is not None:
            try:
                like_segments(pattern.value, escape_char)
            except ValueError as exc:
                raise FilterSyntaxError(str(exc), pattern.pos) from exc


def validate(node: Node, want_predicate: bool) -> None:
    """Check a hand-built AST the way the parser checks parsed text."""
    if is_predicate(node) != want_predicate:
        kind = "a condition" if want_predicate else "a value"
        raise FilterSyntaxError(f"expected {kind}, found {type(node).__name__}", node.pos)
    if node.depth > MAX_NESTING_DEPTH:
        raise FilterSyntaxError("expression nested too deeply", node.pos)
    if isinstance(node, nodes.Constant):
        value = node.value
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int) and 0 <= value <= INT64_MAX:
            return
        if isinstance(value, float) and math.isfinite(value) and math.copysign(1.0, value) > 0:
            return
        raise FilterSyntaxError(f"invalid constant {value!r}", node.pos)
    if isinstance(node, Property):
        if node.scope not in ("user", "sys") or not node.name:
            raise FilterSyntaxError(f"invalid property {node!r}", node.pos)
        if node.scope == "sys" and normalise_system_name(node.name) not in SYSTEM_PROPERTIES:
            raise FilterSyntaxError(f"unknown system property {node.name!r}", node.pos)
        return
    if isinstance(node, nodes.Function):
        arity = {"newid": 0, "property": 1}.get(node.name)
        if arity is None or len(node.args) != arity:
            raise FilterSyntaxError(f"invalid function {node.name!r}", node.pos)
        for arg in node.args:
            validate(arg, False)
        return
    if isinstance(node, nodes.Unary) and node.op not in ("+", "-"):
        raise FilterSyntaxError(f"invalid unary operator {node.op!r}", node.pos)
    if isinstance(node, nodes.Arithmetic) and node.op not in ARITHMETIC_OPS:
        raise FilterSyntaxError(f"invalid arithmetic operator {node.op!r}", node.pos)
    if isinstance(node, nodes.Comparison) and node.op not in COMPARISON_OPS - {"!="}:
        raise FilterSyntaxError(f"invalid comparison operator {node.op!r}", node.pos)
    if isinstance(node, nodes.In) and not node.items:
        raise FilterSyntaxError("IN needs at least one item", node.pos)
    if isinstance(node, (nodes.And, nodes.Or)) and len(node.operands) < 2:
        raise FilterSyntaxError("AND/OR need at least two operands", node.pos)
    if isinstance(node, (nodes.IsNull, nodes.Exists)) and not isinstance(node.operand, Property):
        raise FilterSyntaxError("IS NULL and EXISTS need a property", node.pos)
    if isinstance(node, nodes.Like):
        check_like_constants(node.pattern, node.escape)
    child_is_predicate = isinstance(node, (nodes.Not, nodes.And, nodes.Or))
    for child in node.children():
        validate(child, child_is_predicate)
