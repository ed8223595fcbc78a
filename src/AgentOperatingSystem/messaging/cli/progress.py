"""Progress of long command-line work (``send --count``, ``dlq resubmit``, ``dlq purge``).

:class:`Progress` writes on stderr, so stdout keeps only the command's results. On a
terminal it draws a `rich <https://rich.readthedocs.io>`_ bar with the count, the rate and
the time left, redrawn in place. Anywhere else (a pipe, a log file, CI) it writes plain
lines, never an escape code: one every tenth of the work or every few seconds, whichever
comes first, and a summary line at the end::

    sending: 40/100 (40%), 52.1/s, ETA 1.2s
    sending: 100/100 done in 1.92s (52.1/s)

The clock is injectable (``clock``), and so is the terminal (``console``, a
:class:`rich.console.Console`), so both kinds of output can be checked without waiting.
"""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Progress", "format_duration"]

_REDRAW = 0.1
"""Seconds between two redraws of the terminal bar."""


def format_duration(seconds: float) -> str:
    """``seconds`` the short way: ``0.42s``, ``12.3s``, ``2m05s``, ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0


class Progress:
    """The progress of ``total`` items of work called ``label``.

    Call :meth:`advance` as items are done and :meth:`finish` at the end (or use it as a
    context manager: leaving normally finishes, leaving on an exception only stops the bar).
    ``enabled=False`` prints nothing (one item is not worth a bar). ``stream`` (default
    stderr) is where it writes; it is a terminal when ``console`` is given and is one, or
    else when ``stream.isatty()``. Plain output writes a line every ``every`` items (default
    a tenth of ``total``) or every ``interval`` seconds.
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        stream: IO[str] | None = None,
        enabled: bool = True,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: int | None = None,
        interval: float = 5.0,
    ) -> None:
        self.total = max(0, total)
        self.label = label
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._every = every if every is not None else max(1, math.ceil(self.total / 10))
        self._interval = interval
        self._started = clock()
        self._last_line = self._started
        self._last_draw = -math.inf
        self._next_line = self._every
        self._finished = False
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            terminal = console.is_terminal if console is not None else _isatty(self.stream)
            if terminal:
                self._start_bar(console)
            elif console is not None:
                self.stream = console.file

    @property
    def terminal(self) -> bool:
        """True when the output is a bar redrawn in place (a terminal)."""
        return self._bar is not None

    @property
    def elapsed(self) -> float:
        """Seconds since the work started."""
        return self._clock() - self._started

    def _start_bar(self, console: Console | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console if console is not None else Console(file=self.stream),
            auto_refresh=False,  # redrawn by advance(): no thread of its own
            redirect_stdout=False,  # stdout carries the results: leave it alone
            redirect_stderr=False,
            get_time=self._clock,
        )
        self._task = bar.add_task(self.label, total=self.total, rate="-/s")
        bar.start()
        self._bar = bar

    def advance(self, n: int = 1, *, failed: bool = False) -> None:
        """Count ``n`` more items as done (``failed``: done, but with an error)."""
        self.done += n
        if failed:
            self.failed += n
        if not self.enabled or self._finished:
            return
        now = self._clock()
        if self._bar is not None:
            rate = _rate(self.done, now - self._started)
            self._bar.update(self._task, advance=n, rate=f"{rate:.1f}/s")
            if now - self._last_draw >= _REDRAW or self.done >= self.total:
                self._last_draw = now
                self._bar.refresh()
            return
        if self.done >= self.total:
            return  # the summary line says it
        if self.done >= self._next_line or now - self._last_line >= self._interval:
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        self._last_line = now
        while self._next_line <= self.done:
            self._next_line += self._every
        rate = _rate(self.done, now - self._started)
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        eta = f", ETA {format_duration((self.total - self.done) / rate)}" if rate else ""
        failed = f", {self.failed} failed" if self.failed else ""
        self._print(f"{self.label}: {self.done}/{self.total}{pct}{failed}, {rate:.1f}/s{eta}")

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def summary(self) -> str:
        """The last line: ``label: done/total done[, N failed] in T (R/s)``."""
        elapsed = self.elapsed
        failed = f", {self.failed} failed" if self.failed else ""
        rate = _rate(self.done, elapsed)
        return (
            f"{self.label}: {self.done}/{self.total} done{failed} in "
            f"{format_duration(elapsed)} ({rate:.1f}/s)"
        )

    def finish(self) -> None:
        """Stop the bar and write the summary line (once; nothing when not enabled)."""
        if not self.enabled or self._finished:
            return
        line = self.summary()
        self.close()
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            self._print(line)

    def close(self) -> None:
        """Stop the bar without a summary (after an error or Ctrl-C)."""
        if self._finished:
            return
        self._finished = True
        if self._bar is not None:
            self._bar.stop()  # draws the last state

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or minimal stream
        return False
