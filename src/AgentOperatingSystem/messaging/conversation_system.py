"""Conversations between agents: a topic, participants and an ordered history of turns.

The spec's section 3.3::

    conversation_system = ConversationSystem(storage_manager)
    conversation_id = await conversation_system.start_conversation(
        participants=["ceo_agent", "cfo_agent"], topic="quarterly_planning",
        metadata={"quarter": "Q2", "year": 2025})
    await conversation_system.add_message(
        conversation_id=conversation_id, sender_id="ceo_agent",
        content="What's our revenue projection for Q2?", message_type=MessageType.QUERY)
    history = await conversation_system.get_conversation_history(conversation_id)
    context = await conversation_system.get_context(conversation_id, max_messages=20)
    await conversation_system.end_conversation(conversation_id)

Everything lives in the :class:`~AgentOperatingSystem.storage.manager.StorageManager`: the
conversation record under the key ``<conversation_id>`` of namespace ``aos.conversations``,
and its turns in the append-only log ``aos.conversation_turns/<conversation_id>``, whose
sequence numbers (1, 2, 3, ...) give the turns their order. Nothing is kept only in memory,
so on a SQLite store a conversation started in one process can be read, continued and ended
from another.

**Delivery through a bus.** When a ``message_bus`` is given, :meth:`ConversationSystem.add_message`
delivers the turn as one :class:`~.types.Message` to every *other* participant, in this order:

1. what the bus would certainly refuse is refused before anything is stored: a bus whose
   ``started`` is ``False`` raises :class:`~.errors.BrokerClosedError`, and when the bus's
   ``security`` has access control active (as :class:`~.bus.MessageBus` does after
   ``set_permissions``), ``security.authorize_publish(sender_id, message_type)`` may raise
   :class:`~.errors.PermissionDeniedError`;
2. the turn is stored (the history is the source of truth, so an agent that reacts to the
   delivered message and reads the context always finds the turn in it);
3. the messages are published: with the bus's ``publish_batch`` when it has one (all
   recipients or none), else one ``publish`` per recipient in participant order.

If step 3 fails, the exception propagates unchanged with a note (``add_note``) saying that the
turn was stored and which participants did and did not receive it: nothing is rolled back
silently and nothing is hidden.

**Concurrency.** Turns appended at the same time (from tasks or processes) all get distinct,
gap-free sequence numbers. The "is it still active?" check and the append are two steps, so
a turn accepted at the very moment another process ends the conversation may be stored just
after the end.
"""

from __future__ import annotations

import inspect
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from ..storage.manager import StorageManager
from .clock import Clock
from .errors import (
    BrokerClosedError,
    ConversationClosedError,
    ConversationError,
    ConversationNotFoundError,
    InvalidMessageError,
    NotAParticipantError,
)
from .types import Message, MessagePriority, MessageType

__all__ = [
    "CONVERSATIONS_NAMESPACE",
    "TURNS_NAMESPACE",
    "ConversationSystem",
    "MessagePublisher",
    "TurnHandler",
    "content_text",
]

CONVERSATIONS_NAMESPACE = "aos.conversations"
"""Storage namespace of the conversation records (key: conversation id)."""
TURNS_NAMESPACE = "aos.conversation_turns"
"""Storage namespace of the turn logs (stream: conversation id)."""

ACTIVE = "active"
ENDED = "ended"
_STATES = (ACTIVE, ENDED)
_REPLAY_PAGE = 256


class MessagePublisher(Protocol):
    """What a conversation needs of a bus: ``await bus.publish(message)``."""

    async def publish(self, message: Message) -> Any:
        """Publish one message."""
        ...


TurnHandler = Callable[[Dict[str, Any]], Any]
"""A :meth:`ConversationSystem.replay` handler: sync, or async returning an awaitable."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessageError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _check_json(name: str, value: object) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"{name} must be JSON-serialisable: {exc}") from exc


def _check_mapping(name: str, value: object) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidMessageError(f"{name} must be a dict or None, not {type(value).__name__}")
    result = dict(value)
    for key in result:
        if not isinstance(key, str):
            raise InvalidMessageError(f"{name} keys must be strings, not {key!r}")
    _check_json(name, result)
    return result


def _check_count(name: str, value: object, *, allow_none: bool) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMessageError(f"{name} must be a non-negative int, not {value!r}")
    return value


def content_text(content: Any) -> str:
    """The text of a turn's content: a string as is; for a dict its ``"text"`` if that is a
    string, else the dict as compact JSON."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return str(content["text"])
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


class ConversationSystem:
    """Start, continue, read and end conversations stored in a :class:`StorageManager`.

    ``message_bus`` (optional) delivers every added turn to the other participants; see the
    module docstring for the order of storing and delivering. ``clock`` gives the timestamps
    (default: the storage manager's clock).
    """

    def __init__(
        self,
        storage_manager: StorageManager,
        message_bus: Optional[MessagePublisher] = None,
        *,
        clock: Optional[Clock] = None,
    ) -> None:
        if not isinstance(storage_manager, StorageManager):
            raise ConversationError(
                "ConversationSystem needs a StorageManager, e.g. StorageManager('memory://') "
                f"or StorageManager('sqlite:///aos.db'); got {type(storage_manager).__name__}"
            )
        self.storage = storage_manager
        self.message_bus = message_bus
        self.clock: Clock = clock if clock is not None else storage_manager.clock

    # -- helpers -----------------------------------------------------------------------

    def _now(self) -> str:
        return _iso(self.clock.now())

    async def _record(self, conversation_id: str) -> Dict[str, Any]:
        _check_id("conversation_id", conversation_id)
        record = await self.storage.get(CONVERSATIONS_NAMESPACE, conversation_id)
        if not isinstance(record, dict):
            raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
        return record

    async def _public(self, record: Dict[str, Any]) -> Dict[str, Any]:
        info = dict(record)
        info["message_count"] = await self.storage.log_length(
            TURNS_NAMESPACE, record["conversation_id"]
        )
        return info

    @staticmethod
    def _turn(conversation_id: str, sequence: int, stored: Dict[str, Any]) -> Dict[str, Any]:
        turn = dict(stored)
        turn["sequence"] = sequence
        turn["conversation_id"] = conversation_id
        return turn

    # -- lifecycle of a conversation ---------------------------------------------------

    async def start_conversation(
        self,
        participants: Sequence[str],
        topic: str,
        metadata: Optional[Mapping[str, Any]] = None,
        conversation_id: Optional[str] = None,
    ) -> str:
        """Create a conversation and return its id (a new uuid unless ``conversation_id``).

        ``participants`` is a non-empty list of agent ids; duplicates are dropped, keeping
        the first occurrence's position. Starting with an id already in use raises
        :class:`ConversationError`.
        """
        if isinstance(participants, (str, bytes)) or not isinstance(participants, Sequence):
            raise InvalidMessageError("participants must be a list of agent ids")
        members: List[str] = []
        for participant in participants:
            _check_id("each participant", participant)
            if participant not in members:
                members.append(participant)
        if not members:
            raise InvalidMessageError("a conversation needs at least one participant")
        if not isinstance(topic, str):
            raise InvalidMessageError(f"topic must be a string, not {type(topic).__name__}")
        meta = _check_mapping("metadata", metadata)
        cid = uuid.uuid4().hex if conversation_id is None else conversation_id
        _check_id("conversation_id", cid)
        record: Dict[str, Any] = {
            "conversation_id": cid,
            "topic": topic,
            "participants": members,
            "metadata": meta,
            "state": ACTIVE,
            "started_at": self._now(),
            "ended_at": None,
            "summary": None,
        }
        if not await self.storage.put_if_absent(CONVERSATIONS_NAMESPACE, cid, record):
            raise ConversationError(f"a conversation with id {cid!r} already exists")
        return cid

    async def end_conversation(
        self, conversation_id: str, summary: Optional[str] = None
    ) -> Dict[str, Any]:
        """End an active conversation and return its final record.

        Raises :class:`ConversationNotFoundError` for an unknown id and
        :class:`ConversationClosedError` if it has already ended.
        """
        _check_id("conversation_id", conversation_id)
        if summary is not None and not isinstance(summary, str):
            raise InvalidMessageError("summary must be a string or None")
        ended_at = self._now()

        def end(record: Any) -> Any:
            if not isinstance(record, dict):
                raise ConversationNotFoundError(f"no conversation {conversation_id!r}")
            if record.get("state") != ACTIVE:
                raise ConversationClosedError(
                    f"conversation {conversation_id!r} already ended at {record.get('ended_at')}"
                )
            record["state"] = ENDED
            record["ended_at"] = ended_at
            record["summary"] = summary
            return record

        record = await self.storage.update(CONVERSATIONS_NAMESPACE, conversation_id, end)
        return await self._public(record)

    async def get_conversation(self, conversation_id: str) -> Dict[str, Any]:
        """Return the conversation's record: ``conversation_id``, ``topic``,
        ``participants``, ``metadata``, ``state`` (``"active"``/``"ended"``), ``started_at``,
        ``ended_at``, ``summary`` and ``message_count``."""
        return await self._public(await self._record(conversation_id))

    async def list_conversations(
        self, state: Optional[str] = None, participant: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """Return the records of every conversation (oldest first), optionally only those in
        ``state`` (``"active"`` or ``"ended"``) and/or with ``participant`` in them."""
        if state is not None and state not in _STATES:
            raise InvalidMessageError(f"state must be one of {_STATES} or None, not {state!r}")
        if participant is not None:
            _check_id("participant", participant)
        found: List[Dict[str, Any]] = []
        for _, record in await self.storage.list(CONVERSATIONS_NAMESPACE):
            if not isinstance(record, dict):
                continue
            if state is not None and record.get("state") != state:
                continue
            if participant is not None and participant not in record.get("participants", ()):
                continue
            found.append(await self._public(record))
        found.sort(key=lambda r: (str(r.get("started_at")), str(r.get("conversation_id"))))
        return found

    # -- turns -------------------------------------------------------------------------

    async def add_message(
        self,
        conversation_id: str,
        sender_id: str,
        content: str | Mapping[str, Any],
        message_type: MessageType | str = MessageType.QUERY,
        *,
        metadata: Optional[Mapping[str, Any]] = None,
        priority: MessagePriority | int | str = MessagePriority.NORMAL,
    ) -> str:
        """Add a turn to an active conversation and return its message id.

        ``content`` is a string or a JSON-serialisable dict. Raises
        :class:`ConversationNotFoundError`, :class:`ConversationClosedError` (ended) or
        :class:`NotAParticipantError` (``sender_id`` is not a participant). With a bus, the
        turn is then delivered to the other participants (see the module docstring).
        """
        _check_id("conversation_id", conversation_id)
        _check_id("sender_id", sender_id)
        if isinstance(content, Mapping):
            body: str | Dict[str, Any] = _check_mapping("content", content)
        elif isinstance(content, str):
            body = content
        else:
            raise InvalidMessageError(
                f"content must be a string or a dict, not {type(content).__name__}"
            )
        kind = MessageType.coerce(message_type)
        prio = MessagePriority.coerce(priority)
        meta = _check_mapping("metadata", metadata)

        record = await self._record(conversation_id)
        if record.get("state") != ACTIVE:
            raise ConversationClosedError(
                f"conversation {conversation_id!r} ended at {record.get('ended_at')}; "
                "no messages can be added"
            )
        participants: List[str] = list(record.get("participants", []))
        if sender_id not in participants:
            raise NotAParticipantError(
                f"{sender_id!r} is not a participant of conversation {conversation_id!r} "
                f"(participants: {participants})"
            )

        self._preflight(sender_id, kind)
        message_id = uuid.uuid4().hex
        stored: Dict[str, Any] = {
            "message_id": message_id,
            "sender_id": sender_id,
            "content": body,
            "message_type": kind.value,
            "timestamp": self._now(),
            "metadata": meta,
        }
        sequence = await self.storage.append(TURNS_NAMESPACE, conversation_id, stored)

        if self.message_bus is not None:
            await self._deliver(record, participants, stored, sequence, kind, prio)
        return message_id

    def _preflight(self, sender_id: str, kind: MessageType) -> None:
        """Refuse, before anything is stored, what the bus would certainly refuse."""
        bus = self.message_bus
        if bus is None:
            return
        if getattr(bus, "started", True) is False:
            raise BrokerClosedError(
                "the conversation's message bus is not running: start it before adding messages"
            )
        security = getattr(bus, "security", None)
        if security is not None and getattr(security, "acl_active", False):
            authorize = getattr(security, "authorize_publish", None)
            if callable(authorize):
                authorize(sender_id, kind)

    async def _deliver(
        self,
        record: Dict[str, Any],
        participants: List[str],
        turn: Dict[str, Any],
        sequence: int,
        kind: MessageType,
        priority: MessagePriority,
    ) -> None:
        bus = self.message_bus
        assert bus is not None
        conversation_id = str(record["conversation_id"])
        sender_id = str(turn["sender_id"])
        content = turn["content"]
        payload = dict(content) if isinstance(content, dict) else {"text": content}
        recipients = [p for p in participants if p != sender_id]
        if not recipients:
            return
        messages: List[Message] = []
        for recipient in recipients:
            meta = dict(turn["metadata"])
            meta.update(
                conversation_id=conversation_id,
                conversation_message_id=turn["message_id"],
                conversation_sequence=sequence,
                topic=record.get("topic"),
            )
            messages.append(
                Message(
                    message_type=kind,
                    sender_id=sender_id,
                    recipient_id=recipient,
                    content=dict(payload),
                    priority=priority,
                    metadata=meta,
                    correlation_id=conversation_id,
                )
            )
        where = (
            f"conversation {conversation_id!r}: turn {turn['message_id']} (sequence {sequence})"
            " was stored"
        )
        publish_batch = getattr(bus, "publish_batch", None)
        if callable(publish_batch):
            try:
                await publish_batch(messages)
            except BaseException as exc:
                exc.add_note(f"{where}; it was delivered to none of {recipients}")
                raise
            return
        delivered: List[str] = []
        for message in messages:
            try:
                await bus.publish(message)
            except BaseException as exc:
                pending = recipients[len(delivered) :]
                exc.add_note(f"{where}; delivered to {delivered}, not delivered to {pending}")
                raise
            assert message.recipient_id is not None
            delivered.append(message.recipient_id)

    async def get_conversation_history(
        self, conversation_id: str, offset: int = 0, limit: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """Return turns oldest first, skipping the first ``offset``, at most ``limit``.

        Each turn is a dict: ``sequence`` (1-based), ``conversation_id``, ``message_id``,
        ``sender_id``, ``content`` (as given: string or dict), ``message_type`` (its value,
        e.g. ``"query"``), ``timestamp`` (ISO 8601, UTC) and ``metadata``.
        """
        off = _check_count("offset", offset, allow_none=False)
        lim = _check_count("limit", limit, allow_none=True)
        await self._record(conversation_id)
        assert off is not None
        if lim == 0:
            return []
        rows = await self.storage.read_log(TURNS_NAMESPACE, conversation_id, off + 1, lim)
        return [self._turn(conversation_id, seq, value) for seq, value in rows]

    async def get_context(
        self,
        conversation_id: str,
        max_messages: Optional[int] = 20,
        *,
        agent_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Return what a language model needs to take part in the conversation.

        Keys: ``conversation_id``, ``topic``, ``participants``, ``metadata``, ``state``,
        ``started_at``, ``ended_at``, ``summary``, ``message_count`` (all turns),
        ``messages`` (the last ``max_messages`` turns, oldest first; ``None`` = all) and
        ``chat``: the same turns as ``{"role", "name", "content"}`` dicts for a chat API.

        Role mapping: with ``agent_id`` (the agent the model speaks for), that agent's own
        turns are ``"assistant"`` and everyone else's ``"user"``; without it every turn is
        ``"user"``. ``name`` is the sender id; ``content`` is the text (a string content as
        is, a dict's ``"text"``, else the dict as JSON).
        """
        count = _check_count("max_messages", max_messages, allow_none=True)
        if agent_id is not None:
            _check_id("agent_id", agent_id)
        info = await self.get_conversation(conversation_id)
        if count is None:
            rows = await self.storage.read_log(TURNS_NAMESPACE, conversation_id)
        else:
            rows = await self.storage.read_log_tail(TURNS_NAMESPACE, conversation_id, count)
        messages = [self._turn(conversation_id, seq, value) for seq, value in rows]
        chat = [
            {
                "role": "assistant"
                if agent_id is not None and turn["sender_id"] == agent_id
                else "user",
                "name": turn["sender_id"],
                "content": content_text(turn["content"]),
            }
            for turn in messages
        ]
        info["messages"] = messages
        info["chat"] = chat
        return info

    async def replay(
        self,
        conversation_id: str,
        handler: TurnHandler,
        *,
        from_sequence: int = 1,
    ) -> int:
        """Call ``handler(turn)`` (sync or async) for every stored turn from
        ``from_sequence`` on, in order; return how many were replayed."""
        if isinstance(from_sequence, bool) or not isinstance(from_sequence, int):
            raise InvalidMessageError("from_sequence must be an int")
        if from_sequence < 1:
            raise InvalidMessageError("from_sequence starts at 1")
        if not callable(handler):
            raise InvalidMessageError("handler must be callable")
        await self._record(conversation_id)
        count = 0
        start = from_sequence
        while True:
            rows = await self.storage.read_log(
                TURNS_NAMESPACE, conversation_id, start, _REPLAY_PAGE
            )
            for seq, value in rows:
                result = handler(self._turn(conversation_id, seq, value))
                if inspect.isawaitable(result):
                    await _await(result)
                count += 1
                start = seq + 1
            if len(rows) < _REPLAY_PAGE:
                return count


async def _await(result: Awaitable[Any]) -> None:
    await result
