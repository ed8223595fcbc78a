"""The size ledger: bytes of live messages per subscription queue, for ``max_size_in_mb``.

Counted exactly for what this process sends and settles; reconciled with the engine's queue
depths when topic metadata is reloaded, and messages another process sent or settled are then
estimated at the mean size of the counted ones (the package docstring says more)."""

from __future__ import annotations

__all__ = ["SizeLedger"]


class SizeLedger:
    """Bytes of live messages per subscription queue."""

    def __init__(self) -> None:
        self._queues: dict[str, list[int]] = {}  # queue -> [count, bytes]
        self._mean = 0.0

    def observe(self, size: int) -> None:
        """Seed the mean size (used to estimate messages this manager did not count)."""
        if self._mean == 0.0:
            self._mean = float(size)

    def add(self, queue: str, size: int) -> None:
        """Count one message of ``size`` bytes into ``queue``."""
        entry = self._queues.setdefault(queue, [0, 0])
        entry[0] += 1
        entry[1] += size
        self._mean = size if self._mean == 0.0 else 0.95 * self._mean + 0.05 * size

    def remove(self, queue: str, size: int) -> None:
        """Count one message of ``size`` bytes out of ``queue``."""
        entry = self._queues.get(queue)
        if entry is None:
            return
        entry[0] = max(0, entry[0] - 1)
        entry[1] = 0 if entry[0] == 0 else max(0, entry[1] - size)

    def reconcile(self, queue: str, depth: int) -> None:
        """Take the engine's ``depth`` of ``queue`` as the count, estimating the bytes."""
        entry = self._queues.setdefault(queue, [0, 0])
        count, size = entry
        if depth == count:
            return
        if depth <= 0:
            entry[0] = entry[1] = 0
        elif count > 0:
            entry[0], entry[1] = depth, round(size * depth / count)
        else:
            entry[0], entry[1] = depth, round(depth * (self._mean or 1024.0))

    def bytes(self, queue: str) -> int:
        """The counted bytes of ``queue``."""
        entry = self._queues.get(queue)
        return entry[1] if entry is not None else 0

    def drop(self, queue: str) -> None:
        """Forget ``queue`` (it was deleted)."""
        self._queues.pop(queue, None)
