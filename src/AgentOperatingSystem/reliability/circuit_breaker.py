"""A circuit breaker for calls to something that can fail (spec section 6.3).

::

    circuit = CircuitBreaker(name="message_delivery")

    @circuit.protected
    async def send_message_with_protection(message):
        await message_bus.publish(message)

States:

``CLOSED``
    Calls run. ``failure_threshold`` failures within the last ``window_seconds`` open it.
``OPEN``
    Calls are refused at once with :class:`CircuitOpenError` (``retry_after`` says when the
    circuit will let a trial through). After ``recovery_timeout`` seconds the next look at the
    breaker (a call, or reading :attr:`CircuitBreaker.state`) moves it to ``HALF_OPEN``.
``HALF_OPEN``
    At most ``half_open_max_calls`` trial calls run at a time; others are refused.
    ``success_threshold`` successful trials close it; any failed trial opens it again and
    restarts the recovery timer.

Only exceptions that are instances of ``expected_exceptions`` and not of
``excluded_exceptions`` count as failures; any other exception passes through to the caller
without counting (in half-open it frees its trial slot). :class:`asyncio.CancelledError` never
counts. The breaker's state is guarded by a :class:`threading.Lock` held only for small,
non-awaiting updates, so it is safe for asyncio tasks and for :meth:`CircuitBreaker.call_sync`
from several threads.

A call that started in one state and ends after the breaker has moved on (for example a slow
call that started before the circuit opened) is counted in :attr:`CircuitBreaker.stats` but
does not change the state: only calls admitted in the current state period do.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import enum
import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ..messaging.clock import SYSTEM_CLOCK
from ..messaging.errors import CircuitOpenError, ConfigurationError

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerStats",
    "CircuitOpenError",
    "CircuitState",
    "MonotonicClock",
    "StateChangeCallback",
]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class MonotonicClock(Protocol):
    """Anything with a ``monotonic()`` method (every :mod:`~..messaging.clock` clock)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never goes backwards."""
        ...


class CircuitState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateChangeCallback = Callable[[str, CircuitState, CircuitState], None]
"""Called as ``callback(name, old_state, new_state)`` after each transition."""


@dataclasses.dataclass(slots=True)
class CircuitBreakerStats:
    """Counters of a :class:`CircuitBreaker` (a snapshot: it does not update itself).

    Times are the breaker's clock ``monotonic()`` values.
    """

    state: CircuitState = CircuitState.CLOSED
    calls: int = 0
    """Calls admitted (run), whatever their outcome."""
    successes: int = 0
    failures: int = 0
    """Calls that raised a counted exception."""
    ignored_errors: int = 0
    """Calls that raised an exception that does not count (excluded, unexpected, cancelled)."""
    rejections: int = 0
    """Calls refused with :class:`CircuitOpenError`."""
    state_changes: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    failures_in_window: int = 0
    """Counted failures within the current sliding window (while closed)."""
    last_failure_at: float | None = None
    last_success_at: float | None = None
    last_state_change_at: float | None = None
    opened_at: float | None = None
    """When the circuit last opened (``None`` if it never did)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Permit:
    generation: int
    trial: bool


class _Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


def _exception_types(
    value: type[BaseException] | tuple[type[BaseException], ...], what: str
) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigurationError(f"{what} must be exception classes, got {item!r}")
    return types


class CircuitBreaker:
    """Stops calling a failing dependency for a while, then lets trial calls probe it.

    Args:
        name: identifies the breaker in errors and callbacks.
        failure_threshold: counted failures within ``window_seconds`` that open the circuit.
        window_seconds: length of the sliding failure window.
        recovery_timeout: seconds the circuit stays open before it lets trials through.
        half_open_max_calls: trial calls allowed to run at the same time when half-open.
        success_threshold: successful trials that close the circuit.
        expected_exceptions: exceptions that count as failures ...
        excluded_exceptions: ... except these.
        clock: anything with ``monotonic()``; default the system clock.
        on_state_change: ``callback(name, old, new)`` after each transition (errors it raises
            are logged, not propagated).

    Raises:
        ConfigurationError: a parameter is out of range.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        window_seconds: float = 60.0,
        recovery_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        expected_exceptions: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        excluded_exceptions: type[BaseException] | tuple[type[BaseException], ...] = (),
        clock: MonotonicClock | None = None,
        on_state_change: StateChangeCallback | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("circuit breaker name must be a non-empty string")
        for label, ivalue in (
            ("failure_threshold", failure_threshold),
            ("half_open_max_calls", half_open_max_calls),
            ("success_threshold", success_threshold),
        ):
            if isinstance(ivalue, bool) or not isinstance(ivalue, int) or ivalue < 1:
                raise ConfigurationError(f"{label} must be an int >= 1, not {ivalue!r}")
        for label, fvalue, allow_zero in (
            ("window_seconds", window_seconds, False),
            ("recovery_timeout", recovery_timeout, True),
        ):
            if isinstance(fvalue, bool) or not isinstance(fvalue, (int, float)):
                raise ConfigurationError(f"{label} must be a number, not {fvalue!r}")
            if fvalue < 0 or (fvalue == 0 and not allow_zero):
                raise ConfigurationError(
                    f"{label} must be {'>= 0' if allow_zero else '> 0'}, not {fvalue!r}"
                )
        if on_state_change is not None and not callable(on_state_change):
            raise ConfigurationError("on_state_change must be callable")

        self.name = name
        self.failure_threshold = failure_threshold
        self.window_seconds = float(window_seconds)
        self.recovery_timeout = float(recovery_timeout)
        self.half_open_max_calls = half_open_max_calls
        self.success_threshold = success_threshold
        self.expected_exceptions = _exception_types(expected_exceptions, "expected_exceptions")
        self.excluded_exceptions = _exception_types(excluded_exceptions, "excluded_exceptions")
        self.on_state_change = on_state_change
        self._clock: MonotonicClock = clock if clock is not None else SYSTEM_CLOCK

        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._failure_times: deque[float] = deque()
        self._opened_at: float | None = None
        self._trials_running = 0
        self._trial_successes = 0
        self._stats = CircuitBreakerStats()
        # Permits of `with`/`async with` blocks, per context (task or thread), innermost last.
        self._context_permits: contextvars.ContextVar[tuple[_Permit, ...]] = contextvars.ContextVar(
            f"circuit_breaker_{name}_permits", default=()
        )

    # -- inspection ------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (an open circuit past its recovery timeout reads as half-open)."""
        with self._lock:
            changes = self._refresh(self._clock.monotonic())
            state = self._state
        self._notify(changes)
        return state

    @property
    def stats(self) -> CircuitBreakerStats:
        """A snapshot of the breaker's counters."""
        with self._lock:
            now = self._clock.monotonic()
            changes = self._refresh(now)
            self._prune(now)
            snapshot = dataclasses.replace(
                self._stats, state=self._state, failures_in_window=len(self._failure_times)
            )
        self._notify(changes)
        return snapshot

    @property
    def retry_after(self) -> float | None:
        """Seconds until an open circuit lets a trial through; ``None`` unless open."""
        with self._lock:
            now = self._clock.monotonic()
            changes = self._refresh(now)
            result = self._retry_after(now) if self._state is CircuitState.OPEN else None
        self._notify(changes)
        return result

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"

    # -- manual control --------------------------------------------------------------------

    def reset(self) -> None:
        """Close the circuit and forget the failure window (the lifetime counters stay)."""
        with self._lock:
            now = self._clock.monotonic()
            self._failure_times.clear()
            self._stats.consecutive_failures = 0
            changes = self._transition(CircuitState.CLOSED, now, force=True)
        self._notify(changes)

    def force_open(self) -> None:
        """Open the circuit now; it recovers as usual after ``recovery_timeout``."""
        with self._lock:
            changes = self._transition(CircuitState.OPEN, self._clock.monotonic(), force=True)
        self._notify(changes)

    # -- calling ---------------------------------------------------------------------------

    async def call(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``func(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpenError: the circuit refused the call (``func`` was not called).
        """
        permit = self._acquire()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self._release(permit, self._classify(exc))
            raise
        self._release(permit, _Outcome.SUCCESS)
        return result

    def call_sync(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``func(*args, **kwargs)`` through the breaker (thread-safe).

        Raises:
            CircuitOpenError: the circuit refused the call (``func`` was not called).
        """
        permit = self._acquire()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._release(permit, self._classify(exc))
            raise
        self._release(permit, _Outcome.SUCCESS)
        return result

    @overload
    def protected(
        self, func: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def protected(self, func: Callable[P, T]) -> Callable[P, T]: ...

    def protected(self, func: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a coroutine function or a plain function so each call goes through.

        Coroutine functions are recognised with :func:`inspect.iscoroutinefunction`; the
        wrapper keeps the wrapped function's name, docstring and signature
        (:func:`functools.wraps`).
        """
        if not callable(func):
            raise TypeError("CircuitBreaker.protected decorates a function")
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call(func, *args, **kwargs)

            return async_wrapper

        @functools.wraps(func)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call_sync(func, *args, **kwargs)

        return sync_wrapper

    async def __aenter__(self) -> CircuitBreaker:
        self.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __enter__(self) -> CircuitBreaker:
        permit = self._acquire()
        self._context_permits.set((*self._context_permits.get(), permit))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permits = self._context_permits.get()
        if not permits:  # pragma: no cover - exit without enter
            raise RuntimeError("CircuitBreaker exited without a matching enter")
        self._context_permits.set(permits[:-1])
        outcome = _Outcome.SUCCESS if exc is None else self._classify(exc)
        self._release(permits[-1], outcome)

    # -- the state machine -----------------------------------------------------------------

    def _classify(self, exc: BaseException) -> _Outcome:
        if isinstance(exc, asyncio.CancelledError):
            return _Outcome.IGNORED
        if isinstance(exc, self.expected_exceptions) and not isinstance(
            exc, self.excluded_exceptions
        ):
            return _Outcome.FAILURE
        return _Outcome.IGNORED

    def _acquire(self) -> _Permit:
        with self._lock:
            now = self._clock.monotonic()
            changes = self._refresh(now)
            error: CircuitOpenError | None = None
            permit: _Permit | None = None
            if self._state is CircuitState.OPEN:
                error = CircuitOpenError(self.name, retry_after=self._retry_after(now))
            elif self._state is CircuitState.HALF_OPEN:
                if self._trials_running >= self.half_open_max_calls:
                    # The trials running now decide; nothing better to suggest than "soon".
                    error = CircuitOpenError(self.name, retry_after=None)
                else:
                    self._trials_running += 1
                    permit = _Permit(self._generation, trial=True)
            else:
                permit = _Permit(self._generation, trial=False)
            if error is not None:
                self._stats.rejections += 1
            else:
                self._stats.calls += 1
        self._notify(changes)
        if error is not None:
            raise error
        assert permit is not None
        return permit

    def _release(self, permit: _Permit, outcome: _Outcome) -> None:
        with self._lock:
            now = self._clock.monotonic()
            current = permit.generation == self._generation
            if current and permit.trial:
                self._trials_running -= 1
            self._count(outcome, now)
            changes = self._judge(outcome, permit.trial, now) if current else []
        self._notify(changes)

    def _count(self, outcome: _Outcome, now: float) -> None:
        """Add a finished call to the counters (lock held)."""
        stats = self._stats
        if outcome is _Outcome.SUCCESS:
            stats.successes += 1
            stats.consecutive_successes += 1
            stats.consecutive_failures = 0
            stats.last_success_at = now
        elif outcome is _Outcome.FAILURE:
            stats.failures += 1
            stats.consecutive_failures += 1
            stats.consecutive_successes = 0
            stats.last_failure_at = now
        else:
            stats.ignored_errors += 1

    def _judge(
        self, outcome: _Outcome, trial: bool, now: float
    ) -> list[tuple[CircuitState, CircuitState]]:
        """The transition a call admitted in the current state period brings (lock held): a
        trial's success towards closing, its failure reopening; a failure while closed into
        the window, opening the circuit at the threshold."""
        if outcome is _Outcome.SUCCESS and trial:
            self._trial_successes += 1
            if self._trial_successes >= self.success_threshold:
                self._failure_times.clear()
                return self._transition(CircuitState.CLOSED, now)
        elif outcome is _Outcome.FAILURE:
            if trial:
                return self._transition(CircuitState.OPEN, now)
            if self._state is CircuitState.CLOSED:
                self._failure_times.append(now)
                self._prune(now)
                if len(self._failure_times) >= self.failure_threshold:
                    return self._transition(CircuitState.OPEN, now)
        return []

    def _prune(self, now: float) -> None:
        horizon = now - self.window_seconds
        while self._failure_times and self._failure_times[0] <= horizon:
            self._failure_times.popleft()

    def _retry_after(self, now: float) -> float:
        assert self._opened_at is not None
        return max(0.0, self._opened_at + self.recovery_timeout - now)

    def _refresh(self, now: float) -> list[tuple[CircuitState, CircuitState]]:
        """Apply the lazy OPEN -> HALF_OPEN transition (lock held)."""
        if (
            self._state is CircuitState.OPEN
            and self._opened_at is not None
            and now - self._opened_at >= self.recovery_timeout
        ):
            return self._transition(CircuitState.HALF_OPEN, now)
        return []

    def _transition(
        self, new: CircuitState, now: float, *, force: bool = False
    ) -> list[tuple[CircuitState, CircuitState]]:
        """Move to ``new`` (lock held); returns the change for :meth:`_notify`."""
        old = self._state
        if old is new and not force:
            return []
        # A new state period: calls admitted earlier no longer affect the state.
        self._generation += 1
        self._trials_running = 0
        self._trial_successes = 0
        if new is CircuitState.OPEN:
            self._opened_at = now
            self._stats.opened_at = now
        elif new is CircuitState.CLOSED:
            self._failure_times.clear()
        if old is new:
            return []
        self._state = new
        self._stats.state_changes += 1
        self._stats.last_state_change_at = now
        return [(old, new)]

    def _notify(self, changes: list[tuple[CircuitState, CircuitState]]) -> None:
        """Run the state-change callback outside the lock."""
        callback = self.on_state_change
        if callback is None:
            return
        for old, new in changes:
            try:
                callback(self.name, old, new)
            except Exception:
                _log.exception("on_state_change callback of circuit %r failed", self.name)
