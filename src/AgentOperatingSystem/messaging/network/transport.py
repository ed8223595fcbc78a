"""One request to another node, with retries and the node's circuit: :class:`Transport`.

The transport owns one aiohttp ``ClientSession`` whose connector keeps up to
``max_connections`` keep-alive connections, one
:class:`~AgentOperatingSystem.reliability.circuit_breaker.CircuitBreaker` per remote node,
and retries with exponential backoff for transient failures (connection errors, timeouts,
429 and 5xx). A node that does not answer after the retries, or whose circuit is open,
raises :class:`AgentUnreachableError` (at once, without a request, while the circuit is
open). The :class:`~.pool.ConnectionPool` sends through it, and so do its batching lanes.
"""

from __future__ import annotations

import math
import random

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from yarl import URL

from ...config.network import NetworkConfig
from ...reliability.circuit_breaker import CircuitBreaker
from ..clock import Clock
from ..errors import AgentUnreachableError, CircuitOpenError, NetworkError, error_text
from .auth import HEADER_NOT_BEFORE, signature_headers
from .wire import CLOUDEVENTS_JSON, HEADER_NODE, normalize_address, remote_error

__all__ = ["Result", "Transport"]

#: ``(status, answer body, attempts)`` of one request.
Result = tuple[int, bytes, int]


class _Transient(Exception):
    """A failure worth retrying (and counted by the node's circuit breaker)."""

    def __init__(self, text: str, status: int | None = None) -> None:
        super().__init__(text)
        self.status = status


def _origin(url: URL) -> str:
    return str(url.origin())


class _CountingConnector(aiohttp.TCPConnector):
    """A TCP connector that counts the connections it opens (keep-alive reuse shows as a
    count that stays low); cheaper than a per-request trace hook."""

    opened = 0

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        proto = await super()._create_connection(req, traces, timeout)
        self.opened += 1
        return proto


class Transport:
    """Requests to other nodes from the node ``node_id``: keep-alive connections, a circuit
    per node, retries (``config.pool``, ``config.circuit``, ``config.retry``)."""

    def __init__(self, config: NetworkConfig, clock: Clock, node_id: str) -> None:
        self.config = config
        self.clock = clock
        self.node_id = node_id
        self._secret = config.secret
        self._session: aiohttp.ClientSession | None = None
        self._connector: _CountingConnector | None = None
        self._breakers: dict[str, CircuitBreaker] = {}
        self._closed = False
        self._rng = random.Random()
        self._last_stamp = 0.0
        #: per node: the earliest signing time it accepts (its ``X-AOS-Not-Before``)
        self._not_before: dict[str, float] = {}
        self._opened_before = 0
        #: Requests sent so far, retries included.
        self.requests_sent = 0
        #: Requests signed again from a node's ``X-AOS-Not-Before`` (within one attempt).
        self.resigned = 0

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far (a measure of keep-alive reuse)."""
        conn = self._connector
        return self._opened_before + (conn.opened if conn is not None else 0)

    # -- lifecycle -----------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session (created on first use); :class:`NetworkError` once closed."""
        if self._closed:
            raise NetworkError("the connection pool is closed")
        session = self._session
        if session is None:
            cfg = self.config.pool
            connector = _CountingConnector(
                limit=cfg.max_connections,
                limit_per_host=cfg.max_connections_per_host,
                keepalive_timeout=cfg.idle_timeout,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=cfg.request_timeout, sock_connect=cfg.connect_timeout
                ),
            )
            self._connector = connector
            self._session = session
        return session

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if self._connector is not None:
            self._opened_before += self._connector.opened
            self._connector = None
        if session is not None:
            await session.close()

    # -- circuits ------------------------------------------------------------------------

    def circuit(self, address: str) -> CircuitBreaker:
        """The circuit breaker of the node at ``address`` (created on first use)."""
        breaker = self._breakers.get(address)
        if breaker is not None:
            return breaker
        origin = _origin(URL(normalize_address(address)))
        breaker = self._breakers.get(origin)
        if breaker is None:
            cfg = self.config.circuit
            breaker = CircuitBreaker(
                f"aos-node:{origin}",
                failure_threshold=cfg.failure_threshold,
                window_seconds=cfg.window_seconds,
                recovery_timeout=cfg.recovery_timeout,
                expected_exceptions=(_Transient,),
                clock=self.clock,
            )
            self._breakers[origin] = breaker
        return breaker

    # -- requests ------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        retry = self.config.retry
        base = retry.delay(attempt)
        if retry.jitter and base > 0:
            base *= 1.0 + self._rng.uniform(-retry.jitter, retry.jitter)
        return max(0.0, base)

    def _stamp(self, origin: str) -> float:
        """The signing time of a request to ``origin``: the clock, moved on by a microsecond
        when it has not moved since the last request, so each attempt has a signature of its
        own (the receiver refuses a signature it has seen: :mod:`.replay`), and never before
        the time the node said it accepts from."""
        now = max(self.clock.now(), self._not_before.get(origin, 0.0))
        if now <= self._last_stamp:
            now = self._last_stamp + 1e-6
        self._last_stamp = now
        return now

    def _learn_not_before(self, origin: str, value: str | None) -> bool:
        """Take a node's ``X-AOS-Not-Before`` (at most ``signature_max_age`` ahead of this
        clock); True when it moves this side's signing time for that node."""
        try:
            floor = float(value) if value else math.nan
        except ValueError:
            return False
        now = self.clock.now()
        if not now < floor <= now + self.config.auth.signature_max_age:
            return False
        self._not_before[origin] = floor
        return True

    async def _once(
        self,
        method: str,
        url: URL,
        body: bytes,
        signed: bool,
        content_type: str = CLOUDEVENTS_JSON,
    ) -> tuple[int, bytes]:
        origin = _origin(url)
        self.requests_sent += 1
        status, payload, not_before = await self._request(method, url, body, signed, content_type)
        if status == 503 and signed and self._learn_not_before(origin, not_before):
            # the node started after this was signed and keeps its replay records in
            # memory: signed again from its start time, this is the same attempt
            self.resigned += 1
            status, payload, _ = await self._request(method, url, body, signed, content_type)
        if status >= 500 or status == 429:
            code, text = remote_error(payload)
            raise _Transient(f"HTTP {status} {code}: {text}", status)
        return status, payload

    async def _request(
        self, method: str, url: URL, body: bytes, signed: bool, content_type: str
    ) -> tuple[int, bytes, str | None]:
        """One HTTP request: ``(status, body, X-AOS-Not-Before)``."""
        session = self.session()
        headers = {HEADER_NODE: self.node_id}
        if body:
            headers["Content-Type"] = content_type
        if signed and self._secret is not None:
            stamp = self._stamp(_origin(url))
            headers.update(signature_headers(self._secret, method, url.raw_path_qs, body, stamp))
        try:
            async with session.request(
                method, url, data=body if body else None, headers=headers
            ) as resp:
                return resp.status, await resp.read(), resp.headers.get(HEADER_NOT_BEFORE)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Transient(error_text(exc)) from exc

    async def exchange(
        self,
        method: str,
        url: URL,
        body: bytes = b"",
        *,
        signed: bool = True,
        what: str = "request",
        content_type: str = CLOUDEVENTS_JSON,
    ) -> Result:
        """One request with retries and the node's circuit breaker: ``(status, body,
        attempts)`` for any answer below 500 (except 429). Raises
        :class:`AgentUnreachableError` when the retries are exhausted or the circuit is
        open (its ``__cause__`` is then the :class:`CircuitOpenError`)."""
        origin = _origin(url)
        breaker = self.circuit(origin)
        attempts = self.config.retry.max_attempts
        last: _Transient | None = None
        for attempt in range(1, attempts + 1):
            try:
                status, payload = await breaker.call(
                    self._once, method, url, body, signed, content_type
                )
            except CircuitOpenError as exc:
                wait = f"; retry in {exc.retry_after:.1f}s" if exc.retry_after is not None else ""
                raise AgentUnreachableError(
                    f"{what}: node {origin} is unavailable (its circuit is open after repeated"
                    f" failures{', last: ' + str(last) if last else ''}); not tried{wait}"
                ) from exc
            except _Transient as exc:
                last = exc
                if attempt < attempts:
                    await self.clock.sleep(self._delay(attempt))
                continue
            return status, payload, attempt
        raise AgentUnreachableError(
            f"{what}: node {origin} did not answer after {attempts} attempt(s): {last}"
        ) from last
