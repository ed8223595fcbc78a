"""Log lines that a client can cause, kept few: :class:`QuietLog` writes at most one line per
interval for one kind of event, and says on that line how many more happened since the
previous one. A flood of disconnects or refused connections costs the log one line every
few seconds, never a traceback each."""

from __future__ import annotations

import logging

from ..clock import Clock

__all__ = ["QuietLog"]


class QuietLog:
    """One ``kind`` of client-caused event (a plural noun phrase, for the count), logged on
    ``logger`` at ``level`` at most once per ``interval`` seconds of ``clock`` (monotonic
    time)."""

    def __init__(
        self, logger: logging.Logger, level: int, interval: float, clock: Clock, kind: str
    ) -> None:
        self.logger = logger
        self.kind = kind
        self.level = level
        self.interval = interval
        self.clock = clock
        #: events noted in all
        self.total = 0
        self._pending = 0
        self._last: float | None = None

    def note(self, text: str) -> None:
        """One event, described by ``text``: logged now when no line was written in the
        last ``interval`` seconds, else counted for the next line."""
        self.total += 1
        now = self.clock.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._pending += 1
            return
        self._emit(text, now)

    def flush(self) -> None:
        """Write the count of events not logged yet, once ``interval`` has passed."""
        now = self.clock.monotonic()
        if self._pending and self._last is not None and now - self._last >= self.interval:
            self._emit("", now)

    def _emit(self, text: str, now: float) -> None:
        more = self._pending
        self._pending = 0
        self._last = now
        if more and text:
            self.logger.log(self.level, "%s (and %d more %s before it)", text, more, self.kind)
        elif more:
            self.logger.log(self.level, "%d more %s", more, self.kind)
        else:
            self.logger.log(self.level, "%s", text)
