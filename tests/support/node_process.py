"""Run a :class:`NetworkProtocol` node in a separate OS process (tests and benchmarks).

``NodeProcess(base_dir, secret=..., agents=[...])`` starts ``python node_process.py <spec>``:
the child opens its own bus (``bus_url``; a SQLite file survives a SIGKILL), shares the
registry through ``storage_url`` when given, registers and subscribes its agents, serves on
127.0.0.1 and writes ``<name>.ready.json`` with its URL. Agents behave by ``behaviour``:

* ``record`` -- append each received message as one JSON line to ``<name>-received.jsonl``
  (one ``write`` per line on an ``O_APPEND`` descriptor, so a SIGKILL never leaves half a line)
  and answer ``{"ok": true}``;
* ``echo`` -- record, then answer ``{"text": "echo: <text>"}``;
* ``silent`` -- record and never answer;
* ``bounce`` -- record, then publish the content on to the agent ``to`` (from the handler, so
  the hop count grows).

``remote_agents=[{"agent_id", "address"}]`` are registered on other nodes once the child
serves (its bus then reaches them, see ``network/relay.py``).

The child is stopped by PID (SIGTERM for a clean stop, SIGKILL for a crash), asks Linux to kill
it if the test process dies, and restarts on the same port, so peers keep its address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["NodeProcess"]


def _parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """SIGKILL this child when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass


class NodeProcess:
    """A node in a child process. ``start()`` returns its URL; ``kill()`` crashes it."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        secret: str,
        agents: list[dict[str, Any]],
        name: str = "node",
        bus_url: str | None = None,
        storage_url: str | None = None,
        port: int = 0,
        config: dict[str, Any] | None = None,
        bus_config: dict[str, Any] | None = None,
        remote_agents: list[dict[str, Any]] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.name = name
        self.port = port
        self.url: str | None = None
        self.record_path = self.base_dir / f"{name}-received.jsonl"
        self.log_path = self.base_dir / f"{name}.log"
        self.ready_path = self.base_dir / f"{name}.ready.json"
        self.spec: dict[str, Any] = {
            "name": name,
            "secret": secret,
            "agents": agents,
            "remote_agents": list(remote_agents or []),
            "bus_url": bus_url or f"sqlite:///{self.base_dir / f'{name}-bus.db'}",
            "storage_url": storage_url,
            "config": dict(config or {}),
            "bus_config": dict(bus_config or {}),
            "record_path": str(self.record_path),
            "ready_path": str(self.ready_path),
        }
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running child, None when not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self, timeout: float = 30.0) -> str:
        """Start the child (on the port of the previous run, if any); return its URL."""
        if self.pid is not None:
            raise RuntimeError(f"node {self.name} is already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.ready_path.unlink(missing_ok=True)
        spec = dict(self.spec, port=self.port)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, __file__, json.dumps(spec)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_parent_death_signal,
            )
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self._proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"node {self.name} not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)
        info = json.loads(self.ready_path.read_text())
        self.url = str(info["url"])
        self.port = int(info["port"])
        return self.url

    def kill(self) -> None:
        """SIGKILL by PID (a crash) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID and wait; SIGKILL when it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def received(self) -> list[dict[str, Any]]:
        """Every message the child's agents recorded, in order (across restarts)."""
        if not self.record_path.exists():
            return []
        out = []
        for line in self.record_path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def wait_received(self, ids: set[str], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until every id in ``ids`` was recorded; return the records."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if ids <= {r["message_id"] for r in got}:
                return got
            if time.monotonic() > deadline:
                missing = ids - {r["message_id"] for r in got}
                raise AssertionError(
                    f"{len(missing)} message(s) never arrived: {sorted(missing)[:5]}"
                )
            time.sleep(0.05)

    def wait_count(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` messages were recorded; return the records."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(got)} of {n} message(s) arrived")
            time.sleep(0.05)

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the child's output."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ the child


async def _child(spec: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    import asyncio

    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.config.network import NetworkConfig
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
    from AgentOperatingSystem.messaging.types import Message
    from AgentOperatingSystem.storage.manager import StorageManager

    fd = os.open(spec["record_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(agent_id: str, msg: Message) -> None:
        line = {
            "agent_id": agent_id,
            "message_id": msg.message_id,
            "sender_id": msg.sender_id,
            "message_type": msg.message_type.value,
            "content": msg.content,
        }
        os.write(fd, (json.dumps(line) + "\n").encode())

    def make_handler(agent_id: str, agent: dict[str, Any]) -> Any:
        behaviour = agent.get("behaviour", "record")

        async def handler(msg: Message) -> dict[str, Any] | None:
            record(agent_id, msg)
            if behaviour == "echo":
                return {"text": f"echo: {msg.content.get('text', '')}"}
            if behaviour == "silent":
                return None
            if behaviour == "bounce":
                await bus.publish(
                    Message(sender_id=agent_id, recipient_id=agent["to"], content=msg.content)
                )
                return None
            return {"ok": True}

        return handler

    bus = MessageBus(MessageBusConfig(broker_url=spec["bus_url"], **spec["bus_config"]))
    storage = StorageManager(spec["storage_url"]) if spec["storage_url"] else None
    config = NetworkConfig(
        host="127.0.0.1",
        port=spec["port"],
        auth_secret=spec["secret"],
        node_id=spec["name"],
        **spec["config"],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with bus:
        node = NetworkProtocol(config, bus, storage=storage)
        for agent in spec["agents"]:
            await node.register_agent(agent["agent_id"], None, agent.get("capabilities", []))
            await bus.subscribe(agent["agent_id"], None, make_handler(agent["agent_id"], agent))
        async with node:
            for remote in spec.get("remote_agents", []):
                await node.register_agent(remote["agent_id"], remote["address"])
            tmp = spec["ready_path"] + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"url": node.url, "port": int(node.url.rsplit(":", 1)[1])}, f)
            os.replace(tmp, spec["ready_path"])
            await stop.wait()
        if storage is not None:
            await storage.close()
    os.close(fd)


if __name__ == "__main__":  # pragma: no cover - the child process
    import asyncio

    asyncio.run(_child(json.loads(sys.argv[1])))
