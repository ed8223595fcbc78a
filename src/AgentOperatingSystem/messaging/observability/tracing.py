"""Traces: W3C trace context in a message's metadata, and the spans of a publish and a handler.

The trace context (``traceparent``/``tracestate``) travels in the message metadata under
``aos.traceparent``/``aos.tracestate``, written before the message is encoded, so it crosses
every engine and every HTTP hop between nodes. A publish is a ``PRODUCER`` span whose parent
is the current span, or, when there is none, the context the message already carries; a
handler call is a ``CONSUMER`` span whose parent is always the publisher's. A signed message
keeps the context it was signed with (rewriting it would break the signature). Attributes
are strings (OpenTelemetry messaging conventions plus ``aos.*``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..types import Message

__all__ = [
    "TRACEPARENT_KEY",
    "TRACESTATE_KEY",
    "end_span",
    "extract_trace_context",
    "http_trace_headers",
    "start_handle_span",
    "start_publish_span",
]

TRACEPARENT_KEY = "aos.traceparent"
"""Metadata key of the W3C ``traceparent`` a message carries."""
TRACESTATE_KEY = "aos.tracestate"
"""Metadata key of the W3C ``tracestate`` a message carries."""
_PREFIX = "aos."
_SIGNATURE_KEY = "aos.signature"


class _AosSetter(Setter[dict[str, Any]]):
    def set(self, carrier: dict[str, Any], key: str, value: str) -> None:
        carrier[_PREFIX + key] = value


class _AosGetter(Getter[Mapping[str, Any]]):
    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(_PREFIX + key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k[len(_PREFIX) :] for k in carrier if k.startswith(_PREFIX)]


_SETTER = _AosSetter()
_GETTER = _AosGetter()


def extract_trace_context(message: Message) -> otel_context.Context | None:
    """The OpenTelemetry context carried by ``message`` (None when it carries none)."""
    if TRACEPARENT_KEY not in message.metadata:
        return None
    return propagate.extract(message.metadata, getter=_GETTER)


def http_trace_headers(message: Message) -> dict[str, str]:
    """The W3C ``traceparent``/``tracestate`` headers for sending ``message`` over HTTP."""
    out: dict[str, str] = {}
    for key in ("traceparent", "tracestate"):
        value = message.metadata.get(_PREFIX + key)
        if isinstance(value, str) and value:
            out[key] = value
    return out


def _span_attributes(
    msg: Message, operation_type: str, operation: str, destination: str
) -> dict[str, str]:
    """The attributes every AOS span carries (all strings)."""
    attributes = {
        "messaging.system": "aos",
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.message.id": msg.message_id,
        "aos.message_type": msg.message_type.value,
        "aos.sender_id": msg.sender_id,
    }
    if msg.recipient_id is not None:
        attributes["aos.recipient_id"] = msg.recipient_id
    if msg.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = msg.correlation_id
    return attributes


def start_publish_span(
    tracer: trace.Tracer, msg: Message, queues: list[str], label: Callable[[str], str]
) -> trace.Span:
    """Start the ``PRODUCER`` span of publishing ``msg`` to ``queues`` and write its trace
    context into the metadata (unless the message is signed). ``label`` names a queue in the
    span's name."""
    parent: otel_context.Context | None = None
    if not trace.get_current_span().get_span_context().is_valid:
        parent = extract_trace_context(msg)
    dest = queues[0] if len(queues) == 1 else msg.message_type.value
    attributes = _span_attributes(msg, "send", "publish", dest)
    attributes["aos.priority"] = msg.priority.name
    attributes["aos.queues"] = ",".join(queues)
    span = tracer.start_span(
        f"publish {label(dest)}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes=attributes,
    )
    if _SIGNATURE_KEY not in msg.metadata:
        # A signed message (forwarded, republished) keeps the context it was signed with:
        # rewriting it would break the signature. Its spans still join the same trace.
        propagate.inject(msg.metadata, context=trace.set_span_in_context(span), setter=_SETTER)
    return span


def start_handle_span(
    tracer: trace.Tracer, msg: Message, agent: str, attempt: int, label: Callable[[str], str]
) -> tuple[trace.Span, object]:
    """Start the ``CONSUMER`` span of ``agent`` handling ``msg`` and make it current; return
    it with the token that :func:`end_span` detaches."""
    # The parent is the publisher's span, never whatever context the consumer task
    # happened to inherit; without trace context the handler starts a new trace.
    parent = extract_trace_context(msg) or otel_context.Context()
    attributes = _span_attributes(msg, "process", "process", agent)
    attributes["aos.attempt"] = str(attempt)
    span = tracer.start_span(
        f"process {label(agent)}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
    return span, otel_context.attach(trace.set_span_in_context(span))


def end_span(span: trace.Span, exc: BaseException | None, token: object | None = None) -> None:
    """Detach ``token`` (if any), record ``exc`` (if any) as the span's error, and end it."""
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
    if exc is not None:
        span.record_exception(exc)
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    span.end()
