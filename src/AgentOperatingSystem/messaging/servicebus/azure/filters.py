"""Filter translation: our filters (:mod:`..sqlfilter`) to the SDK's rule filters and back.

``TrueFilter``/``FalseFilter`` map to ``TrueRuleFilter``/``FalseRuleFilter``, a
``CorrelationFilter`` to a ``CorrelationRuleFilter`` (``subject`` is Azure's ``label``), and
any other filter to a ``SqlRuleFilter`` of its SQL.
"""

from __future__ import annotations

from typing import Any, Final, Mapping

from ...errors import ConfigurationError, FilterEvaluationError, FilterSyntaxError
from ..sqlfilter import (
    CORRELATION_FIELDS,
    CorrelationFilter,
    FalseFilter,
    Filter,
    SqlFilter,
    TrueFilter,
    filter_from_rule,
)
from .convert import str_or_none, text_of
from .sdk import CorrelationRuleFilter, FalseRuleFilter, SqlRuleFilter, TrueRuleFilter

__all__ = ["UnparsedSqlFilter", "from_azure_filter", "to_azure_filter"]

#: Each correlation field's key in our filters and its attribute on ``CorrelationRuleFilter``
#: (the same name, but for our ``subject``, which is Azure's ``label``).
_SDK_FIELDS: Final = tuple(
    (key, "label" if key == "subject" else key) for key, _sql_name in CORRELATION_FIELDS
)


class UnparsedSqlFilter(Filter):
    """A SQL filter read from Azure that this library's parser does not accept (for example
    one with ``@parameters``). It is kept as text; evaluating it in process fails."""

    __slots__ = ("expression",)

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def evaluate(
        self, properties: Mapping[str, Any], system: Mapping[str, Any] | None = None
    ) -> bool:
        """Always raises :class:`FilterEvaluationError` (Azure evaluates it, not us)."""
        raise FilterEvaluationError(f"filter {self.expression!r} is evaluated by Azure only")

    def to_sql(self) -> str:
        """The expression as Azure holds it."""
        return self.expression

    def __repr__(self) -> str:
        return f"UnparsedSqlFilter({self.expression!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnparsedSqlFilter) and other.expression == self.expression

    def __hash__(self) -> int:
        return hash(self.expression)


def to_azure_filter(rule_filter: Filter) -> SqlRuleFilter | CorrelationRuleFilter:
    """The SDK's rule filter for one of ours."""
    if isinstance(rule_filter, TrueFilter):
        return TrueRuleFilter()
    if isinstance(rule_filter, FalseFilter):
        return FalseRuleFilter()
    if isinstance(rule_filter, CorrelationFilter):
        values = rule_filter.system_values
        return CorrelationRuleFilter(
            **{sdk_name: values.get(key) for key, sdk_name in _SDK_FIELDS},
            properties=dict(rule_filter.properties) or None,
        )
    if isinstance(rule_filter, (SqlFilter, UnparsedSqlFilter)):
        return SqlRuleFilter(rule_filter.expression)
    return SqlRuleFilter(rule_filter.to_sql())


def from_azure_filter(value: Any) -> Filter:
    """Our filter for a rule filter the SDK read; SQL we cannot parse is kept as
    :class:`UnparsedSqlFilter`, a correlation filter we cannot hold as :class:`FalseFilter`."""
    if isinstance(value, TrueRuleFilter):
        return TrueFilter()
    if isinstance(value, FalseRuleFilter):
        return FalseFilter()
    if isinstance(value, CorrelationRuleFilter):
        fields = {key: str_or_none(getattr(value, sdk_name)) for key, sdk_name in _SDK_FIELDS}
        props = {str(text_of(k)): text_of(v) for k, v in (value.properties or {}).items()}
        try:
            return CorrelationFilter(
                **{k: v for k, v in fields.items() if v is not None},
                properties=props or None,
            )
        except ConfigurationError:
            return FalseFilter()
    if isinstance(value, SqlRuleFilter):
        expression = value.sql_expression or "1=1"
        try:
            return filter_from_rule(expression)
        except FilterSyntaxError:
            return UnparsedSqlFilter(expression)
    return UnparsedSqlFilter(str(value))
