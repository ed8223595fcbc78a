"""A2A push notifications: the configs of a task (``CreateTaskPushNotificationConfig``,
``Get``, ``List``, ``Delete``, or ``configuration.taskPushNotificationConfig`` of a
``SendMessage``), and the delivery of every task update to each of them through the bus.

Each update (a status change, an artifact) is one message per config on the durable queue
:data:`PUSH_QUEUE`, published with an idempotency key ``<taskId>:<event>:<configId>``. Its
consumer POSTs the update (a ``StreamResponse``: ``{"statusUpdate": ...}`` or
``{"artifactUpdate": ...}``) to the config's URL with the headers ``X-A2A-Notification-Token``
(the config's token), ``Authorization: <scheme> <credentials>`` (its authentication) and
``Idempotency-Key`` (the same key, so a receiver can drop a repeat). A refusal (not 2xx) or
an unreachable receiver raises, and the bus retries with backoff
(``a2a_push_max_attempts``, ``a2a_push_retry_delay``); after the last attempt the message is
dead-lettered with the reason (``max_attempts``) and the last error, in the DLQ tools like
any other. Nothing is lost across a restart: the queue is the bus's.

Push is off unless ``a2a_push_notifications`` is set (the node would call URLs its clients
choose); the methods then answer PushNotificationNotSupportedError.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping
from urllib.parse import urlsplit

import aiohttp

from ....config.network import NetworkConfig
from ...core.bus import MessageBus
from ...types import Message, MessageType
from ..wire import dumps
from .rpc import RpcError, invalid_params, optional_id, push_not_supported
from .tasks import A2ATask, render_event

__all__ = [
    "MAX_CONFIGS",
    "PUSH_QUEUE",
    "PushError",
    "PushSender",
    "config_of",
    "push_method",
    "push_task_id",
]

#: The queue of the updates to push.
PUSH_QUEUE = "aos.a2a.push"
#: The most push configs one task may have.
MAX_CONFIGS = 10
_TIMEOUT = aiohttp.ClientTimeout(total=10)


class PushError(Exception):
    """A receiver refused an update or could not be reached (the bus retries it)."""


def config_of(params: Mapping[str, Any], task_id: str | None = None) -> dict[str, Any]:
    """A push config from its A2A 1.0 object (``url``, ``id``, ``token``,
    ``authentication``; the 0.3 ``pushNotificationConfig`` wrapper too)."""
    body = params.get("pushNotificationConfig", params)
    if not isinstance(body, Mapping):
        raise invalid_params("the push notification config must be an object")
    url = body.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid_params("the push notification config needs an http(s) url")
    config: dict[str, Any] = {
        "id": optional_id(body.get("id") or params.get("configId"), "id") or uuid.uuid4().hex,
        "url": url,
    }
    token = body.get("token")
    if token is not None:
        if not isinstance(token, str):
            raise invalid_params("the push notification token must be a string")
        config["token"] = token
    auth = body.get("authentication")
    if auth is not None:
        if not isinstance(auth, Mapping) or not isinstance(auth.get("scheme"), str):
            raise invalid_params("authentication needs a scheme")
        config["authentication"] = {
            "scheme": auth["scheme"],
            "credentials": str(auth.get("credentials", "")),
        }
    if task_id is not None:
        config["taskId"] = task_id
    return config


def _task_id(params: Mapping[str, Any]) -> Any:
    return params.get("taskId", params.get("task_id", params.get("id")))


def push_method(
    method: str, task: A2ATask, params: Mapping[str, Any], legacy: bool
) -> tuple[Any, bool]:
    """Run the push-config ``method`` on ``task``: its result, and whether the task changed."""
    action = method.rsplit("/", 1)[-1].lower()
    if action.startswith(("create", "set")):
        config = config_of(params, task.id)
        others = [c for c in task.push if c["id"] != config["id"]]
        if len(others) >= MAX_CONFIGS:
            raise invalid_params(f"a task has at most {MAX_CONFIGS} push notification configs")
        task.push = [*others, config]
        return _render(config, legacy), True
    if action.startswith("list"):
        configs = [_render(c, legacy) for c in task.push]
        return (configs if legacy else {"configs": configs, "nextPageToken": ""}), False
    config_id = params.get("id") if "taskId" in params or "task_id" in params else None
    config_id = config_id or params.get("pushNotificationConfigId") or params.get("configId")
    found = [c for c in task.push if c["id"] == config_id]
    if config_id is None and legacy:  # 0.3: the task's first config
        found = task.push[:1]
    if not found:
        raise RpcError(
            -32001,
            f"Task not found: no push notification config {config_id!r} for task {task.id}",
            "TASK_NOT_FOUND",
            {"taskId": task.id},
        )
    if action.startswith("get"):
        return _render(found[0], legacy), False
    task.push = [c for c in task.push if c["id"] != config_id]
    return (None if legacy else {}), True


def _render(config: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
    if legacy:
        inner = {k: v for k, v in config.items() if k != "taskId"}
        return {"taskId": config.get("taskId"), "pushNotificationConfig": inner}
    return dict(config)


def push_task_id(params: Mapping[str, Any]) -> Any:
    """The task id a push-config call names."""
    return _task_id(params)


class PushSender:
    """Queues the updates of tasks with push configs and delivers them (a consumer of
    :data:`PUSH_QUEUE` on ``bus``)."""

    def __init__(self, config: NetworkConfig, bus: MessageBus) -> None:
        self.config = config
        self.bus = bus
        self.session: aiohttp.ClientSession | None = None
        self._started = False

    @property
    def enabled(self) -> bool:
        """True when push notifications are declared and sent."""
        return self.config.a2a.push_notifications

    def check(self) -> None:
        """PushNotificationNotSupportedError unless push is on."""
        if not self.enabled:
            raise push_not_supported()

    async def start(self) -> None:
        """Consume the queue (when push is on and the bus runs)."""
        if self._started or not self.enabled or not self.bus.started:
            return
        self.session = aiohttp.ClientSession(timeout=_TIMEOUT)
        await self.bus.subscribe(
            PUSH_QUEUE, [MessageType.COMMAND], self._deliver, max_concurrency=8
        )
        self._started = True

    async def stop(self) -> None:
        """Stop consuming (updates not yet delivered wait in the queue) and close HTTP."""
        if self._started:
            self._started = False
            if self.bus.started:
                await self.bus.unsubscribe(PUSH_QUEUE, unbind=False)
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def updated(self, task: A2ATask, events: list[tuple[str, Any]]) -> None:
        """Queue ``events`` of ``task`` for each of its push configs."""
        if not self.enabled or not task.push:
            return
        await self.start()
        a2a = self.config.a2a
        policy = {
            "max_attempts": a2a.push_max_attempts,
            "initial_delay": a2a.push_retry_delay,
            "backoff_multiplier": 2.0,
            "max_delay": max(a2a.push_retry_delay, 300.0),
        }
        for event in events:
            task.events += 1
            body = render_event(task, event, False)
            for config in task.push:
                key = f"{task.id}:{task.events}:{config['id']}"
                await self.bus.publish(
                    Message(
                        message_type=MessageType.COMMAND,
                        sender_id=f"a2a-task:{task.id}",
                        recipient_id=PUSH_QUEUE,
                        content={"command": "a2a.push", "config": config, "key": key, "body": body},
                    ),
                    idempotency_key=key,
                    retry_policy=policy,
                )

    async def _deliver(self, msg: Message) -> None:
        content = msg.content
        config, key = content["config"], content["key"]
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if config.get("token"):
            headers["X-A2A-Notification-Token"] = config["token"]
        auth = config.get("authentication")
        if auth:
            headers["Authorization"] = f"{auth['scheme']} {auth.get('credentials', '')}".strip()
        session = self.session
        if session is None:  # pragma: no cover - the consumer runs only after start()
            raise PushError("the push sender is stopped")
        try:
            async with session.post(
                config["url"], data=dumps(content["body"]), headers=headers
            ) as resp:
                if resp.status >= 300:
                    raise PushError(f"{config['url']} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PushError(f"{config['url']} unreachable: {exc}") from exc
