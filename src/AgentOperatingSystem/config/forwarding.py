"""One descriptor for a setting that an object keeps in one of its parts.

``NetworkConfig.max_retries`` lives in ``NetworkConfig.retry``, and a Service Bus backend's
``metadata_refresh_seconds`` in its catalog: reading or writing the attribute on the owner
reads or writes it on the part, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

__all__ = ["Forwarded"]

T = TypeVar("T")


class Forwarded(Generic[T]):
    """``name = Forwarded[T]("part")`` in a class body: ``owner.name`` is
    ``owner.part.name`` (or ``owner.part.<attribute>`` when ``attribute`` is given)."""

    def __init__(self, part: str, attribute: str | None = None, doc: str | None = None) -> None:
        self.part = part
        self.attribute = attribute or ""
        if doc is not None:
            self.__doc__ = doc

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.attribute = self.attribute or name

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Forwarded[T]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> T: ...

    def __get__(self, instance: object, owner: type[Any] | None = None) -> Forwarded[T] | T:
        if instance is None:
            return self
        value: T = getattr(getattr(instance, self.part), self.attribute)
        return value

    def __set__(self, instance: object, value: T) -> None:
        setattr(getattr(instance, self.part), self.attribute, value)
