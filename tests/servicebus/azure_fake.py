"""A fake Azure Service Bus namespace at the SDK's two network edges, shared by the Azure
tests and the ServiceBus contract suite (:mod:`tests.servicebus.contract`).

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
* **Topic size**: a send that would take the bytes stored in a topic's subscriptions (the
  AMQP size of each copy, dead letters included) over the topic's ``MaxSizeInMegabytes``
  fails with ``ServiceBusQuotaExceededError`` and stores nothing, as Azure refuses a full
  entity.

What this cannot show: the real service's behaviour (its filter evaluation, quotas, timing).
``tests/servicebus/test_servicebus_azure_live.py`` runs against a real namespace when
``AZURE_SERVICE_BUS_CONNECTION_STRING`` is set.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import unquote, urlparse

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

from AgentOperatingSystem.messaging.servicebus.azure import AzureServiceBus
from AgentOperatingSystem.messaging.servicebus.sqlfilter import parse_filter
from AgentOperatingSystem.messaging.servicebus_manager import DEFAULT_RULE_NAME, ServiceBusManager

__all__ = [
    "ATOM",
    "CONNECTION_STRING",
    "SB",
    "XSI",
    "Azure",
    "FakeClient",
    "FakeManagementTransport",
    "FakeNamespace",
    "FakeResponse",
    "error_body",
    "make_manager",
]

CONNECTION_STRING = (
    "Endpoint=sb://aos-fake.servicebus.windows.net/;"
    "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=ZmFrZS1rZXk="
)
ATOM = "http://www.w3.org/2005/Atom"
SB = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SB_COUNTS = "http://schemas.microsoft.com/netservices/2011/06/servicebus"


@dataclass
class Stored:
    """One message in a subscription (or its dead-letter queue) of the fake namespace."""

    amqp: Any  # a pyamqp Message
    sequence: int
    enqueued_ms: int
    deliveries: int = 0
    lock_token: uuid.UUID | None = None
    locked_until_ms: int = 0
    size: int = 0  # bytes of its AMQP encoding, counted against the topic's size


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
        matching = [
            sub
            for _name, sub in self.subs_of(topic)
            if any(self._matches(rule, props, system) for rule in sub.rules.values())
        ]
        size = len(encode_payload(bytearray(), amqp))
        self._check_quota(topic, size * len(matching))
        self.sequence += 1
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        for sub in matching:
            sub.active.append(Stored(amqp, self.sequence, now_ms, size=size))
        self.arrived.set()

    def _check_quota(self, topic: str, needed: int) -> None:
        limit = int(self.topics[topic].findtext(f"{{{SB}}}MaxSizeInMegabytes") or 1024) << 20
        used = sum(s.size for _n, sub in self.subs_of(topic) for s in (*sub.active, *sub.dead))
        if used + needed > limit:
            raise sb_errors.ServiceBusQuotaExceededError(
                message=f"The maximum entity size has been reached for {topic!r}"
            )


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


def error_body(status: int, detail: str) -> bytes:
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

    async def __aexit__(self, *exc: object) -> None:  # __aenter__ (self) is the base's
        await self.close()

    async def send(self, request: Any, **kwargs: Any) -> FakeResponse:
        url = request.url
        path = unquote(urlparse(url).path)
        method = request.method
        self.ns.http.append((method, path))
        assert request.headers.get("Authorization", "").startswith("SharedAccessSignature ")
        if self.ns.fail_http:
            status = self.ns.fail_http.pop(0)
            return FakeResponse(request, status, error_body(status, "injected failure"))
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
                    request, 409, error_body(409, "The messaging entity already exists.")
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
            return FakeResponse(request, 404, error_body(404, "Entity not found."))
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
                return FakeResponse(request, 404, error_body(404, f"Topic {topic} not found."))
            if key in ns.subscriptions:
                return FakeResponse(
                    request, 409, error_body(409, "The messaging entity already exists.")
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
            return FakeResponse(request, 404, error_body(404, "Entity not found."))
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
            return FakeResponse(request, 404, error_body(404, "Entity not found."))
        if name is None:
            entries = [_entry(url, n, r) for n, r in sub.rules.items()]
            return FakeResponse(request, 200, _feed(url, entries))
        if method == "PUT":
            assert description is not None
            if name in sub.rules:
                return FakeResponse(
                    request, 409, error_body(409, "The messaging entity already exists.")
                )
            sub.rules[name] = description
            return FakeResponse(request, 201, ET.tostring(_entry(url, name, description)))
        if name not in sub.rules:
            return FakeResponse(request, 404, error_body(404, "Entity not found."))
        if method == "GET":
            return FakeResponse(request, 200, ET.tostring(_entry(url, name, sub.rules[name])))
        del sub.rules[name]
        return FakeResponse(request, 200, b"")


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
