"""Engine URLs (config/urls.py) and what MessageBusConfig and StorageManager make of them.

Every NATS scheme (``nats``, ``tls``, ``ws``, ``wss``) names the same engine. A bus on any of
them must keep its key ring and access control in that same NATS (``resolved_storage_url``):
falling back to ``memory://`` for the TLS and WebSocket schemes once silently stopped them
being shared between processes. A real nats-server with a WebSocket listener checks ``ws://``
end to end; ``tls://`` and ``wss://`` are checked without connecting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.urls import (
    NATS_SCHEMES,
    NATS_URL_OPTIONS,
    is_nats_url,
    parse_nats_url,
)
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.errors import ConfigurationError, PermissionDeniedError
from AgentOperatingSystem.messaging.types import MessageType
from AgentOperatingSystem.storage.manager import StorageManager, registered_schemes
from AgentOperatingSystem.storage.nats import NatsStorageBackend
from tests.support.engines import drop_nats_namespace, namespace_streams
from tests.support.messages import task
from tests.support.nats_fixtures import new_nats_namespace
from tests.support.nats_server import NatsServer, running
from tests.support.ports import free_port

SECURE_AND_WEB = ("tls", "ws", "wss")

# -- is_nats_url ---------------------------------------------------------------------------


def test_the_schemes_and_options() -> None:
    assert NATS_SCHEMES == ("nats", "tls", "ws", "wss")
    assert NATS_URL_OPTIONS == frozenset({"namespace", "replicas"})


@pytest.mark.parametrize(
    "url",
    [
        "nats://h:4222",
        "tls://h:4222",
        "ws://h:8080",
        "wss://h:443",
        "TLS://H:4222",
        "  wss://h:443/ ",
        "tls://a:4222,tls://b:4222?namespace=prod",
    ],
)
def test_is_nats_url_for_every_nats_scheme(url: str) -> None:
    assert is_nats_url(url) is True


@pytest.mark.parametrize(
    "url",
    ["memory://", "sqlite:///x.db", "h:4222", "", "tls:h:4222", "natss://h", "http://h:80"],
)
def test_is_nats_url_for_anything_else(url: str) -> None:
    assert is_nats_url(url) is False


# -- parse_nats_url ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", NATS_SCHEMES)
def test_parse_keeps_the_scheme(scheme: str) -> None:
    assert parse_nats_url(f"{scheme}://h:4222") == ([f"{scheme}://h:4222"], {})
    assert parse_nats_url(f"{scheme}://h:4222/") == ([f"{scheme}://h:4222"], {})


def test_parse_a_list_of_mixed_servers_with_options() -> None:
    servers, options = parse_nats_url(
        " tls://a:4222, wss://b:443/ ,ws://c:8080,d:4222?namespace=prod&replicas=3"
    )
    assert servers == ["tls://a:4222", "wss://b:443", "ws://c:8080", "nats://d:4222"]
    assert options == {"namespace": "prod", "replicas": "3"}


def test_parse_skips_empty_entries_and_keeps_blank_options() -> None:
    assert parse_nats_url("ws://a:1,,ws://b:2,?namespace=") == (
        ["ws://a:1", "ws://b:2"],
        {"namespace": ""},
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("wss://h:443?tls=1", "unknown NATS URL options ['tls']"),
        ("tls://a:1?namespace=x&user=me&pass=p", "unknown NATS URL options ['pass', 'user']"),
        ("http://h:80", "not a NATS server URL: 'http://h:80'"),
        ("ws://a:1,https://b:2", "not a NATS server URL: 'https://b:2'"),
        ("tls://", "not a NATS server URL: 'tls://'"),
        ("wss:///", "not a NATS server URL: 'wss:///'"),
        (" , ", "no NATS server in URL"),
        ("?namespace=x", "no NATS server in URL"),
    ],
)
def test_parse_refuses(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_nats_url(url)
    assert says in str(info.value)


# -- MessageBusConfig ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SECURE_AND_WEB)
def test_a_bus_on_tls_or_websocket_keeps_its_store_in_that_nats(scheme: str) -> None:
    url = f"{scheme}://h:4222"
    config = MessageBusConfig(broker_url=url)
    assert config.resolved_broker_url() == url
    assert config.resolved_storage_url() == url
    with_options = f"{scheme}://a:4222,{scheme}://b:4222?namespace=prod&replicas=3"
    assert MessageBusConfig(broker_url=with_options).resolved_storage_url() == with_options


def test_storage_url_of_the_other_engines(tmp_path: Path) -> None:
    assert MessageBusConfig(broker_url="memory://").resolved_storage_url() == "memory://"
    assert MessageBusConfig(broker_url="nats://h:4222").resolved_storage_url() == "nats://h:4222"
    sqlite = MessageBusConfig(broker_url=f"sqlite:///{tmp_path}/m.db?synchronous=full")
    assert sqlite.resolved_storage_url() == f"sqlite:///{tmp_path}/m-store.db"
    given = MessageBusConfig(broker_url="wss://h:443", storage_url="sqlite:///keys.db")
    assert given.resolved_storage_url() == "sqlite:///keys.db"


# -- StorageManager ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", NATS_SCHEMES)
async def test_storage_manager_takes_every_nats_scheme_without_connecting(scheme: str) -> None:
    assert scheme in registered_schemes()
    # port 9 (discard) on loopback: nothing listens there, and nothing may try to
    manager = StorageManager(f"{scheme}://127.0.0.1:9?namespace=n1")
    assert isinstance(manager.backend, NatsStorageBackend)
    assert manager.is_open is False
    await manager.close()
    assert manager.is_open is False


# -- ws:// end to end ----------------------------------------------------------------------


class WebSocketNatsServer(NatsServer):
    """A JetStream nats-server that also listens for WebSocket clients (no TLS)."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir, name="ws")
        self.ws_port = free_port()

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        return f"ws://127.0.0.1:{self.ws_port}"

    def args(self) -> list[str]:
        """The command line: the plain one plus a config file with the WebSocket listener."""
        config = self.base_dir / "ws.conf"
        config.write_text(
            f"websocket {{\n  host: 127.0.0.1\n  port: {self.ws_port}\n  no_tls: true\n}}\n"
        )
        return [*super().args(), "-c", str(config)]


@pytest.fixture
def ws_server(tmp_path: Path) -> Iterator[WebSocketNatsServer]:
    server = WebSocketNatsServer(tmp_path / "nats-ws")
    with running(server):
        yield server


@pytest.fixture
async def ws_namespace(ws_server: WebSocketNatsServer) -> AsyncIterator[str]:
    namespace = new_nats_namespace("ws")
    yield namespace
    await drop_nats_namespace(ws_server.url, namespace)


# nats-py's WebSocket transport passes aiohttp a float timeout, which aiohttp deprecates: a
# warning from the two libraries, on every ws:// connection, that the suite would make an error.
@pytest.mark.filterwarnings(
    "ignore:parameter 'timeout' of type 'float' is deprecated:DeprecationWarning"
)
@pytest.mark.nats
async def test_ws_bus_shares_access_control_through_nats(
    ws_server: WebSocketNatsServer, ws_namespace: str
) -> None:
    ws_url = f"{ws_server.ws_url}?namespace={ws_namespace}"
    nats_url = f"{ws_server.url}?namespace={ws_namespace}"
    config = {"poll_interval": 0.05}
    async with MessageBus(MessageBusConfig(broker_url=ws_url, **config)) as over_ws:
        # the engine works over WebSocket: a message from it reaches a bus on nats://
        sent = task("worker", 7)
        await over_ws.publish(sent)
        async with MessageBus(MessageBusConfig(broker_url=nats_url, **config)) as over_nats:
            (got,) = await over_nats.get_messages("worker")
            assert (got.message_id, got.content) == (sent.message_id, {"n": 7})
            await over_nats.acknowledge(got.message_id)

        # the ACL set through ws:// is stored in the namespace's NATS bucket ...
        await over_ws.set_permissions("orchestrator", can_publish=["event"])
        assert f"KV_{ws_namespace}_STORE" in await namespace_streams(ws_server.url, ws_namespace)
        async with StorageManager(nats_url) as store:
            assert [key for key, _ in await store.list("aos.acl")] == ["orchestrator"]

    # ... so a bus started later on the plain URL of that namespace enforces it
    async with MessageBus(MessageBusConfig(broker_url=nats_url, **config)) as later:
        with pytest.raises(PermissionDeniedError):
            await later.publish(task("worker", 8))
        assert await later.queue_depth("worker") == 0
        await later.publish(message_type=MessageType.EVENT, sender_id="orchestrator", content={})
