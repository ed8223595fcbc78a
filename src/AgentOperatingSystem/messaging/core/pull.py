"""The pull side: ``get_messages``/``receive`` lock messages, ``acknowledge``/``nack`` settle
them.

A pulled message passes the same admission as a consumed one (:class:`~.admit.Admission`).
Until it is settled it is held here by message id and agent: the id is unique per agent
queue, and a broadcast copy in each agent's queue is settled by that agent.
"""

from __future__ import annotations

import asyncio

from ..brokers.base import Delivery
from ..errors import (
    AmbiguousMessageError,
    InvalidMessageError,
    LockLostError,
    MessagingError,
    UnknownMessageError,
)
from ..types import DeliveryMode, Message
from .admit import Admission, processed_key
from .state import Core

__all__ = ["Pull"]


class Pull:
    """The pull side of one bus."""

    def __init__(self, core: Core, admission: Admission) -> None:
        self._core = core
        self._admission = admission
        self._inflight: dict[str, dict[str, Delivery]] = {}

    async def get_messages(self, agent_id: str, limit: int) -> list[Message]:
        """:meth:`MessageBus.get_messages`."""
        core = self._core
        broker = core.check()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidMessageError("limit must be an int >= 1")
        out: list[Message] = []
        while len(out) < limit:
            batch = await broker.receive(agent_id, limit - len(out), core.config.lock_seconds)
            if not batch:
                break
            for d in batch:
                msg = await self._admission.admit(agent_id, d)
                if msg is None:
                    continue
                security = core.security
                if security is not None and security.acl_active:
                    try:
                        security.authorize_subscribe(agent_id, msg.message_type)
                    except MessagingError:
                        await broker.release(agent_id, d)
                        raise
                out.append(msg)
                if core.telemetry is not None:
                    core.telemetry.on_settle(agent_id, msg.message_type.value, "delivered")
                if d.options.delivery_mode is not DeliveryMode.AT_MOST_ONCE:
                    self._inflight.setdefault(msg.message_id, {})[agent_id] = d
        return out

    async def receive(self, agent_id: str, timeout: float | None) -> Message | None:
        """:meth:`MessageBus.receive`."""
        core = self._core
        broker = core.check()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            msgs = await self.get_messages(agent_id, 1)
            if msgs:
                return msgs[0]
            remaining: float | None = None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
            await broker.wait(agent_id, remaining)

    def _take(self, message_id: str, agent_id: str | None) -> tuple[str, Delivery]:
        """The held delivery of ``message_id`` (of ``agent_id``), no longer held."""
        holders = self._inflight.get(message_id)
        if not holders:
            raise UnknownMessageError(
                f"message {message_id!r} is not held by this bus (already settled, or never"
                " received with get_messages/receive)"
            )
        if agent_id is None:
            if len(holders) > 1:
                raise AmbiguousMessageError(
                    f"agents {sorted(holders)} hold message {message_id!r}: pass agent_id"
                )
            agent_id = next(iter(holders))
        d = holders.get(agent_id)
        if d is None:
            raise UnknownMessageError(f"agent {agent_id!r} does not hold message {message_id!r}")
        del holders[agent_id]
        if not holders:
            del self._inflight[message_id]
        return agent_id, d

    async def acknowledge(self, message_id: str, agent_id: str | None) -> None:
        """:meth:`MessageBus.acknowledge`."""
        core = self._core
        broker = core.check()
        agent, d = self._take(message_id, agent_id)
        options = d.options
        if options.delivery_mode is DeliveryMode.EXACTLY_ONCE and d.message is not None:
            ok = await broker.ack(
                agent,
                [d],
                processed_key=processed_key(agent, d.message, options),
                processed_ttl=core.config.processed_ttl_seconds,
            )
        else:
            ok = await broker.ack(agent, [d])
        if not ok[0]:
            raise LockLostError(
                f"the lock on {message_id!r} in {agent!r} expired before the ack;"
                " the message will be delivered again"
            )
        if core.telemetry is not None and d.message is not None:
            core.telemetry.on_settle(agent, d.message.message_type.value, "acked")

    async def nack(
        self,
        message_id: str,
        agent_id: str | None,
        error: str | BaseException | None,
        delay: float | None,
    ) -> None:
        """:meth:`MessageBus.nack`."""
        self._core.check()
        agent, d = self._take(message_id, agent_id)
        exc = error if isinstance(error, BaseException) else RuntimeError(error or "nacked")
        msg = d.message
        assert msg is not None
        if delay is not None:
            await self._admission.release(agent, d, msg, delay, exc)
            return
        await self._admission.failed(agent, d, msg, exc)
