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

The package, in the order an expression goes through it: :mod:`.names` (limits, keywords,
system property names), :mod:`.lexer`, :mod:`.parser`, :mod:`.nodes` (the AST and its
canonical SQL), :mod:`.compiler` (AST to closures) with :mod:`.semantics` (what the
operators mean) and :mod:`.like`; then :mod:`.filters` and :mod:`.correlation`.
"""

from __future__ import annotations

from . import correlation, filters, nodes
from .correlation import *  # noqa: F403  (CorrelationFilter, CORRELATION_FIELDS)
from .filters import *  # noqa: F403  (Filter, SqlFilter, TrueFilter, FalseFilter, parse_filter, ...)
from .names import MAX_EXPRESSION_LENGTH, MAX_NESTING_DEPTH
from .nodes import *  # noqa: F403  (the AST node classes and to_sql)

__all__ = ["MAX_EXPRESSION_LENGTH", "MAX_NESTING_DEPTH"]
__all__ += correlation.__all__
__all__ += filters.__all__
__all__ += nodes.__all__
