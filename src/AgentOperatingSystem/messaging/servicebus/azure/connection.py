"""The connection to one Azure Service Bus namespace: the two SDK clients (messaging over
AMQP, administration over HTTPS), the senders and receivers opened on them (one per topic,
one per subscription and sub-queue, kept until close) and one receive lock per receiver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Mapping

from ...errors import BrokerClosedError, ConfigurationError
from .sdk import (
    ServiceBusAdministrationClient,
    ServiceBusClient,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusReceiver,
    ServiceBusSender,
    ServiceBusSubQueue,
)
from .translate import azure_errors

__all__ = ["AzureConnection"]

log = logging.getLogger("aos.messaging.azure")


class AzureConnection:
    """The SDK clients and handlers an :class:`~.service.AzureServiceBus` works through.

    ``client``/``admin_client`` may be given (built clients, or stand-ins with the same
    methods); else they are created from ``connection_string`` on :meth:`start`, with
    ``client_kwargs``/``admin_kwargs``. Given clients are closed on close too.
    """

    def __init__(
        self,
        connection_string: str,
        *,
        client: ServiceBusClient | None,
        admin_client: ServiceBusAdministrationClient | None,
        client_kwargs: Mapping[str, Any] | None,
        admin_kwargs: Mapping[str, Any] | None,
    ) -> None:
        self.connection_string = connection_string
        self._client: ServiceBusClient | None = client
        self._admin: ServiceBusAdministrationClient | None = admin_client
        self._client_kwargs = dict(client_kwargs or {})
        self._admin_kwargs = dict(admin_kwargs or {})
        self._senders: dict[str, ServiceBusSender] = {}
        self._receivers: dict[tuple[str, str, bool], ServiceBusReceiver] = {}
        self._receive_locks: dict[tuple[str, str, bool], asyncio.Lock] = {}
        self.closing = asyncio.Event()
        self.closed = False

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the SDK clients (no network traffic happens until first use)."""
        try:
            if self._client is None:
                self._client = ServiceBusClient.from_connection_string(
                    self.connection_string, **self._client_kwargs
                )
            if self._admin is None:
                self._admin = ServiceBusAdministrationClient.from_connection_string(
                    self.connection_string, **self._admin_kwargs
                )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid Azure Service Bus connection string: {exc}") from exc

    async def close(self) -> None:
        """Wake waiting receives; close every receiver, sender and both clients."""
        self.closed = True
        self.closing.set()
        handlers = [*self._receivers.values(), *self._senders.values()]
        self._receivers.clear()
        self._senders.clear()
        for handler in handlers:
            with contextlib.suppress(Exception):
                await handler.close()
        for client in (self._client, self._admin):
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    log.warning("closing an Azure client failed", exc_info=True)

    def check(self) -> None:
        """Raise :class:`BrokerClosedError` unless started and not closed."""
        if self.closed or self._client is None or self._admin is None:
            raise BrokerClosedError("the Azure service bus is not started or already closed")

    @property
    def client(self) -> ServiceBusClient:
        """The messaging client (after :meth:`start`)."""
        self.check()
        assert self._client is not None
        return self._client

    @property
    def admin(self) -> ServiceBusAdministrationClient:
        """The administration client (after :meth:`start`)."""
        self.check()
        assert self._admin is not None
        return self._admin

    # -------------------------------------------------------------- handlers

    def sender(self, topic_name: str) -> ServiceBusSender:
        """The topic's sender (opened once, kept until close)."""
        sender = self._senders.get(topic_name)
        if sender is None:
            with azure_errors(f"open a sender for {topic_name!r}"):
                sender = self.client.get_topic_sender(topic_name=topic_name)
            self._senders[topic_name] = sender
        return sender

    def receiver(self, topic: str, sub: str, dead_letter: bool = False) -> ServiceBusReceiver:
        """The peek-lock receiver of a subscription or of its dead-letter sub-queue."""
        key = (topic, sub, dead_letter)
        receiver = self._receivers.get(key)
        if receiver is None:
            with azure_errors(f"open a receiver for {topic}/{sub}"):
                if dead_letter:
                    receiver = self.client.get_subscription_receiver(
                        topic_name=topic,
                        subscription_name=sub,
                        sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                        receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                    )
                else:
                    receiver = self.client.get_subscription_receiver(
                        topic_name=topic,
                        subscription_name=sub,
                        receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                        prefetch_count=0,
                    )
            self._receivers[key] = receiver
        return receiver

    def lock(self, topic: str, sub: str, dead_letter: bool = False) -> asyncio.Lock:
        """The lock that lets one receive at a time use a receiver."""
        return self._receive_locks.setdefault((topic, sub, dead_letter), asyncio.Lock())

    async def drop_handlers(self, topic: str, sub: str | None) -> None:
        """Close the handlers of a deleted subscription (or of a whole topic: ``sub`` None)."""
        for key in [k for k in self._receivers if k[0] == topic and (sub is None or k[1] == sub)]:
            receiver = self._receivers.pop(key)
            with contextlib.suppress(Exception):
                await receiver.close()
        if sub is None:
            sender = self._senders.pop(topic, None)
            if sender is not None:
                with contextlib.suppress(Exception):
                    await sender.close()

    async def receive_once(
        self, receiver: ServiceBusReceiver, max_count: int, wait: float
    ) -> list[ServiceBusReceivedMessage]:
        """One ``receive_messages`` of up to ``wait`` seconds; [] when closing cut it short."""
        task = asyncio.ensure_future(
            receiver.receive_messages(max_message_count=max_count, max_wait_time=max(wait, 0.05))
        )
        stopper = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return []
        return list(task.result())
