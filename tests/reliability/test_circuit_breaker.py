"""CircuitBreaker: the state machine on a ManualClock, concurrency, decorators, stats."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.errors import CircuitOpenError, ConfigurationError
from AgentOperatingSystem.reliability.circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerStats,
    CircuitState,
)


class Boom(Exception):
    pass


class NotFound(Exception):
    pass


async def ok(value: int = 1) -> int:
    return value


async def fail() -> None:
    raise Boom("down")


async def fail_n(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(fail)


def state(breaker: CircuitBreaker) -> CircuitState:
    """Read the state (a function, so mypy does not narrow it between reads)."""
    return breaker.state


def make(clock: ManualClock, **kwargs: Any) -> CircuitBreaker:
    options: dict[str, Any] = {
        "failure_threshold": 3,
        "window_seconds": 10.0,
        "recovery_timeout": 5.0,
    }
    options.update(kwargs)
    return CircuitBreaker("dep", clock=clock, **options)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


# -- the spec --------------------------------------------------------------------------------


async def test_spec_6_3_runs_as_written() -> None:
    published: list[Any] = []

    class Bus:
        async def publish(self, message: Any) -> None:
            published.append(message)

    message_bus = Bus()

    circuit = CircuitBreaker(name="message_delivery")

    @circuit.protected
    async def send_message_with_protection(message):  # type: ignore[no-untyped-def]
        await message_bus.publish(message)

    await send_message_with_protection("hello")
    assert published == ["hello"]
    assert state(circuit) is CircuitState.CLOSED
    assert circuit.stats.successes == 1


# -- closed -> open --------------------------------------------------------------------------


async def test_opens_after_threshold_failures_within_window(clock: ManualClock) -> None:
    breaker = make(clock)
    await fail_n(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    await fail_n(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


async def test_failures_outside_the_window_do_not_count(clock: ManualClock) -> None:
    breaker = make(clock)
    await fail_n(breaker, 2)
    clock.advance(10.0)  # those two are now exactly one window old: out
    await fail_n(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.stats.failures_in_window == 2
    clock.advance(9.0)  # still inside the window of the last two
    await fail_n(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


async def test_successes_do_not_hide_failures_in_the_window(clock: ManualClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        assert await breaker.call(ok) == 1
        await fail_n(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


# -- open ------------------------------------------------------------------------------------


async def test_open_refuses_with_retry_after(clock: ManualClock) -> None:
    breaker = make(clock)
    await fail_n(breaker, 3)
    called: list[int] = []

    async def track() -> None:
        called.append(1)

    clock.advance(2.0)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(track)
    assert called == []
    assert info.value.name == "dep"
    assert info.value.retry_after == pytest.approx(3.0)
    assert breaker.retry_after == pytest.approx(3.0)
    assert "retry in 3.000s" in str(info.value)
    with pytest.raises(CircuitOpenError):
        breaker.call_sync(lambda: None)
    assert breaker.stats.rejections == 2


async def test_half_open_after_recovery_timeout(clock: ManualClock) -> None:
    changes: list[tuple[str, CircuitState, CircuitState]] = []
    breaker = make(clock, on_state_change=lambda *c: changes.append(c))
    await fail_n(breaker, 3)
    clock.advance(4.999)
    assert state(breaker) is CircuitState.OPEN
    clock.advance(0.001)
    assert state(breaker) is CircuitState.HALF_OPEN  # reading applies the lazy transition
    assert breaker.retry_after is None
    assert changes == [
        ("dep", CircuitState.CLOSED, CircuitState.OPEN),
        ("dep", CircuitState.OPEN, CircuitState.HALF_OPEN),
    ]


async def test_success_in_half_open_closes(clock: ManualClock) -> None:
    breaker = make(clock)
    await fail_n(breaker, 3)
    clock.advance(5.0)
    assert await breaker.call(ok, 7) == 7
    assert state(breaker) is CircuitState.CLOSED
    # the old failures are forgotten: it takes a full threshold again
    await fail_n(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED


async def test_success_threshold_needs_several_trials(clock: ManualClock) -> None:
    breaker = make(clock, success_threshold=3)
    await fail_n(breaker, 3)
    clock.advance(5.0)
    for _ in range(2):
        await breaker.call(ok)
        assert state(breaker) is CircuitState.HALF_OPEN
    await breaker.call(ok)
    assert state(breaker) is CircuitState.CLOSED


async def test_failure_in_half_open_reopens_and_restarts_timer(clock: ManualClock) -> None:
    breaker = make(clock)
    await fail_n(breaker, 3)
    clock.advance(6.0)
    await fail_n(breaker, 1)
    assert state(breaker) is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(5.0)  # timer restarted at the failure
    clock.advance(4.0)
    assert state(breaker) is CircuitState.OPEN
    clock.advance(1.0)
    assert state(breaker) is CircuitState.HALF_OPEN


async def test_concurrent_callers_in_half_open(clock: ManualClock) -> None:
    breaker = make(clock, half_open_max_calls=2)
    await fail_n(breaker, 3)
    clock.advance(5.0)
    release = asyncio.Event()
    running = 0
    max_running = 0

    async def trial() -> str:
        nonlocal running, max_running
        running += 1
        max_running = max(max_running, running)
        await release.wait()
        running -= 1
        return "ok"

    tasks = [asyncio.create_task(breaker.call(trial)) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert running == 2
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results.count("ok") == 2
    refused = [r for r in results if isinstance(r, CircuitOpenError)]
    assert len(refused) == 3
    assert max_running == 2
    assert state(breaker) is CircuitState.CLOSED
    stats = breaker.stats
    assert stats.rejections == 3
    assert stats.successes == 2


async def test_default_half_open_allows_exactly_one_trial(clock: ManualClock) -> None:
    breaker = make(clock)
    await fail_n(breaker, 3)
    clock.advance(5.0)
    gate = asyncio.Event()

    async def blocked() -> int:
        await gate.wait()
        return 1

    first = asyncio.create_task(breaker.call(blocked))
    await asyncio.sleep(0)
    others = [asyncio.create_task(breaker.call(ok)) for _ in range(4)]
    results = await asyncio.gather(*others, return_exceptions=True)
    assert all(isinstance(r, CircuitOpenError) for r in results)
    gate.set()
    assert await first == 1
    assert state(breaker) is CircuitState.CLOSED


async def test_a_call_from_an_earlier_state_period_does_not_change_state(
    clock: ManualClock,
) -> None:
    breaker = make(clock)
    gate = asyncio.Event()

    async def slow_failure() -> None:
        await gate.wait()
        raise Boom("late")

    slow = asyncio.create_task(breaker.call(slow_failure))  # admitted while closed
    await asyncio.sleep(0)
    await fail_n(breaker, 3)
    clock.advance(5.0)
    await breaker.call(ok)  # trial closes it again
    assert state(breaker) is CircuitState.CLOSED
    gate.set()
    with pytest.raises(Boom):
        await slow
    stats = breaker.stats
    assert stats.failures == 4  # counted in the lifetime stats ...
    assert stats.failures_in_window == 0  # ... but not in the new closed period's window
    await fail_n(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED


# -- what counts -----------------------------------------------------------------------------


async def test_excluded_and_unexpected_exceptions_do_not_count(clock: ManualClock) -> None:
    breaker = make(
        clock,
        failure_threshold=1,
        expected_exceptions=(Boom, NotFound),
        excluded_exceptions=(NotFound,),
    )

    async def not_found() -> None:
        raise NotFound("x")

    async def value_error() -> None:
        raise ValueError("bad input")

    for _ in range(3):
        with pytest.raises(NotFound):
            await breaker.call(not_found)
        with pytest.raises(ValueError):
            await breaker.call(value_error)
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.stats.failures == 0
    assert breaker.stats.ignored_errors == 6
    await fail_n(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


async def test_ignored_exception_frees_the_half_open_slot(clock: ManualClock) -> None:
    breaker = make(clock, excluded_exceptions=NotFound)
    await fail_n(breaker, 3)
    clock.advance(5.0)

    def not_found() -> None:
        raise NotFound("x")

    with pytest.raises(NotFound):
        breaker.call_sync(not_found)
    assert state(breaker) is CircuitState.HALF_OPEN
    assert await breaker.call(ok) == 1  # the slot was released
    assert state(breaker) is CircuitState.CLOSED


async def cancel_a_hanging_call(breaker: CircuitBreaker) -> None:
    """Start a call that never ends, cancel it, and see the cancellation reach the caller."""

    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(breaker.call(hang))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_error_never_counts(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1, expected_exceptions=(BaseException,))
    for _ in range(3):
        await cancel_a_hanging_call(breaker)
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.stats.failures == 0

    # a cancelled trial frees its slot in half-open too
    await fail_n(breaker, 1)
    clock.advance(5.0)
    await cancel_a_hanging_call(breaker)
    assert state(breaker) is CircuitState.HALF_OPEN
    await breaker.call(ok)
    assert state(breaker) is CircuitState.CLOSED


# -- decorators and context managers ---------------------------------------------------------


async def test_async_decorator(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=2)

    @breaker.protected
    async def fetch(x: int, *, fail: bool = False) -> int:
        """Fetch something."""
        if fail:
            raise Boom("x")
        return x * 2

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch something."
    assert asyncio.iscoroutinefunction(fetch)
    assert await fetch(4) == 8
    for _ in range(2):
        with pytest.raises(Boom):
            await fetch(1, fail=True)
    with pytest.raises(CircuitOpenError):
        await fetch(4)


def test_sync_decorator(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=2)

    @breaker.protected
    def compute(x: int, fail: bool = False) -> int:
        """Compute something."""
        if fail:
            raise Boom("x")
        return x + 1

    assert compute.__name__ == "compute"
    assert compute.__doc__ == "Compute something."
    assert compute.__wrapped__ is not None  # type: ignore[attr-defined]
    assert compute(1) == 2
    for _ in range(2):
        with pytest.raises(Boom):
            compute(1, True)
    with pytest.raises(CircuitOpenError):
        compute(1)
    clock.advance(5.0)
    assert compute(2) == 3
    assert state(breaker) is CircuitState.CLOSED


async def test_async_with(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=2)
    async with breaker:
        pass
    for _ in range(2):
        with pytest.raises(Boom):
            async with breaker:
                raise Boom("inside")
    with pytest.raises(CircuitOpenError):
        async with breaker:
            raise AssertionError("must not run")
    stats = breaker.stats
    assert (stats.successes, stats.failures, stats.rejections) == (1, 2, 1)


async def test_async_with_from_concurrent_tasks_in_half_open(clock: ManualClock) -> None:
    breaker = make(clock, half_open_max_calls=3, success_threshold=3)
    await fail_n(breaker, 3)
    clock.advance(5.0)
    gate = asyncio.Event()
    entered = 0

    async def worker(fail_it: bool) -> None:
        nonlocal entered
        async with breaker:
            entered += 1
            await gate.wait()
            if fail_it:
                raise Boom("trial")

    tasks = [asyncio.create_task(worker(i == 1)) for i in range(3)]
    await asyncio.sleep(0)
    assert entered == 3
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == 1
    # first trial succeeded, second failed -> reopened; the third's success is stale
    assert state(breaker) is CircuitState.OPEN


def test_call_sync_from_threads(clock: ManualClock) -> None:
    breaker = make(clock, failure_threshold=1000)
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        for j in range(200):
            if (i + j) % 2:
                breaker.call_sync(lambda: None)
            else:
                with pytest.raises(Boom):
                    breaker.call_sync(_raise_boom)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = breaker.stats
    assert stats.calls == 1600
    assert stats.successes == 800 and stats.failures == 800
    assert stats.failures_in_window == 800


def _raise_boom() -> None:
    raise Boom("x")


# -- manual control and stats ----------------------------------------------------------------


async def test_reset_and_force_open(clock: ManualClock) -> None:
    changes: list[tuple[CircuitState, CircuitState]] = []
    breaker = make(clock, on_state_change=lambda _n, old, new: changes.append((old, new)))
    breaker.force_open()
    assert state(breaker) is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    breaker.reset()
    assert state(breaker) is CircuitState.CLOSED
    assert await breaker.call(ok) == 1
    await fail_n(breaker, 2)
    breaker.reset()  # forgets the window
    await fail_n(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    assert changes == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]


async def test_callback_errors_do_not_break_calls(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_callback(*_: object) -> None:
        raise RuntimeError("callback bug")

    breaker = make(clock, failure_threshold=1, on_state_change=bad_callback)
    await fail_n(breaker, 1)
    assert state(breaker) is CircuitState.OPEN
    assert "callback" in caplog.text


async def test_stats_numbers(clock: ManualClock) -> None:
    breaker = make(clock)
    assert breaker.stats == CircuitBreakerStats()
    await breaker.call(ok)
    clock.advance(1.0)
    await fail_n(breaker, 1)
    clock.advance(1.0)
    await breaker.call(ok)
    await breaker.call(ok)
    stats = breaker.stats
    assert stats.calls == 4
    assert stats.successes == 3
    assert stats.failures == 1
    assert stats.consecutive_successes == 2
    assert stats.consecutive_failures == 0
    assert stats.last_failure_at == 1.0
    assert stats.last_success_at == 2.0
    assert stats.state_changes == 0

    await fail_n(breaker, 2)  # opens at t=2
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    clock.advance(5.0)
    await breaker.call(ok)  # half-open trial closes
    stats = breaker.stats
    assert stats.state is CircuitState.CLOSED
    assert stats.calls == 7
    assert stats.successes == 4
    assert stats.failures == 3
    assert stats.rejections == 1
    assert stats.state_changes == 3  # closed->open->half_open->closed
    assert stats.consecutive_failures == 0
    assert stats.opened_at == 2.0
    assert stats.last_state_change_at == 7.0
    # a snapshot does not change afterwards
    await fail_n(breaker, 1)
    assert stats.failures == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": True},
        {"window_seconds": 0},
        {"recovery_timeout": -1},
        {"half_open_max_calls": 0},
        {"success_threshold": 0},
        {"expected_exceptions": (int,)},
        {"excluded_exceptions": "x"},
        {"on_state_change": 3},
    ],
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("x", **kwargs)


def test_bad_name() -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker("")
