"""``LIKE`` patterns: ``%`` and ``_`` wildcards with an optional escape character, compiled
once into a matcher that never backtracks (plain string methods for the common shapes)."""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable

__all__ = ["like_matcher", "like_segments"]


def like_segments(pattern: str, escape: str | None) -> list[str]:
    """Split a LIKE pattern into ``"%"``, ``"_"`` and literal runs (prefixed with ``"L"``)."""
    segments: list[str] = []
    literal: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if escape is not None and ch == escape:
            if i + 1 >= n:
                raise ValueError("LIKE pattern ends with its escape character")
            literal.append(pattern[i + 1])
            i += 2
            continue
        if ch == "%" or ch == "_":
            if literal:
                segments.append("L" + "".join(literal))
                literal = []
            segments.append(ch)
        else:
            literal.append(ch)
        i += 1
    if literal:
        segments.append("L" + "".join(literal))
    return segments


@functools.lru_cache(maxsize=256)
def like_matcher(pattern: str, escape: str | None) -> Callable[[str], bool]:
    """Compile a LIKE pattern to a predicate on strings; ``ValueError`` if it is invalid."""
    segments = like_segments(pattern, escape)
    literals = [s[1:] for s in segments if s[0] == "L"]
    shape = "".join("L" if s[0] == "L" else s for s in segments)
    if shape == "":
        return "".__eq__
    if shape == "L":
        return literals[0].__eq__
    if shape == "L%":
        return operator.methodcaller("startswith", literals[0])
    if shape == "%L":
        return operator.methodcaller("endswith", literals[0])
    if shape == "%L%":
        needle = literals[0]
        return lambda value: needle in value
    if shape and set(shape) == {"%"}:
        return lambda value: True
    return _segment_matcher(segments)


class _Piece:
    """A run of a LIKE pattern between two ``%``: literal characters and ``_`` wildcards."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, segments: list[str]) -> None:
        self.length = sum(1 if s == "_" else len(s) - 1 for s in segments)
        if "_" in segments:
            source = "".join("." if s == "_" else re.escape(s[1:]) for s in segments)
            self.literal: str | None = None
            self.regex: re.Pattern[str] | None = re.compile(source, re.DOTALL)
        else:
            self.literal = "".join(s[1:] for s in segments)
            self.regex = None

    def matches_at(self, value: str, index: int) -> bool:
        if self.literal is not None:
            return value.startswith(self.literal, index)
        assert self.regex is not None
        return self.regex.match(value, index) is not None

    def find(self, value: str, start: int, end: int) -> int:
        """Leftmost index >= start where the piece matches and ends by ``end``; -1 if none."""
        if self.literal is not None:
            return value.find(self.literal, start, end)
        assert self.regex is not None
        found = self.regex.search(value, start, end)
        return -1 if found is None else found.start()


def _segment_matcher(segments: list[str]) -> Callable[[str], bool]:
    """A LIKE matcher without backtracking: the pieces between ``%`` are fixed-length, so
    matching the first piece at the start, the last at the end and each middle piece at its
    leftmost place is exact, in O(len(value) * len(pattern)) at worst."""
    groups: list[list[str]] = [[]]
    for segment in segments:
        if segment == "%":
            groups.append([])
        else:
            groups[-1].append(segment)
    pieces = [_Piece(group) for group in groups]
    if len(pieces) == 1:
        only = pieces[0]
        return lambda value: len(value) == only.length and only.matches_at(value, 0)
    first, last = pieces[0], pieces[-1]
    middle = [piece for piece in pieces[1:-1] if piece.length]
    minimum = sum(piece.length for piece in pieces)

    def match(value: str) -> bool:
        size = len(value)
        if size < minimum or not first.matches_at(value, 0):
            return False
        end = size - last.length
        if not last.matches_at(value, end):
            return False
        position = first.length
        for piece in middle:
            index = piece.find(value, position, end)
            if index < 0:
                return False
            position = index + piece.length
        return True

    return match
