"""What every resource of the network package is: :class:`AsyncResource`, ``start()`` and
``aclose()`` plus ``async with`` (the shape of AnyIO's ``AsyncResource``)."""

from __future__ import annotations

from typing import Self

__all__ = ["AsyncResource"]


class AsyncResource:
    """A resource used as ``async with resource:``, which ``start()``s it and ``aclose()``s
    it on the way out. Subclasses define :meth:`aclose` (and :meth:`start` when starting
    does anything)."""

    async def start(self) -> Self:
        """Make the resource ready (nothing to do here); returns it."""
        return self

    async def aclose(self) -> None:
        """Release everything the resource holds."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
