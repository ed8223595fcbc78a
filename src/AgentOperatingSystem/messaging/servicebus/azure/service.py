"""The Azure backend's facade: :class:`AzureServiceBus` owns the connection, an admin and a
dead-letter store, and runs the message paths itself.

Receiving is peek-lock (``receive_messages`` on one receiver per subscription, kept open until
close); complete/abandon/dead-letter/renew go through the receiver that received the message,
so they must happen on the same manager. Azure itself enforces ``max_delivery_count``, TTL and
dead-lettering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Mapping

from ...errors import LockLostError, UnknownMessageError
from ...types import Message
from ..delegation import DelegatingBackend, Forwarded
from ..entities import SERVICEBUS_KEY, OutgoingMessage
from .admin import AzureAdmin
from .connection import AzureConnection
from .convert import from_received, to_service_bus_message
from .deadletters import AzureDeadLetters
from .sdk import (
    ServiceBusAdministrationClient,
    ServiceBusClient,
    ServiceBusReceivedMessage,
    ServiceBusReceiver,
)
from .translate import azure_errors

__all__ = ["AzureServiceBus"]

#: When a settling call forgets the lock it held (see ``AzureServiceBus._settling``).
_Forget = Literal["on success", "always", "never"]


@dataclass(slots=True)
class _Held:
    receiver: ServiceBusReceiver
    message: ServiceBusReceivedMessage
    topic: str
    subscription: str


class AzureServiceBus(DelegatingBackend):
    """The Azure backend (see the :mod:`..azure` package docstring).

    ``client``/``admin_client`` may be given (already built ``ServiceBusClient`` /
    ``ServiceBusAdministrationClient`` objects, or stand-ins with the same methods); else they
    are created from ``connection_string`` with ``client_kwargs``/``admin_kwargs`` (e.g.
    ``transport=`` for the administration client). Given clients are closed on close too.
    Topics, subscriptions and rules go through an :class:`~.admin.AzureAdmin`, dead letters
    through an :class:`~.deadletters.AzureDeadLetters`.
    """

    kind = "azure"
    _dlq: AzureDeadLetters

    def __init__(
        self,
        connection_string: str,
        *,
        client: ServiceBusClient | None = None,
        admin_client: ServiceBusAdministrationClient | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        admin_kwargs: Mapping[str, Any] | None = None,
        receive_chunk_seconds: float = 5.0,
        dead_letter_wait_seconds: float = 2.0,
    ) -> None:
        self.connection_string = connection_string
        conn = AzureConnection(
            connection_string,
            client=client,
            admin_client=admin_client,
            client_kwargs=client_kwargs,
            admin_kwargs=admin_kwargs,
        )
        self._conn = conn
        self.receive_chunk_seconds = receive_chunk_seconds
        self._held: dict[str, _Held] = {}
        self._closing = conn.closing
        self._check = conn.check
        self._sender = conn.sender
        self._receive_once = conn.receive_once
        self._admin = AzureAdmin(conn)
        self._dlq = AzureDeadLetters(conn, dead_letter_wait_seconds)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the SDK clients (no network traffic happens until first use)."""
        await self._conn.start()

    async def close(self) -> None:
        """Close every receiver, sender and both clients."""
        if self._conn.closed:
            return
        self._held.clear()
        await self._conn.close()

    @property
    def client(self) -> ServiceBusClient:
        """The messaging client (after :meth:`start`)."""
        return self._conn.client

    @property
    def admin(self) -> ServiceBusAdministrationClient:
        """The administration client (after :meth:`start`)."""
        return self._conn.admin

    dead_letter_wait_seconds = Forwarded[float](
        "_dlq",
        "wait_seconds",
        "How long each receive waits while resubmitting or purging dead letters.",
    )

    # -------------------------------------------------------------- sending

    async def send(self, topic_name: str, outgoing: OutgoingMessage) -> None:
        """``send_messages`` on the topic's sender (opened once, kept until close)."""
        self._check()
        sb_message = to_service_bus_message(outgoing)
        sender = self._sender(topic_name)
        with azure_errors(f"send to topic {topic_name!r}"):
            await sender.send_messages(sb_message)

    # -------------------------------------------------------------- receiving

    async def receive(
        self, topic_name: str, subscription_name: str, max_count: int, timeout: float | None
    ) -> list[Message]:
        """Peek-lock ``receive_messages`` in chunks of ``receive_chunk_seconds``."""
        self._check()
        receiver = self._conn.receiver(topic_name, subscription_name)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._conn.lock(topic_name, subscription_name):
            while not self._closing.is_set():
                wait = self.receive_chunk_seconds
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                with azure_errors(f"receive from {topic_name}/{subscription_name}"):
                    batch = await self._receive_once(receiver, max_count, wait)
                if batch:
                    out: list[Message] = []
                    for sb_message in batch:
                        msg = from_received(sb_message, topic_name, subscription_name, dead=False)
                        token = msg.metadata[SERVICEBUS_KEY]["lock_token"]
                        if isinstance(token, str):
                            self._held[token] = _Held(
                                receiver, sb_message, topic_name, subscription_name
                            )
                        out.append(msg)
                    return out
                if deadline is not None and loop.time() >= deadline:
                    return []
        return []

    # -------------------------------------------------------------- settling

    def _take(self, message: Message) -> tuple[str, _Held]:
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        token = info.get("lock_token") if isinstance(info, dict) else None
        if not isinstance(token, str):
            raise UnknownMessageError(
                "this message holds no lock (already settled, read from the dead-letter queue,"
                " or not received from a subscription)"
            )
        held = self._held.get(token)
        if held is None:
            raise UnknownMessageError(
                f"message {message.message_id!r} was not received by this ServiceBusManager"
                " (on Azure a message is settled through the receiver that received it)"
            )
        return token, held

    def _done(self, message: Message, token: str) -> None:
        self._held.pop(token, None)
        message.metadata[SERVICEBUS_KEY]["lock_token"] = None

    @contextmanager
    def _settling(self, message: Message, action: str, *, forget: _Forget) -> Iterator[_Held]:
        """The held lock of ``message``, for a body that settles it under
        ``azure_errors(action)``. A lost lock is always forgotten; otherwise ``forget`` says
        when: ``"on success"`` (complete), ``"always"`` (abandon, dead-letter: the message is
        let go either way) or ``"never"`` (renew: the lock is still held)."""
        self._check()
        token, held = self._take(message)
        try:
            with azure_errors(action):
                yield held
        except LockLostError:
            self._done(message, token)
            raise
        except BaseException:
            if forget == "always":
                self._done(message, token)
            raise
        if forget != "never":
            self._done(message, token)

    async def complete(self, message: Message) -> None:
        """``complete_message``."""
        action = f"complete message {message.message_id!r}"
        with self._settling(message, action, forget="on success") as held:
            await held.receiver.complete_message(held.message)

    async def abandon(self, message: Message) -> None:
        """``abandon_message`` (Azure applies ``max_delivery_count``)."""
        action = f"abandon message {message.message_id!r}"
        with self._settling(message, action, forget="always") as held:
            await held.receiver.abandon_message(held.message)

    async def dead_letter(
        self, message: Message, reason: str | None, error_description: str | None
    ) -> None:
        """``dead_letter_message``."""
        action = f"dead-letter message {message.message_id!r}"
        with self._settling(message, action, forget="always") as held:
            await held.receiver.dead_letter_message(
                held.message, reason=reason, error_description=error_description
            )

    async def renew_lock(self, message: Message) -> datetime:
        """``renew_message_lock``."""
        action = f"renew the lock of {message.message_id!r}"
        with self._settling(message, action, forget="never") as held:
            until = await held.receiver.renew_message_lock(held.message)
        if isinstance(until, datetime):
            message.metadata[SERVICEBUS_KEY]["locked_until"] = until.timestamp()
            return until
        return datetime.now(UTC)
