"""Compilation: a checked AST becomes nested Python closures, so evaluating a filter never
walks the tree again (and never uses ``eval``). Constant sub-expressions are folded, and the
common shapes (``user_property <op> constant``, ``IN`` over constants, constant ``LIKE``
patterns) get closures that read the property inline."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Union

from . import nodes
from .like import like_matcher
from .names import SYSTEM_PROPERTIES, normalise_system_name
from .nodes import Node, Property
from .semantics import (
    ARITHMETIC,
    COMPARE,
    MIRRORED,
    MISSING,
    PY_ARITHMETIC,
    PY_COMPARE,
    Props,
    ci_lookup,
    eq,
    negate,
    plus,
    system_lookup,
    system_value,
    user_value,
)

__all__ = ["compile_filter", "compile_property"]


def compile_filter(ast: Node) -> Callable[[Props, Props], Any]:
    """A function ``(props, system) -> True | False | None`` evaluating a predicate AST."""
    return _as_function(_compile_predicate(ast))


class _Const:
    """A compile-time constant result (value or three-valued truth)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Compiled = Union[_Const, Callable[[Props, Props], Any]]
_ValueFn = Callable[[Props, Props], Any]


def _as_function(compiled: _Compiled) -> Callable[[Props, Props], Any]:
    if isinstance(compiled, _Const):
        value = compiled.value
        return lambda props, system: value
    return compiled


def compile_property(node: Property) -> Callable[[Props, Props], Any]:
    """A function ``(props, system) -> value`` reading one property (None when missing)."""
    if node.scope == "sys":
        normalised = normalise_system_name(node.name)
        keys = SYSTEM_PROPERTIES[normalised]

        def get_system(props: Props, system: Props) -> Any:
            value = system_lookup(system, keys, normalised)
            return None if value is MISSING else value

        return get_system
    name = node.name
    folded = name.casefold()

    def get_user(props: Props, system: Props) -> Any:
        value = props.get(name, MISSING)
        if value is MISSING:
            value = ci_lookup(props, folded)
            if value is MISSING:
                return None
        return value

    return get_user


def _compile_value(node: Node) -> _Compiled:
    if isinstance(node, nodes.Constant):
        return _Const(node.value)
    if isinstance(node, Property):
        return compile_property(node)
    if isinstance(node, nodes.Function):
        if node.name == "newid":
            return lambda props, system: uuid.uuid4()
        argument = _as_function(_compile_value(node.args[0]))

        def get_dynamic(props: Props, system: Props) -> Any:
            name = argument(props, system)
            if not isinstance(name, str):
                return None
            lowered = name.casefold()
            if lowered.startswith("sys."):
                return system_value(system, name[4:])
            if lowered.startswith("user."):
                name = name[5:]
            return user_value(props, name)

        return get_dynamic
    if isinstance(node, nodes.Unary):
        unary = negate if node.op == "-" else plus
        operand = _compile_value(node.operand)
        if isinstance(operand, _Const):
            return _Const(unary(operand.value))
        operand_fn = operand
        return lambda props, system: unary(operand_fn(props, system))
    if isinstance(node, nodes.Arithmetic):
        op = ARITHMETIC[node.op]
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
    op = ARITHMETIC[op_name]
    folded = name.casefold()
    fast = PY_ARITHMETIC.get(op_name)
    if fast is not None and type(constant) in (int, float):
        fast_op = fast

        def arith_user_number(props: Props, system: Props) -> Any:
            value = props.get(name, MISSING)
            if value is MISSING:
                value = ci_lookup(props, folded)
                if value is MISSING:
                    return None
            kind = type(value)
            if kind is int or kind is float:
                try:
                    return fast_op(value, constant)
                except OverflowError:
                    return None
            return op(value, constant)

        return arith_user_number

    def arith_user(props: Props, system: Props) -> Any:
        value = props.get(name, MISSING)
        if value is MISSING:
            value = ci_lookup(props, folded)
            if value is MISSING:
                return None
        return op(value, constant)

    return arith_user


def _compile_comparison(node: nodes.Comparison) -> _Compiled:
    left = _compile_value(node.left)
    right = _compile_value(node.right)
    op_name = node.op
    if isinstance(left, _Const) and isinstance(right, _Const):
        return _Const(COMPARE[op_name](left.value, right.value))
    operand_node = node.left
    if isinstance(left, _Const):
        # constant on the left: mirror so the constant is on the right
        left, right = right, left
        op_name = MIRRORED[op_name]
        operand_node = node.right
    compare = COMPARE[op_name]
    if isinstance(right, _Const):
        constant = right.value
        assert not isinstance(left, _Const)
        getter = left
        if isinstance(operand_node, Property) and operand_node.scope == "user":
            name = operand_node.name
            folded = name.casefold()
            if op_name == "=" and type(constant) is str:

                def user_eq_str(props: Props, system: Props) -> bool | None:
                    value = props.get(name, MISSING)
                    if value is MISSING:
                        value = ci_lookup(props, folded)
                        if value is MISSING:
                            return None
                    if type(value) is str:
                        return value == constant
                    return eq(value, constant)

                return user_eq_str

            fast = PY_COMPARE.get(op_name)
            if fast is not None and type(constant) in (int, float):
                fast_op = fast

                def user_compare_number(props: Props, system: Props) -> bool | None:
                    value = props.get(name, MISSING)
                    if value is MISSING:
                        value = ci_lookup(props, folded)
                        if value is MISSING:
                            return None
                    kind = type(value)
                    if kind is int or kind is float:
                        return fast_op(value, constant)
                    return compare(value, constant)

                return user_compare_number

            def user_compare(props: Props, system: Props) -> bool | None:
                value = props.get(name, MISSING)
                if value is MISSING:
                    value = ci_lookup(props, folded)
                    if value is MISSING:
                        return None
                return compare(value, constant)

            return user_compare
        fast = PY_COMPARE.get(op_name)
        if fast is not None and type(constant) in (int, float):
            fast_op = fast

            def compare_number(props: Props, system: Props) -> bool | None:
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


def _compile_in(node: nodes.In) -> _Compiled:
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
            return any(eq(value, other) is True for other in slow_values)

        if isinstance(node.operand, Property) and node.operand.scope == "user":
            name = node.operand.name
            folded = name.casefold()

            def in_constants_user(props: Props, system: Props) -> bool | None:
                value = props.get(name, MISSING)
                if value is MISSING:
                    value = ci_lookup(props, folded)
                    if value is MISSING:
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

        def in_constants(props: Props, system: Props) -> bool | None:
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

    def in_expressions(props: Props, system: Props) -> bool | None:
        value = operand(props, system)
        if value is None:
            return None
        found = False
        for item_fn in item_fns:
            if eq(value, item_fn(props, system)) is True:
                found = True
                break
        return (not found) if negated else found

    return in_expressions


def _compile_like(node: nodes.Like) -> _Compiled:
    operand = _as_function(_compile_value(node.operand))
    pattern = _compile_value(node.pattern)
    escape = _compile_value(node.escape) if node.escape is not None else _Const(None)
    negated = node.negated
    if isinstance(pattern, _Const) and isinstance(escape, _Const):
        if pattern.value is None or (node.escape is not None and escape.value is None):
            return _Const(None)
        matcher = like_matcher(pattern.value, escape.value)
        if isinstance(node.operand, Property) and node.operand.scope == "user":
            name = node.operand.name
            folded = name.casefold()

            def like_constant_user(props: Props, system: Props) -> bool | None:
                value = props.get(name, MISSING)
                if type(value) is not str:
                    if value is MISSING:
                        value = ci_lookup(props, folded)
                    if not isinstance(value, str):
                        return None
                found = matcher(value)
                return (not found) if negated else found

            return like_constant_user

        def like_constant(props: Props, system: Props) -> bool | None:
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

    def like_dynamic(props: Props, system: Props) -> bool | None:
        value = operand(props, system)
        text = pattern_fn(props, system)
        escape_char = escape_fn(props, system)
        if not isinstance(value, str) or not isinstance(text, str):
            return None
        if has_escape and (not isinstance(escape_char, str) or len(escape_char) != 1):
            return None
        try:
            matcher = like_matcher(text, escape_char if has_escape else None)
        except ValueError:
            return None
        found = matcher(value)
        return (not found) if negated else found

    return like_dynamic


def _compile_exists(prop: Property) -> _Compiled:
    if prop.scope == "sys":
        getter = compile_property(prop)
        return lambda props, system: getter(props, system) is not None
    name = prop.name
    folded = name.casefold()

    def exists_user(props: Props, system: Props) -> bool | None:
        return name in props or ci_lookup(props, folded) is not MISSING

    return exists_user


def _compile_junction(node: nodes.And | nodes.Or) -> _Compiled:
    is_and = isinstance(node, nodes.And)
    dominant = not is_and  # False dominates AND, True dominates OR
    functions: list[Callable[[Props, Props], Any]] = []
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

        def all_of(props: Props, system: Props) -> bool | None:
            unknown = start_unknown
            for fn in fns:
                result = fn(props, system)
                if result is False:
                    return False
                if result is None:
                    unknown = True
            return None if unknown else True

        return all_of

    def any_of(props: Props, system: Props) -> bool | None:
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
    if isinstance(node, nodes.Comparison):
        return _compile_comparison(node)
    if isinstance(node, nodes.In):
        return _compile_in(node)
    if isinstance(node, nodes.Like):
        return _compile_like(node)
    if isinstance(node, nodes.IsNull):
        getter = compile_property(node.operand)
        if node.negated:
            return lambda props, system: getter(props, system) is not None
        return lambda props, system: getter(props, system) is None
    if isinstance(node, nodes.Exists):
        return _compile_exists(node.operand)
    if isinstance(node, nodes.Not):
        inner = _compile_predicate(node.operand)
        if isinstance(inner, _Const):
            return _Const(None if inner.value is None else not inner.value)
        inner_fn = inner

        def negation(props: Props, system: Props) -> bool | None:
            result = inner_fn(props, system)
            return None if result is None else not result

        return negation
    if isinstance(node, (nodes.And, nodes.Or)):
        return _compile_junction(node)
    raise TypeError(f"not a predicate node: {node!r}")
