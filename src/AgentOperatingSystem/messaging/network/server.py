"""The node's HTTP server: an aiohttp ``AppRunner`` bound to ``host:port`` (port 0: a free
one) behind a :class:`~.connections.ConnectionGuard` (``NetworkConfig.limits``), the URL it
can be reached at, and its shutdown."""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web

from ...config.network import NetworkConfig
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import NetworkError
from .connections import ConnectionGuard
from .wire import log

__all__ = ["HttpServer"]


def backlog(max_connections: int) -> int:
    """The listen backlog: a quarter of the connection limit, in 64..1024. asyncio accepts
    up to this many sockets in one turn of the loop, before the guard closes the extra
    ones, so it is also the most descriptors a burst can take beyond the limit."""
    return max(64, min(1024, max_connections // 4))


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections go through ``factory`` (the guard's)."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        backlog: int,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._factory = factory

    @property
    def name(self) -> str:
        """``http://host:port`` as configured."""
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen (``reuse_address``) and serve through the guard."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class HttpServer:
    """Serves ``app`` on the configured host and port."""

    def __init__(
        self,
        app: web.Application,
        config: NetworkConfig,
        node_id: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app = app
        self.config = config
        self.node_id = node_id
        self.runner: web.AppRunner | None = None
        #: the connections' limits and deadlines (its middleware goes first)
        self.guard = ConnectionGuard(config.limits, clock)
        app.middlewares.insert(0, self.guard.middleware)

    async def start(self) -> str:
        """Bind and serve; the URL the socket listens on (:class:`NetworkError` when the
        port cannot be bound)."""
        cfg = self.config.server
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=cfg.shutdown_timeout,
            keepalive_timeout=self.config.limits.keepalive_timeout,
        )
        await runner.setup()
        assert runner.server is not None
        site = _GuardedSite(
            runner,
            cfg.host,
            cfg.port,
            self.guard.factory(runner.server),
            backlog(self.guard.max_connections),
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NetworkError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
        self.runner = runner
        self.guard.start(name=f"aos-net-guard:{self.node_id}")
        log.info(
            "node %s takes at most %d connections (%d per client address)",
            self.node_id,
            self.guard.max_connections,
            self.config.limits.max_connections_per_client,
        )
        return self._listening_url(int(runner.addresses[0][1]))

    def _listening_url(self, port: int) -> str:
        """``http://host:port`` of the socket (all interfaces: the loopback address)."""
        host = self.config.server.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
            if self.config.server.public_url is None:
                log.warning(
                    "node %s listens on all interfaces; set NetworkConfig.public_url to the"
                    " address other nodes should use",
                    self.node_id,
                )
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop serving (requests in progress get ``shutdown_timeout``)."""
        runner, self.runner = self.runner, None
        await self.guard.stop()
        if runner is not None:
            await runner.cleanup()
