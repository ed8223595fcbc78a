"""Where A2A tasks live: a :class:`~AgentOperatingSystem.storage.manager.StorageManager`
namespace (so a task outlives its node: a restart, or another node on the same store,
continues it), with the tasks this process is running kept in memory beside it (their
the queues of the streams and calls that listen to them).

At most ``limit`` tasks are kept: past it, the oldest finished ones are removed first, then
the oldest of all, so what remote clients can create stays bounded.
"""

from __future__ import annotations

from typing import Any

from ....storage.manager import StorageManager
from .tasks import A2ATask

__all__ = ["NAMESPACE", "TaskStore"]

#: The StorageManager namespace of the tasks.
NAMESPACE = "a2a.tasks"
#: How many new tasks pass between two checks of the limit.
_PRUNE_EVERY = 32


class TaskStore:
    """The tasks of a node's A2A endpoints, kept in ``storage``."""

    def __init__(self, storage: StorageManager, limit: int) -> None:
        self.storage = storage
        self.limit = limit
        #: tasks loaded or created in this process, by id
        self.live: dict[str, A2ATask] = {}
        self._created = 0

    async def save(self, task: A2ATask) -> None:
        """Write ``task`` (its current state and history) to the store."""
        self.live[task.id] = task
        await self.storage.put(NAMESPACE, task.id, task.record())

    async def add(self, task: A2ATask) -> None:
        """Store a new task (and keep the store within its limit)."""
        await self.save(task)
        self._created += 1
        if self._created % _PRUNE_EVERY == 0 or len(self.live) > self.limit:
            await self.prune()

    async def get(self, task_id: str) -> A2ATask | None:
        """The task ``task_id``: the live one, else the one in the store."""
        task = self.live.get(task_id)
        if task is not None:
            return task
        rec = await self.storage.get(NAMESPACE, task_id)
        if not isinstance(rec, dict):
            return None
        task = A2ATask.from_record(rec)
        self.live[task.id] = task
        self._trim_live()
        return task

    async def refresh(self, task: A2ATask) -> A2ATask:
        """``task``, brought up to what the store has when that is newer (another node may
        have moved it on); the same object, so its listeners keep listening."""
        rec = await self.storage.get(NAMESPACE, task.id)
        if isinstance(rec, dict) and str(rec.get("timestamp", "")) > task.timestamp:
            task.take(A2ATask.from_record(rec))
        return task

    async def records(self) -> list[dict[str, Any]]:
        """Every stored task record."""
        return [rec for _, rec in await self.storage.list(NAMESPACE) if isinstance(rec, dict)]

    async def prune(self) -> None:
        """Remove the oldest tasks past the limit (finished ones first)."""
        recs = await self.records()
        excess = len(recs) - self.limit
        if excess <= 0:
            self._trim_live()
            return
        done = {"completed", "failed", "canceled", "rejected"}
        recs.sort(key=lambda r: (r.get("state") not in done, r.get("timestamp", "")))
        for rec in recs[:excess]:
            await self.storage.delete(NAMESPACE, rec["id"])
            self.live.pop(rec["id"], None)
        self._trim_live()

    def _trim_live(self) -> None:
        """Forget (in memory only) finished tasks no stream listens to, past the limit."""
        if len(self.live) <= self.limit:
            return
        for tid in [t.id for t in self.live.values() if t.terminal and not t.listeners]:
            if len(self.live) <= self.limit:
                break
            del self.live[tid]
