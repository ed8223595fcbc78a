"""The node's HTTP server: an aiohttp ``AppRunner`` bound to ``host:port`` (port 0: a free
one), the URL it can be reached at, and its shutdown."""

from __future__ import annotations

from aiohttp import web

from ...config.network import NetworkConfig
from ..errors import NetworkError
from .wire import log

__all__ = ["HttpServer"]


class HttpServer:
    """Serves ``app`` on the configured host and port."""

    def __init__(self, app: web.Application, config: NetworkConfig, node_id: str) -> None:
        self.app = app
        self.config = config
        self.node_id = node_id
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Bind and serve; the URL the socket listens on (:class:`NetworkError` when the
        port cannot be bound)."""
        cfg = self.config.server
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=cfg.shutdown_timeout,
            keepalive_timeout=self.config.pool.idle_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NetworkError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
        self.runner = runner
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
        if runner is not None:
            await runner.cleanup()
