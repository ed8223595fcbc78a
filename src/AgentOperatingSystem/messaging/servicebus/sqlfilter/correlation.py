"""Correlation filters: equality on system fields and user properties, evaluated without
SQL, and convertible to the equivalent SQL filter."""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, overload

from ...errors import ConfigurationError, FilterEvaluationError
from .compiler import compile_property
from .filters import Filter, SqlFilter
from .names import INT64_MAX
from .nodes import And, Comparison, Constant, IsNull, Node, Property, Unary, to_sql
from .semantics import EMPTY, MISSING, Props, ci_lookup, eq

__all__ = ["CORRELATION_FIELDS", "CorrelationFilter"]

CORRELATION_FIELDS: Final = (
    ("correlation_id", "CorrelationId"),
    ("message_id", "MessageId"),
    ("to", "To"),
    ("reply_to", "ReplyTo"),
    ("subject", "Label"),
    ("session_id", "SessionId"),
    ("reply_to_session_id", "ReplyToSessionId"),
    ("content_type", "ContentType"),
)
"""The system fields a :class:`CorrelationFilter` can require, in order: each one's
snake_case key (in ``system`` and :attr:`~CorrelationFilter.system_values`) and its SQL
``sys.`` name."""


def _sql_constant(value: Any, what: str) -> Node:
    if value is None or isinstance(value, (bool, str)):
        return Constant(value)
    if isinstance(value, int) and abs(value) <= INT64_MAX:
        return Constant(value) if value >= 0 else Unary("-", Constant(-value))
    if isinstance(value, float) and math.isfinite(value):
        if math.copysign(1.0, value) > 0:
            return Constant(value)
        return Unary("-", Constant(-value))
    raise ConfigurationError(f"{what}: a {type(value).__name__} value cannot be written as SQL")


class _Required:
    """A read-only attribute of a :class:`CorrelationFilter`: the value it requires of the
    system field ``key`` (by default the attribute's own name), or None."""

    def __init__(self, doc: str, *, key: str = "") -> None:
        self.__doc__ = doc
        self._key = key
        self._name = key

    def __set_name__(self, owner: type[CorrelationFilter], name: str) -> None:
        self._name = name
        self._key = self._key or name

    @overload
    def __get__(self, instance: None, owner: type[CorrelationFilter]) -> _Required: ...

    @overload
    def __get__(
        self, instance: CorrelationFilter, owner: type[CorrelationFilter] | None = None
    ) -> str | None: ...

    def __get__(
        self, instance: CorrelationFilter | None, owner: type[CorrelationFilter] | None = None
    ) -> _Required | str | None:
        if instance is None:
            return self
        return instance._system_values.get(self._key)

    def __set__(self, instance: CorrelationFilter, value: object) -> None:
        raise AttributeError(f"CorrelationFilter.{self._name} is read-only")


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
        checks: list[tuple[Callable[[Props, Props], Any], str]] = []
        for key, sql_name in CORRELATION_FIELDS:
            value = given[key]
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigurationError(f"CorrelationFilter {key} must be a str")
            system_values[key] = value
            checks.append((compile_property(Property(sql_name, "sys")), value))
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

    correlation_id = _Required("The required correlation id, if any.")
    message_id = _Required("The required message id, if any.")
    to = _Required("The required ``to`` address, if any.")
    reply_to = _Required("The required reply-to address, if any.")
    subject = _Required("The required subject (label), if any.")
    label = _Required("Alias of :attr:`subject`.", key="subject")
    session_id = _Required("The required session id, if any.")
    reply_to_session_id = _Required("The required reply-to session id, if any.")
    content_type = _Required("The required content type, if any.")

    def evaluate(self, properties: Props, system: Props | None = None) -> bool:
        """True when every given field and property matches."""
        system_props = EMPTY if system is None else system
        try:
            for getter, expected in self._system_checks:
                if eq(getter(properties, system_props), expected) is not True:
                    return False
            for name, folded, expected in self._user_checks:
                value = properties.get(name, MISSING)
                if value is MISSING:
                    value = ci_lookup(properties, folded)
                    if value is MISSING:
                        value = None
                if expected is None:
                    if value is not None:
                        return False
                elif eq(value, expected) is not True:
                    return False
        except Exception as exc:
            raise FilterEvaluationError(f"correlation filter failed: {exc}") from exc
        return True

    def to_ast(self) -> Node:
        """The equivalent SQL filter AST (``ConfigurationError`` if a value has no SQL form)."""
        conditions: list[Node] = []
        for key, sql_name in CORRELATION_FIELDS:
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
