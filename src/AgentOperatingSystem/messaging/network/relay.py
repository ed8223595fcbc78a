"""Conversations across nodes: local queues whose messages go to another node.

A node *relays* the queue of every agent it registered on another node (``register_agent``
with a foreign address, or ``add_peer``): a subscription on the local bus, run by the bus's
one consume loop, whose handler sends each message over the signed node-to-node transport
to the agent's node. So ``bus.publish`` and ``bus.request`` reach a remote agent exactly as
they reach a local one, and a failed send is retried and dead-lettered by the loop's retry
policy like a handler that raised. The message keeps its delivery options: its hop count
and causation id cross the node, so the loop guard (``hop_limit``) sees a loop that spans
nodes.

Answers come back the same way. A request relayed from a reply queue (``_reply.<bus id>``)
carries this node's address in its delivery options' extras (:data:`REPLY_NODE`); the node
that takes it relays that reply queue back to the address, and sends each answer with the
queue it is for (:data:`QUEUE`), which the origin node's intake puts it on: the requester's
reply listener takes it as it takes a local answer.

Events published without a recipient are not relayed: a relayed queue is unbound from the
broadcast types (send an event to a remote agent by naming it).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Awaitable, Callable

from ..core.bus import MessageBus
from ..core.context import current
from ..errors import ConfigurationError, MessagingError
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import BROADCAST_TYPES, Message
from .wire import log, normalize_address

__all__ = ["QUEUE", "REPLY_NODE", "REPLY_PREFIX", "Relay", "Send", "is_reply_queue"]

#: Extras key: the address of the node where answers to a relayed request go back to.
REPLY_NODE = "aos.net.reply_node"
#: Extras key: the queue a relayed message is for, when it is not its recipient's (an answer
#: for a reply queue).
QUEUE = "aos.net.queue"
#: The prefix of a bus's reply queue (``_reply.<bus id>``, see ``core/state.py``).
REPLY_PREFIX = "_reply."

Send = Callable[[Message, DeliveryOptions, str], Awaitable[Any]]
"""``send(message, options, address)``: deliver to the node at ``address`` or raise."""


def is_reply_queue(queue: str | None) -> bool:
    """True when ``queue`` is a bus's reply queue."""
    return isinstance(queue, str) and queue.startswith(REPLY_PREFIX)


class Relay:
    """The relayed queues of one node's ``bus``: each one's address, and its subscription.

    ``send`` delivers a message to a node (the pool, failures raised); ``origin`` gives this
    node's address while it serves (None otherwise: answers to its requests cannot come back).
    """

    def __init__(self, bus: MessageBus, send: Send, origin: Callable[[], str | None]) -> None:
        self._bus = bus
        self._send = send
        self._origin = origin
        #: queue -> address of the node it is relayed to
        self.routes: dict[str, str] = {}
        self._running: set[str] = set()
        self._lock = asyncio.Lock()
        self._warned_no_origin = False

    async def forward(self, queue: str, address: str) -> None:
        """Relay ``queue`` to the node at ``address`` from now on (the subscription starts
        when the bus runs). A queue a handler of this bus consumes is left alone."""
        address = normalize_address(address)
        async with self._lock:
            if queue not in self.routes and queue in self._bus.subscriptions:
                log.warning("not relaying %r: a handler on this node's bus consumes it", queue)
                return
            self.routes[queue] = address
            if self._bus.started:
                await self._subscribe(queue)

    async def start(self) -> None:
        """Start the subscriptions of the queues relayed before the bus ran."""
        async with self._lock:
            for queue in list(self.routes):
                await self._subscribe(queue)

    async def drop(self, queue: str) -> None:
        """Stop relaying ``queue`` (what waits in it stays there)."""
        async with self._lock:
            if self.routes.pop(queue, None) is not None and queue in self._running:
                self._running.discard(queue)
                if self._bus.started:
                    await self._bus.unsubscribe(queue, unbind=False)

    async def close(self) -> None:
        """Stop every relay subscription (messages waiting stay in their queues)."""
        async with self._lock:
            running, self._running = self._running, set()
            if self._bus.started:
                for queue in running:
                    await self._bus.unsubscribe(queue, unbind=False)

    async def _subscribe(self, queue: str) -> None:
        if queue in self._running:
            return
        bus = self._bus

        async def relay(message: Message) -> None:
            await self._relay(queue, message)

        await bus.subscribe(queue, None, relay)
        self._running.add(queue)
        # A remote agent gets no local fan-out: events stay on the node they are published on.
        if not is_reply_queue(queue):
            for mt in BROADCAST_TYPES:
                await bus.broker.unbind(mt.value, queue)

    async def _relay(self, queue: str, message: Message) -> None:
        """The handler of a relayed queue: send ``message`` on, with the delivery options it
        came with (a raise is the consume loop's retry, then its dead-letter queue)."""
        address = self.routes.get(queue)
        if address is None:
            raise MessagingError(f"queue {queue!r} is no longer relayed")
        running = current.get()
        options = running.options if running is not None else DEFAULT_OPTIONS
        extras: dict[str, Any] = dict(options.extras)
        if message.recipient_id is None:  # a fan-out copy from before the queue was unbound
            message = message.copy(recipient_id=queue)
        if queue != message.recipient_id:
            extras[QUEUE] = queue
        else:
            extras.pop(QUEUE, None)
        if is_reply_queue(message.reply_to) and REPLY_NODE not in extras:
            origin = self._origin()
            if origin is not None:
                extras[REPLY_NODE] = origin
            elif not self._warned_no_origin:
                self._warned_no_origin = True
                log.warning(
                    "relaying request %s to %s while this node does not serve: its answer"
                    " cannot come back (start the node)",
                    message.message_id,
                    address,
                )
        if extras != options.extras:
            options = replace(options, extras=extras)
        await self._send(message, options, address)

    # -- the receiving side --------------------------------------------------------------

    def answer_queue(self, message: Message, options: DeliveryOptions) -> str | None:
        """The reply queue an incoming relayed answer is for (None: its recipient's queue)."""
        queue = options.extras.get(QUEUE)
        return queue if is_reply_queue(queue) and queue != message.recipient_id else None

    async def route_answers(self, message: Message, options: DeliveryOptions) -> None:
        """Before an incoming request is published: relay its reply queue back to the node
        it came from, so its answer gets there."""
        reply_to = message.reply_to
        address = options.extras.get(REPLY_NODE)
        if (
            not is_reply_queue(reply_to)
            or not isinstance(address, str)
            or reply_to == self._bus.reply_queue
            or reply_to in self.routes
        ):
            return
        assert reply_to is not None
        try:
            origin = self._origin()
            if origin is not None and normalize_address(address) == normalize_address(origin):
                return
            await self.forward(reply_to, address)
        except (ConfigurationError, MessagingError) as exc:
            log.warning("answers to %s cannot go back to %r: %s", message.message_id, address, exc)
