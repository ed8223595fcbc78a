"""What the bus's parts share: configuration, the engine and its capabilities, the hooks.

:class:`MessageBus` owns one :class:`Core` and hands it to each of its parts (publisher,
consumers, requests, pull side, dead letters). The engine's optional capabilities
(:class:`~..brokers.base.LocalPut`, :class:`~..brokers.base.DirectDelivery`) are checked
once, in :meth:`Core.attach`, when the bus starts.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Awaitable, Callable

from ...config.messagebus import MessageBusConfig
from ..brokers.base import Broker, DirectDelivery, LocalPut
from ..clock import Clock
from ..errors import BrokerClosedError
from ..policy import RetryPolicy
from ..types import Message, new_message_id
from .hooks import SecurityHooks, TelemetryHooks

__all__ = ["REPLY_PREFIX", "Core"]

#: The prefix of every bus's reply queue, ``_reply.<instance id>``.
REPLY_PREFIX = "_reply."


@dataclass(slots=True, eq=False, repr=False)
class Core:
    """The state every part of one bus reads.

    ``telemetry`` and ``router`` may be replaced while the bus runs (the dashboard adds a
    telemetry); every part reads them here, so a change applies from the next message.
    """

    config: MessageBusConfig
    clock: Clock
    _: KW_ONLY
    broker: Broker | None
    router: Any
    security: SecurityHooks | None
    telemetry: TelemetryHooks | None
    storage: Any
    retry: RetryPolicy = field(init=False)
    started: bool = field(default=False, init=False)
    stopping: bool = field(default=False, init=False)
    #: True while publishes may take the plain path (started and not stopping).
    running: bool = field(default=False, init=False)
    #: The engine's ``put_local`` when it keeps messages in this process (LocalPut).
    local_put: Callable[[str, Message, int | None], None] | None = field(default=None, init=False)
    #: The engine when it can hand envelopes to live listeners (DirectDelivery).
    direct: DirectDelivery | None = field(default=None, init=False)
    #: ``direct.hand_off`` when requests may be handed off (``config.direct_requests``).
    hand_off: Callable[..., Awaitable[bool]] | None = field(default=None, init=False)
    instance_id: str = field(init=False)
    reply_queue: str = field(init=False)
    #: Handler calls since the last timed one (metrics sample one in
    #: ``config.metrics_sample_every`` on the batched telemetry path).
    sample_tick: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.retry = self.config.retry_policy
        self.instance_id = new_message_id()[:16]
        self.reply_queue = f"{REPLY_PREFIX}{self.instance_id}"

    def attach(self, broker: Broker) -> None:
        """Use ``broker`` and note its optional capabilities (checked here, once)."""
        self.broker = broker
        self.local_put = broker.put_local if isinstance(broker, LocalPut) else None
        self.direct = broker if isinstance(broker, DirectDelivery) else None
        self.hand_off = (
            self.direct.hand_off
            if self.direct is not None and self.config.direct_requests
            else None
        )

    @property
    def engine(self) -> Broker:
        """The engine (after ``start()``)."""
        broker = self.broker
        if broker is None:
            raise BrokerClosedError("the bus is not started: await bus.start() first")
        return broker

    def check(self) -> Broker:
        """The engine, or ``BrokerClosedError`` when the bus is not running."""
        if not self.started or self.stopping:
            raise BrokerClosedError(
                "the bus is not running: await bus.start() (or use `async with`) first"
            )
        broker = self.broker
        assert broker is not None
        return broker

    @property
    def signing(self) -> bool:
        """True when every published message is signed."""
        security = self.security
        return security is not None and security.signing

    def content_keys(self) -> Callable[[str], bytes | None] | None:
        """The lookup of content-decryption keys for the codec (None without security)."""
        security = self.security
        return security.content_key if security is not None else None
