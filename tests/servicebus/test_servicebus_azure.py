"""ServiceBusManager on Azure Service Bus, against a fake namespace at the network boundary.

Azure cannot be reached from CI, so the two network edges of the official SDK are replaced,
and everything between them and our code is the real ``azure-servicebus`` 7.x:

* **Administration (HTTPS/Atom XML)**: the real ``ServiceBusAdministrationClient`` runs with a
  fake azure-core *transport* (``FakeManagementTransport``). It answers the REST calls the SDK
  makes (``PUT /topic``, ``GET /$Resources/topics``, ``PUT /t/subscriptions/s/rules/r`` ...)
  with Atom XML, status codes (201, 404, 409) and Service Bus error bodies, so the SDK's own
  serialisation, parsing and exception mapping are exercised.
* **Messaging (AMQP)**: ``FakeClient`` stands in for ``azure.servicebus.aio.ServiceBusClient``
  (its methods check their arguments against the real SDK signatures). What the adapter sends
  must be a real ``ServiceBusMessage``; the fake turns it into AMQP bytes with the SDK's own
  encoder and hands receivers real ``ServiceBusReceivedMessage`` objects decoded from those
  bytes (so application properties come back with ``bytes`` keys, as on Azure), with broker
  annotations (sequence number, enqueued time, lock, delivery count - 1 in the header) added.
  The fake routes with rules it keeps from the XML, evaluating SQL filters with this
  library's parser (it plays the server; it is not what is under test).

What this cannot show: the real service's behaviour (its filter evaluation, quotas, timing).
``tests/servicebus/test_servicebus_azure_live.py`` runs against a real namespace when
``AZURE_SERVICE_BUS_CONNECTION_STRING`` is set.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, AsyncIterator, cast
from urllib.parse import unquote, urlparse

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
)
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus import exceptions as sb_errors
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import Header
from azure.servicebus._pyamqp.utils import amqp_long_value, amqp_timestamp_value
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender

from AgentOperatingSystem.messaging.errors import (
    BrokerClosedError,
    BrokerUnavailableError,
    ConfigurationError,
    EntityExistsError,
    EntityNotFoundError,
    LockLostError,
    MessageTooLargeError,
    PermissionDeniedError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from AgentOperatingSystem.messaging.servicebus.azure import (
    AzureServiceBus,
    UnparsedSqlFilter,
    translate_azure_error,
)
from AgentOperatingSystem.messaging.servicebus.manager import (
    DEFAULT_RULE_NAME,
    ServiceBusManager,
    application_properties,
    servicebus_info,
)
from AgentOperatingSystem.messaging.servicebus.sqlfilter import (
    CorrelationFilter,
    FalseFilter,
    Filter,
    SqlFilter,
    TrueFilter,
    parse_filter,
)
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from tests.support.waiting import eventually

CONNECTION_STRING = (
    "Endpoint=sb://aos-fake.servicebus.windows.net/;"
    "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=ZmFrZS1rZXk="
)
ATOM = "http://www.w3.org/2005/Atom"
SB = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SB_COUNTS = "http://schemas.microsoft.com/netservices/2011/06/servicebus"


# ============================================================================ fake namespace


@dataclass
class Stored:
    """One message in a subscription (or its dead-letter queue) of the fake namespace."""

    amqp: Any  # a pyamqp Message
    sequence: int
    enqueued_ms: int
    deliveries: int = 0
    lock_token: uuid.UUID | None = None
    locked_until_ms: int = 0


@dataclass
class FakeSubscription:
    description: ET.Element
    rules: dict[str, ET.Element] = field(default_factory=dict)
    active: list[Stored] = field(default_factory=list)
    dead: list[Stored] = field(default_factory=list)

    def child(self, name: str) -> str | None:
        node = self.description.find(f"{{{SB}}}{name}")
        return None if node is None else node.text

    @property
    def max_delivery_count(self) -> int:
        return int(self.child("MaxDeliveryCount") or 10)


class FakeNamespace:
    """The state of a fake Service Bus namespace, shared by both fake edges."""

    def __init__(self) -> None:
        self.topics: dict[str, ET.Element] = {}
        self.subscriptions: dict[tuple[str, str], FakeSubscription] = {}
        self.sequence = 0
        self.http: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()
        self.fail_next_send: BaseException | None = None
        self.fail_http: list[int] = []  # statuses for the next HTTP requests

    def subs_of(self, topic: str) -> list[tuple[str, FakeSubscription]]:
        return [(s, sub) for (t, s), sub in self.subscriptions.items() if t == topic]

    # -- routing ------------------------------------------------------------------
    @staticmethod
    def _matches(rule: ET.Element, props: dict[str, Any], system: dict[str, Any]) -> bool:
        node = rule.find(f"{{{SB}}}Filter")
        assert node is not None
        kind = node.get(f"{{{XSI}}}type")
        if kind == "TrueFilter":
            return True
        if kind == "FalseFilter":
            return False
        if kind == "SqlFilter":
            text = node.findtext(f"{{{SB}}}SqlExpression") or ""
            return parse_filter(text).evaluate(props, system)
        assert kind == "CorrelationFilter", kind
        fields = {
            "CorrelationId": "correlation_id",
            "MessageId": "message_id",
            "To": "to",
            "ReplyTo": "reply_to",
            "Label": "subject",
            "SessionId": "session_id",
            "ContentType": "content_type",
        }
        for xml_name, key in fields.items():
            want = node.findtext(f"{{{SB}}}{xml_name}")
            if want is not None and system.get(key) != want:
                return False
        for kv in node.iter(f"{{{SB}}}KeyValueOfstringanyType"):
            name = kv.findtext(f"{{{SB}}}Key")
            value_node = kv.find(f"{{{SB}}}Value")
            assert name is not None and value_node is not None
            raw = value_node.text or ""
            typed: Any = int(raw) if value_node.get(f"{{{XSI}}}type", "").endswith("int") else raw
            if props.get(name) != typed:
                return False
        return True

    def publish(self, topic: str, message: ServiceBusMessage) -> None:
        if self.fail_next_send is not None:
            exc, self.fail_next_send = self.fail_next_send, None
            raise exc
        if topic not in self.topics:
            raise sb_errors.MessagingEntityNotFoundError(
                message=f"The messaging entity {topic!r} could not be found"
            )
        amqp = PyamqpTransport.to_outgoing_amqp_message(message.raw_amqp_message)
        props = {str(k): v for k, v in (message.application_properties or {}).items()}
        system = {
            "message_id": message.message_id,
            "correlation_id": message.correlation_id,
            "to": message.to,
            "reply_to": message.reply_to,
            "subject": message.subject,
            "content_type": message.content_type,
            "session_id": message.session_id,
        }
        self.sequence += 1
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        for _name, sub in self.subs_of(topic):
            if any(self._matches(rule, props, system) for rule in sub.rules.values()):
                sub.active.append(Stored(amqp, self.sequence, now_ms))
        self.arrived.set()


def _received(
    stored: Stored, receiver: Any, *, extra_props: dict[str, str] | None = None, peek: bool = False
) -> ServiceBusReceivedMessage:
    """What the SDK would build from the wire: encode to AMQP bytes, decode, wrap."""
    amqp = stored.amqp
    annotations = dict(amqp.message_annotations or {})
    annotations[b"x-opt-sequence-number"] = amqp_long_value(stored.sequence)  # type: ignore[no-untyped-call]
    annotations[b"x-opt-enqueued-time"] = amqp_timestamp_value(stored.enqueued_ms)  # type: ignore[no-untyped-call]
    if stored.locked_until_ms and not peek:
        until = stored.locked_until_ms
        annotations[b"x-opt-locked-until"] = amqp_timestamp_value(until)  # type: ignore[no-untyped-call]
    app = dict(amqp.application_properties or {})
    for key, value in (extra_props or {}).items():
        app[key] = value
    count = max(0, stored.deliveries - 1)  # Azure sends the delivery count minus one
    header = (
        amqp.header._replace(delivery_count=count)
        if amqp.header is not None
        else Header(delivery_count=count)
    )
    wire = encode_payload(
        bytearray(),
        amqp._replace(message_annotations=annotations, application_properties=app, header=header),
    )
    decoded = decode_payload(memoryview(bytes(wire)))
    kwargs: dict[str, Any] = {"receiver": receiver}
    if peek:
        kwargs["is_peeked_message"] = True
    else:
        kwargs["lock_token"] = stored.lock_token
    return ServiceBusReceivedMessage(decoded, **kwargs)


def _check_call(method: Any, *args: Any, **kwargs: Any) -> None:
    """Fail like the SDK would if the adapter calls a method with arguments it does not take."""
    inspect.signature(method).bind(None, *args, **kwargs)


class FakeSender:
    def __init__(self, ns: FakeNamespace, topic: str) -> None:
        self.ns, self.topic, self.closed = ns, topic, False
        self.sent: list[ServiceBusMessage] = []

    async def send_messages(self, message: Any, **kwargs: Any) -> None:
        _check_call(ServiceBusSender.send_messages, message, **kwargs)
        assert isinstance(message, ServiceBusMessage), type(message)
        assert not self.closed
        self.sent.append(message)
        self.ns.publish(self.topic, message)

    async def close(self) -> None:
        self.closed = True


class FakeReceiver:
    def __init__(self, ns: FakeNamespace, topic: str, sub: str, kwargs: dict[str, Any]) -> None:
        self.ns, self.topic, self.sub = ns, topic, sub
        sub_queue = kwargs.get("sub_queue")
        mode = kwargs.get("receive_mode")
        self.dead_letter_queue = getattr(sub_queue, "value", sub_queue) == "deadletter"
        self.delete_mode = getattr(mode, "value", mode) == "receiveanddelete"
        self.closed = False
        self.settled: set[uuid.UUID] = set()

    def _sub(self) -> FakeSubscription:
        found = self.ns.subscriptions.get((self.topic, self.sub))
        if found is None:
            raise sb_errors.MessagingEntityNotFoundError(
                message=f"{self.topic}/{self.sub} not found"
            )
        return found

    def _queue(self) -> list[Stored]:
        sub = self._sub()
        return sub.dead if self.dead_letter_queue else sub.active

    async def receive_messages(self, *args: Any, **kwargs: Any) -> list[ServiceBusReceivedMessage]:
        _check_call(ServiceBusReceiver.receive_messages, *args, **kwargs)
        assert not self.closed
        count = kwargs.get("max_message_count", args[0] if args else 1) or 1
        wait = kwargs.get("max_wait_time", args[1] if len(args) > 1 else None) or 60.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            now_ms = int(datetime.now(UTC).timestamp() * 1000)
            ready = [s for s in self._queue() if s.lock_token is None or s.locked_until_ms < now_ms]
            if ready:
                break
            self.ns.arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                return []
            try:
                await asyncio.wait_for(self.ns.arrived.wait(), left)
            except TimeoutError:
                return []
        out = []
        for stored in ready[:count]:
            stored.deliveries += 1
            extra = self._dead_props(stored)
            if self.delete_mode:
                self._queue().remove(stored)
                out.append(_received(stored, self, extra_props=extra))
                continue
            stored.lock_token = uuid.uuid4()
            stored.locked_until_ms = now_ms + 60_000
            out.append(_received(stored, self, extra_props=extra))
        return out

    def _dead_props(self, stored: Stored) -> dict[str, str]:
        return getattr(stored, "dead_props", {}) if self.dead_letter_queue else {}

    def _held(self, message: ServiceBusReceivedMessage) -> Stored:
        token = message.lock_token
        if token in self.settled:
            raise sb_errors.MessageAlreadySettled()
        for stored in self._queue():
            if stored.lock_token == token:
                return stored
        raise sb_errors.MessageLockLostError(message="The lock supplied is invalid.")

    async def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        _check_call(ServiceBusReceiver.complete_message, message)
        stored = self._held(message)
        self._queue().remove(stored)
        self.settled.add(stored.lock_token)  # type: ignore[arg-type]

    async def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        _check_call(ServiceBusReceiver.abandon_message, message)
        stored = self._held(message)
        self.settled.add(stored.lock_token)  # type: ignore[arg-type]
        stored.lock_token = None
        sub = self._sub()
        if not self.dead_letter_queue and stored.deliveries >= sub.max_delivery_count:
            sub.active.remove(stored)
            stored.dead_props = {  # type: ignore[attr-defined]
                "DeadLetterReason": "MaxDeliveryCountExceeded",
                "DeadLetterErrorDescription": "Message could not be consumed after 3 attempts.",
            }
            sub.dead.append(stored)
        self.ns.arrived.set()

    async def dead_letter_message(
        self, message: ServiceBusReceivedMessage, *args: Any, **kwargs: Any
    ) -> None:
        _check_call(ServiceBusReceiver.dead_letter_message, message, *args, **kwargs)
        stored = self._held(message)
        self.settled.add(stored.lock_token)  # type: ignore[arg-type]
        sub = self._sub()
        sub.active.remove(stored)
        stored.lock_token = None
        props = {}
        if kwargs.get("reason") is not None:
            props["DeadLetterReason"] = kwargs["reason"]
        if kwargs.get("error_description") is not None:
            props["DeadLetterErrorDescription"] = kwargs["error_description"]
        stored.dead_props = props  # type: ignore[attr-defined]
        sub.dead.append(stored)

    async def renew_message_lock(
        self, message: ServiceBusReceivedMessage, **kwargs: Any
    ) -> datetime:
        _check_call(ServiceBusReceiver.renew_message_lock, message, **kwargs)
        stored = self._held(message)
        stored.locked_until_ms += 60_000
        return datetime.fromtimestamp(stored.locked_until_ms / 1000, UTC)

    async def peek_messages(self, *args: Any, **kwargs: Any) -> list[ServiceBusReceivedMessage]:
        _check_call(ServiceBusReceiver.peek_messages, *args, **kwargs)
        count = kwargs.get("max_message_count", args[0] if args else 1)
        start = kwargs.get("sequence_number", 0)
        found = [s for s in self._queue() if s.sequence >= start][:count]
        return [_received(s, self, extra_props=self._dead_props(s), peek=True) for s in found]

    async def close(self) -> None:
        self.closed = True


class FakeClient:
    """Stands in for ``azure.servicebus.aio.ServiceBusClient`` (the AMQP edge)."""

    def __init__(self, ns: FakeNamespace) -> None:
        self.ns = ns
        self.senders: list[FakeSender] = []
        self.receivers: list[FakeReceiver] = []
        self.closed = False

    def get_topic_sender(self, *args: Any, **kwargs: Any) -> FakeSender:
        _check_call(ServiceBusClient.get_topic_sender, *args, **kwargs)
        sender = FakeSender(self.ns, kwargs.get("topic_name") or args[0])
        self.senders.append(sender)
        return sender

    def get_subscription_receiver(self, *args: Any, **kwargs: Any) -> FakeReceiver:
        _check_call(ServiceBusClient.get_subscription_receiver, *args, **kwargs)
        receiver = FakeReceiver(self.ns, kwargs["topic_name"], kwargs["subscription_name"], kwargs)
        self.receivers.append(receiver)
        return receiver

    async def close(self) -> None:
        self.closed = True


class FakeResponse(AsyncHttpResponseImpl):
    def __init__(self, request: Any, status: int, body: bytes) -> None:
        super().__init__(
            request=request,
            internal_response=None,
            status_code=status,
            reason="OK" if status < 400 else "Error",
            content_type="application/atom+xml",
            headers={"Content-Type": "application/atom+xml; type=entry; charset=utf-8"},
            stream_download_generator=None,
        )
        self._content = body
        self._is_closed = True
        self._is_stream_consumed = True


def _entry(url: str, name: str, description: ET.Element) -> ET.Element:
    node = ET.Element(f"{{{ATOM}}}entry")
    ET.SubElement(node, f"{{{ATOM}}}id").text = url
    title = ET.SubElement(node, f"{{{ATOM}}}title")
    title.set("type", "text")
    title.text = name
    content = ET.SubElement(node, f"{{{ATOM}}}content")
    content.set("type", "application/xml")
    content.append(description)
    return node


def _feed(url: str, entries: list[ET.Element]) -> bytes:
    node = ET.Element(f"{{{ATOM}}}feed")
    ET.SubElement(node, f"{{{ATOM}}}title").text = "Publicly Listed Services"
    link = ET.SubElement(node, f"{{{ATOM}}}link")
    link.set("rel", "self")
    link.set("href", url)
    node.extend(entries)
    return ET.tostring(node)


def _error(status: int, detail: str) -> bytes:
    return f"<Error><Code>{status}</Code><Detail>{detail}</Detail></Error>".encode()


def _set(description: ET.Element, name: str, value: str) -> None:
    node = description.find(f"{{{SB}}}{name}")
    if node is None:
        node = ET.SubElement(description, f"{{{SB}}}{name}")
    node.text = value


class FakeManagementTransport(AsyncHttpTransport):  # type: ignore[type-arg]
    """The HTTPS edge: answers the Service Bus management REST API from a FakeNamespace."""

    def __init__(self, ns: FakeNamespace) -> None:
        self.ns = ns
        self.closed = False

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeManagementTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, request: Any, **kwargs: Any) -> FakeResponse:
        url = request.url
        path = unquote(urlparse(url).path)
        method = request.method
        self.ns.http.append((method, path))
        assert request.headers.get("Authorization", "").startswith("SharedAccessSignature ")
        if self.ns.fail_http:
            status = self.ns.fail_http.pop(0)
            return FakeResponse(request, status, _error(status, "injected failure"))
        body = request.content
        root = ET.fromstring(body) if body else None
        description = None
        if root is not None:
            content = root.find(f"{{{ATOM}}}content")
            assert content is not None
            description = content[0]
        ns = self.ns
        if path == "/$Resources/topics":
            return FakeResponse(
                request, 200, _feed(url, [_entry(url, t, d) for t, d in ns.topics.items()])
            )
        match = re.fullmatch(r"/([^/]+)/subscriptions/([^/]+)/rules(?:/([^/]+))?", path)
        if match:
            return self._rule(
                request, url, method, match.group(1), match.group(2), match.group(3), description
            )
        match = re.fullmatch(r"/([^/]+)/subscriptions(?:/([^/]+))?", path)
        if match:
            return self._subscription(
                request, url, method, match.group(1), match.group(2), description
            )
        topic = path.strip("/")
        if method == "PUT":
            assert description is not None and description.tag == f"{{{SB}}}TopicDescription"
            if topic in ns.topics:
                return FakeResponse(
                    request, 409, _error(409, "The messaging entity already exists.")
                )
            _set(description, "SizeInBytes", "0")
            ns.topics[topic] = description
            return FakeResponse(request, 201, ET.tostring(_entry(url, topic, description)))
        if method == "GET":
            if topic not in ns.topics:  # Azure answers an unknown entity with an empty feed
                return FakeResponse(request, 200, _feed(url, []))
            description = ns.topics[topic]
            _set(description, "SubscriptionCount", str(len(ns.subs_of(topic))))
            return FakeResponse(request, 200, ET.tostring(_entry(url, topic, description)))
        assert method == "DELETE"
        if ns.topics.pop(topic, None) is None:
            return FakeResponse(request, 404, _error(404, "Entity not found."))
        for name, _sub in ns.subs_of(topic):
            del ns.subscriptions[(topic, name)]
        return FakeResponse(request, 200, b"")

    def _subscription(
        self,
        request: Any,
        url: str,
        method: str,
        topic: str,
        name: str | None,
        description: ET.Element | None,
    ) -> FakeResponse:
        ns = self.ns
        if name is None:
            entries = [_entry(url, n, self._described(s)) for n, s in ns.subs_of(topic)]
            return FakeResponse(request, 200, _feed(url, entries))
        key = (topic, name)
        if method == "PUT":
            assert description is not None
            if topic not in ns.topics:
                return FakeResponse(request, 404, _error(404, f"Topic {topic} not found."))
            if key in ns.subscriptions:
                return FakeResponse(
                    request, 409, _error(409, "The messaging entity already exists.")
                )
            sub = FakeSubscription(description)
            default = ET.Element(f"{{{SB}}}RuleDescription")
            flt = ET.SubElement(default, f"{{{SB}}}Filter")
            flt.set(f"{{{XSI}}}type", "TrueFilter")
            ET.SubElement(flt, f"{{{SB}}}SqlExpression").text = "1=1"
            ET.SubElement(default, f"{{{SB}}}Action").set(f"{{{XSI}}}type", "EmptyRuleAction")
            ET.SubElement(default, f"{{{SB}}}Name").text = DEFAULT_RULE_NAME
            sub.rules[DEFAULT_RULE_NAME] = default
            ns.subscriptions[key] = sub
            return FakeResponse(request, 201, ET.tostring(_entry(url, name, description)))
        sub_state = ns.subscriptions.get(key)
        if sub_state is None:
            return FakeResponse(request, 404, _error(404, "Entity not found."))
        if method == "GET":
            return FakeResponse(
                request, 200, ET.tostring(_entry(url, name, self._described(sub_state)))
            )
        assert method == "DELETE"
        del ns.subscriptions[key]
        return FakeResponse(request, 200, b"")

    @staticmethod
    def _described(sub: FakeSubscription) -> ET.Element:
        description = sub.description
        _set(description, "MessageCount", str(len(sub.active) + len(sub.dead)))
        counts = description.find(f"{{{SB}}}CountDetails")
        if counts is not None:
            description.remove(counts)
        counts = ET.SubElement(description, f"{{{SB}}}CountDetails")
        for tag, value in (
            ("ActiveMessageCount", len(sub.active)),
            ("DeadLetterMessageCount", len(sub.dead)),
            ("ScheduledMessageCount", 0),
            ("TransferMessageCount", 0),
            ("TransferDeadLetterMessageCount", 0),
        ):
            ET.SubElement(counts, f"{{{SB_COUNTS}}}{tag}").text = str(value)
        return description

    def _rule(
        self,
        request: Any,
        url: str,
        method: str,
        topic: str,
        sub_name: str,
        name: str | None,
        description: ET.Element | None,
    ) -> FakeResponse:
        sub = self.ns.subscriptions.get((topic, sub_name))
        if sub is None:
            return FakeResponse(request, 404, _error(404, "Entity not found."))
        if name is None:
            entries = [_entry(url, n, r) for n, r in sub.rules.items()]
            return FakeResponse(request, 200, _feed(url, entries))
        if method == "PUT":
            assert description is not None
            if name in sub.rules:
                return FakeResponse(
                    request, 409, _error(409, "The messaging entity already exists.")
                )
            sub.rules[name] = description
            return FakeResponse(request, 201, ET.tostring(_entry(url, name, description)))
        if name not in sub.rules:
            return FakeResponse(request, 404, _error(404, "Entity not found."))
        if method == "GET":
            return FakeResponse(request, 200, ET.tostring(_entry(url, name, sub.rules[name])))
        del sub.rules[name]
        return FakeResponse(request, 200, b"")


# ============================================================================ fixtures


@dataclass
class Azure:
    ns: FakeNamespace
    client: FakeClient
    transport: FakeManagementTransport
    manager: ServiceBusManager

    def rule_filter(self, topic: str, sub: str, rule: str) -> ET.Element:
        node = self.ns.subscriptions[(topic, sub)].rules[rule].find(f"{{{SB}}}Filter")
        assert node is not None
        return node


def make_manager(
    ns: FakeNamespace,
) -> tuple[ServiceBusManager, FakeClient, FakeManagementTransport]:
    client = FakeClient(ns)
    transport = FakeManagementTransport(ns)
    backend = AzureServiceBus(
        CONNECTION_STRING,
        client=cast(ServiceBusClient, client),  # the AMQP edge is faked
        # The SDK's retry policy stays on; only its back-off is shortened for the test.
        admin_kwargs={"transport": transport, "retry_backoff_factor": 0.001},
        receive_chunk_seconds=0.2,
        dead_letter_wait_seconds=0.05,
    )
    return ServiceBusManager(backend=backend), client, transport


@pytest.fixture
async def azure() -> AsyncIterator[Azure]:
    ns = FakeNamespace()
    manager, client, transport = make_manager(ns)
    yield Azure(ns, client, transport, manager)
    await manager.close()


async def drain(sb: ServiceBusManager, topic: str, sub: str) -> list[Message]:
    out: list[Message] = []
    while True:
        batch = await sb.receive_messages(topic, sub, max_message_count=10, max_wait_time=0.05)
        if not batch:
            return out
        for message in batch:
            out.append(message)
            await sb.complete_message(message)


# ============================================================================ tests


def test_an_azure_connection_string_selects_the_sdk_backend() -> None:
    service_bus = ServiceBusManager(connection_string=CONNECTION_STRING)
    assert service_bus.kind == "azure" and isinstance(service_bus.backend, AzureServiceBus)
    assert ServiceBusManager(connection_string="memory://").kind == "memory"


async def test_spec_3_5_examples_on_azure(azure: Azure) -> None:
    service_bus = azure.manager
    processed: list[Message] = []

    async def process_event(message: Message) -> None:
        processed.append(message)

    # Provisioning the first example assumes (the spec's topic and subscription exist).
    await service_bus.create_topic(topic_name="agent_events")
    await service_bus.create_subscription(
        topic_name="agent_events", subscription_name="orchestrator_subscription"
    )

    async def example() -> None:
        # Send message to topic
        await service_bus.send_to_topic(
            topic_name="agent_events",
            message={
                "event_type": "task_completed",
                "agent_id": "ceo_agent",
                "task_id": "task_001",
            },
        )

        # Receive messages from subscription
        async for message in service_bus.receive_from_subscription(
            topic_name="agent_events", subscription_name="orchestrator_subscription"
        ):
            await process_event(message)
            await service_bus.complete_message(message)

    task = asyncio.create_task(example())
    await eventually(
        lambda: processed
        and not azure.ns.subscriptions[("agent_events", "orchestrator_subscription")].active,
        10,
    )
    [got] = processed
    assert got.content == {
        "event_type": "task_completed",
        "agent_id": "ceo_agent",
        "task_id": "task_001",
    }
    assert application_properties(got) == got.content  # bytes keys decoded back to str
    assert servicebus_info(got)["delivery_count"] == 1
    [sent] = azure.client.senders[0].sent
    assert sent.application_properties == {
        "event_type": "task_completed",
        "agent_id": "ceo_agent",
        "task_id": "task_001",
    }
    assert sent.content_type == "application/json"
    assert json.loads(b"".join(sent.body)) == got.content

    # Create topic
    await service_bus.create_topic(
        topic_name="agent_tasks", max_size_in_mb=1024, default_message_ttl_seconds=3600
    )

    # Create subscription
    await service_bus.create_subscription(
        topic_name="agent_tasks",
        subscription_name="ceo_agent_tasks",
        filter_rule="agent_id = 'ceo_agent'",
    )

    topic_xml = azure.ns.topics["agent_tasks"]
    assert topic_xml.findtext(f"{{{SB}}}MaxSizeInMegabytes") == "1024"
    assert topic_xml.findtext(f"{{{SB}}}DefaultMessageTimeToLive") == "PT1H"
    sub_rules = azure.ns.subscriptions[("agent_tasks", "ceo_agent_tasks")].rules
    assert list(sub_rules) == [DEFAULT_RULE_NAME]  # the TrueFilter $Default was replaced
    flt = azure.rule_filter("agent_tasks", "ceo_agent_tasks", DEFAULT_RULE_NAME)
    assert flt.get(f"{{{XSI}}}type") == "SqlFilter"
    assert flt.findtext(f"{{{SB}}}SqlExpression") == "agent_id = 'ceo_agent'"
    assert ("DELETE", "/agent_tasks/subscriptions/ceo_agent_tasks/rules/$Default") in azure.ns.http
    topic = await service_bus.get_topic("agent_tasks")
    assert (topic.max_size_in_mb, topic.default_message_ttl_seconds) == (1024, 3600)

    await service_bus.send_to_topic(topic_name="agent_tasks", message={"agent_id": "cfo_agent"})
    await service_bus.send_to_topic(topic_name="agent_tasks", message={"agent_id": "ceo_agent"})
    assert [m.content for m in await drain(service_bus, "agent_tasks", "ceo_agent_tasks")] == [
        {"agent_id": "ceo_agent"}
    ]

    assert not task.done()
    await service_bus.close()  # ends the receive loop; closes receivers, senders and clients
    await asyncio.wait_for(task, 10)
    assert azure.client.closed and azure.transport.closed
    assert all(r.closed for r in azure.client.receivers)
    assert all(s.closed for s in azure.client.senders)


async def test_management_round_trips_through_the_sdk(azure: Azure) -> None:
    sb = azure.manager
    created = await sb.create_topic(
        "orders",
        max_size_in_mb=2048,
        requires_duplicate_detection=True,
        duplicate_detection_window_seconds=120,
    )
    assert created.max_size_in_mb == 2048 and created.requires_duplicate_detection
    assert created.duplicate_detection_window_seconds == 120
    await sb.create_topic("audit")
    assert [t.name for t in await sb.list_topics()] == ["audit", "orders"]
    sub = await sb.create_subscription(
        "orders",
        "billing",
        max_delivery_count=3,
        lock_duration=30,
        dead_lettering_on_message_expiration=False,
        default_message_ttl_seconds=600,
    )
    assert (sub.max_delivery_count, sub.lock_duration, sub.default_message_ttl_seconds) == (
        3,
        30,
        600,
    )
    assert not sub.dead_lettering_on_message_expiration
    assert await sb.get_subscription("orders", "billing") == sub
    await sb.create_subscription("orders", "all")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["all", "billing"]
    assert [r.name for r in await sb.list_rules("orders", "all")] == [DEFAULT_RULE_NAME]
    assert isinstance((await sb.list_rules("orders", "all"))[0].filter, TrueFilter)

    await sb.add_rule(
        "orders",
        "billing",
        "corr",
        CorrelationFilter(
            correlation_id="c-1", subject="invoice", properties={"tier": 2, "region": "eu"}
        ),
    )
    await sb.add_rule("orders", "billing", "never", FalseFilter())
    await sb.add_rule("orders", "billing", "sql", "amount > 100")
    rules = {r.name: r.filter for r in await sb.list_rules("orders", "billing")}
    assert rules["corr"] == CorrelationFilter(
        correlation_id="c-1", subject="invoice", properties={"tier": 2, "region": "eu"}
    )
    assert isinstance(rules["never"], FalseFilter) and isinstance(
        rules[DEFAULT_RULE_NAME], TrueFilter
    )
    assert rules["sql"] == SqlFilter("amount > 100")
    corr = azure.rule_filter("orders", "billing", "corr")
    assert corr.get(f"{{{XSI}}}type") == "CorrelationFilter"
    assert corr.findtext(f"{{{SB}}}Label") == "invoice"
    await sb.remove_rule("orders", "billing", "never")
    assert "never" not in azure.ns.subscriptions[("orders", "billing")].rules

    runtime = await sb.get_subscription_runtime_properties("orders", "all")
    assert (runtime.message_count, runtime.dead_letter_message_count) == (0, 0)
    assert (await sb.get_topic_runtime_properties("orders")).subscription_count == 2

    await sb.delete_subscription("orders", "all")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["billing"]
    await sb.delete_topic("orders")
    assert not await sb.topic_exists("orders")
    assert await sb.topic_exists("audit")
    with pytest.raises(ConfigurationError):
        await sb.create_topic("fractional", max_size_in_mb=1.5)


async def test_sdk_errors_become_ours(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    with pytest.raises(EntityExistsError) as exists:
        await sb.create_topic("t")
    assert isinstance(exists.value.__cause__, HttpResponseError)
    assert exists.value.__cause__.status_code == 409
    with pytest.raises(EntityNotFoundError):
        await sb.get_topic("missing")  # the SDK's own "empty feed" check
    with pytest.raises(EntityNotFoundError):
        await sb.get_subscription("t", "missing")  # a 404 from the service
    with pytest.raises(EntityNotFoundError):
        await sb.create_subscription("missing", "s")
    await sb.create_subscription("t", "s")
    with pytest.raises(EntityExistsError):
        await sb.create_subscription("t", "s")
    with pytest.raises(EntityNotFoundError):
        await sb.remove_rule("t", "s", "nope")
    with pytest.raises(EntityNotFoundError) as missing:
        await sb.send_to_topic("missing", {"a": 1})
    assert isinstance(missing.value.__cause__, sb_errors.MessagingEntityNotFoundError)
    azure.ns.fail_next_send = sb_errors.ServiceBusQuotaExceededError(message="quota exceeded")
    with pytest.raises(TopicFullError):
        await sb.send_to_topic("t", {"a": 1})
    azure.ns.fail_http = [401]
    with pytest.raises(PermissionDeniedError):
        await sb.list_topics()
    azure.ns.fail_http = [503]  # the SDK's retry policy absorbs one failure
    assert [t.name for t in await sb.list_topics()] == ["t"]
    azure.ns.fail_http = [503] * 10
    with pytest.raises(BrokerUnavailableError):
        await sb.list_topics()
    azure.ns.fail_http = []

    # A filter that fails to apply leaves no half-made subscription behind.
    original = azure.transport._rule

    def broken(*args: Any) -> FakeResponse:
        azure.transport._rule = original  # type: ignore[method-assign]
        return FakeResponse(args[0], 400, _error(400, "bad filter"))

    azure.transport._rule = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(ServiceBusError):
        await sb.create_subscription("t", "filtered", filter_rule="a = 1")
    assert ("t", "filtered") not in azure.ns.subscriptions


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ResourceExistsError("exists"), EntityExistsError),
        (ClientAuthenticationError("no"), PermissionDeniedError),
        (sb_errors.ServiceBusAuthorizationError(message="no"), PermissionDeniedError),
        (sb_errors.MessageLockLostError(message="lost"), LockLostError),
        (sb_errors.MessageAlreadySettled(), UnknownMessageError),
        (sb_errors.MessageSizeExceededError(message="big"), MessageTooLargeError),
        (sb_errors.ServiceBusConnectionError(message="down"), BrokerUnavailableError),
        (sb_errors.OperationTimeoutError(message="slow"), BrokerUnavailableError),
        (ServiceRequestError("dns"), BrokerUnavailableError),
        (sb_errors.MessagingEntityDisabledError(message="off"), ServiceBusError),
    ],
)
def test_error_translation_table(error: BaseException, expected: type[Exception]) -> None:
    assert isinstance(translate_azure_error(error, "op"), expected)


async def test_peek_lock_settlement_and_dead_letters(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", max_delivery_count=3)
    await sb.create_subscription("t", "other", filter_rule="kind = 'other'")
    await sb.send_to_topic(
        "t",
        Message(
            message_type=MessageType.TASK,
            sender_id="orchestrator",
            content={"kind": "work", "n": 1},
            priority=MessagePriority.HIGH,
            metadata={"trace": "t-1"},
        ),
        properties={"extra": 7},
        correlation_id="corr",
        subject="job",
        time_to_live=timedelta(minutes=5),
    )
    counts = []
    for _ in range(2):
        [message] = await sb.receive_messages("t", "s", max_wait_time=1)
        counts.append(servicebus_info(message)["delivery_count"])
        await sb.abandon_message(message)
    [message] = await sb.receive_messages("t", "s", max_wait_time=1)
    counts.append(servicebus_info(message)["delivery_count"])
    assert counts == [1, 2, 3]
    assert (message.message_type, message.sender_id, message.priority) == (
        MessageType.TASK,
        "orchestrator",
        MessagePriority.HIGH,
    )
    assert message.metadata["trace"] == "t-1" and message.correlation_id == "corr"
    assert application_properties(message) == {"kind": "work", "n": 1, "extra": 7}
    assert servicebus_info(message)["system"]["subject"] == "job"
    assert message.ttl == 300
    until = await sb.renew_message_lock(message)
    assert until > datetime.now(UTC)

    await sb.dead_letter_message(message, reason="BadInput", error_description="n is odd")
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(message)  # settled already
    [dead] = await sb.receive_dead_letters("t", "s")
    assert dead.metadata["aos.dead_letter.reason"] == "BadInput"
    assert servicebus_info(dead)["dead_letter_error_description"] == "n is odd"
    assert "DeadLetterReason" not in application_properties(dead)
    assert (await sb.get_subscription_runtime_properties("t", "s")).dead_letter_message_count == 1

    await sb.resubmit_dead_letter(dead)
    assert await sb.receive_dead_letters("t", "s") == []
    [again] = await drain(sb, "t", "s")
    assert again.content == {"kind": "work", "n": 1} and application_properties(again)["extra"] == 7
    # On Azure a resubmitted copy goes through the topic: only matching subscriptions get it.
    assert await drain(sb, "t", "other") == []

    await sb.send_to_topic("t", {"n": 2})
    for _ in range(3):
        [message] = await sb.receive_messages("t", "s", max_wait_time=1)
        await sb.abandon_message(message)
    [dead] = await sb.receive_dead_letters("t", "s")
    assert servicebus_info(dead)["dead_letter_reason"] == "MaxDeliveryCountExceeded"
    assert await sb.purge_dead_letters("t", "s") == 1
    assert await sb.receive_dead_letters("t", "s") == []


async def test_settling_requires_the_receiving_manager_and_a_live_lock(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    [message] = await sb.receive_messages("t", "s", max_wait_time=1)
    copy = message.copy(
        metadata={
            **message.metadata,
            "aos.servicebus": {
                **message.metadata["aos.servicebus"],
                "lock_token": str(uuid.uuid4()),
            },
        }
    )
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(copy)
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(Message(content={"n": 1}))
    for stored in azure.ns.subscriptions[("t", "s")].active:
        stored.lock_token = uuid.uuid4()  # the service moved the lock on (it expired)
    with pytest.raises(LockLostError) as lost:
        await sb.complete_message(message)
    assert isinstance(lost.value.__cause__, sb_errors.MessageLockLostError)


async def test_routing_sees_the_promoted_properties(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("events")
    await sb.create_subscription("events", "ceo", filter_rule="agent_id = 'ceo_agent'")
    await sb.create_subscription(
        "events", "urgent", filter_rule="priority > 5 AND sys.Label = 'task'"
    )
    await sb.create_subscription(
        "events", "corr", filter_rule=CorrelationFilter(correlation_id="c-1")
    )
    await sb.send_to_topic(
        "events", {"n": 1, "agent_id": "ceo_agent", "priority": 9}, subject="task"
    )
    await sb.send_to_topic(
        "events", {"n": 2, "agent_id": "cfo_agent", "priority": 9}, subject="task"
    )
    await sb.send_to_topic("events", {"n": 3, "agent_id": "ceo_agent"}, correlation_id="c-1")
    await sb.send_to_topic("events", {"n": 4, "nested": {"agent_id": "ceo_agent"}})

    async def numbers(sub: str) -> list[int]:
        return sorted(m.content["n"] for m in await drain(sb, "events", sub))

    assert await numbers("ceo") == [1, 3]
    assert await numbers("urgent") == [1, 2]
    assert await numbers("corr") == [3]


async def test_filters_azure_keeps_that_we_cannot_parse_are_kept_as_text(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    rule = azure.ns.subscriptions[("t", "s")].rules[DEFAULT_RULE_NAME]
    flt = rule.find(f"{{{SB}}}Filter")
    assert flt is not None
    flt.set(f"{{{XSI}}}type", "SqlFilter")
    expr = flt.find(f"{{{SB}}}SqlExpression")
    assert expr is not None
    expr.text = "amount > @limit"
    [listed] = await sb.list_rules("t", "s")
    assert listed.filter == UnparsedSqlFilter("amount > @limit")
    assert listed.filter.to_sql() == "amount > @limit"


async def test_a_closed_azure_manager_refuses_work(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.close()
    with pytest.raises(BrokerClosedError):
        await sb.send_to_topic("t", {"n": 1})
    assert azure.client.closed


def test_filters_map_to_sdk_rule_filters() -> None:
    from azure.servicebus.management import (
        CorrelationRuleFilter,
        FalseRuleFilter,
        SqlRuleFilter,
        TrueRuleFilter,
    )

    from AgentOperatingSystem.messaging.servicebus.azure import _from_azure_filter, _to_azure_filter

    cases: list[tuple[Filter, type[Any]]] = [
        (TrueFilter(), TrueRuleFilter),
        (FalseFilter(), FalseRuleFilter),
        (SqlFilter("a = 1"), SqlRuleFilter),
        (CorrelationFilter(to="x", properties={"k": "v"}), CorrelationRuleFilter),
    ]
    for ours, theirs in cases:
        converted = _to_azure_filter(ours)
        assert type(converted) is theirs
        assert _from_azure_filter(converted) == ours
