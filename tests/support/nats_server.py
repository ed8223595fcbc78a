"""Process control for ``nats-server`` in tests and benchmarks.

A :class:`NatsServer` runs one real ``nats-server`` with JetStream on 127.0.0.1 on free ports,
with its store in a directory of its own; :func:`running` keeps one running for a ``with``
block. :func:`start_cluster` starts several routed into one JetStream cluster and waits until
it has a meta leader. Servers are stopped by PID (never by name); every started process is
also registered with :mod:`atexit` and, on Linux, asks the kernel to kill it when the test
process dies, so no server outlives the run.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .ports import free_port

__all__ = ["NatsServer", "nats_server_binary", "running", "start_cluster"]

_LIVE: dict[int, NatsServer] = {}


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable (``PATH``, then ``/usr/sbin``, ``/usr/local/bin``).

    Raises ``RuntimeError`` when there is none: NATS tests fail rather than skip.
    """
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in (
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "/usr/bin/nats-server",
    ):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "nats-server not found on PATH or in /usr/sbin: install it (apt install nats-server, "
        "or a release from github.com/nats-io/nats-server) to run the NATS tests"
    )


def _parent_death_kill() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL this child when the parent (the test process) dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class NatsServer:
    """One ``nats-server`` process with JetStream, on free ports of 127.0.0.1.

    ``routes`` (cluster URLs of the other members) and ``cluster_name`` make it a cluster
    member; ``cluster_port`` is then the port of its own cluster listener.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        name: str = "n0",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        cluster_name: str | None = None,
    ) -> None:
        self.name = name
        self.base_dir = Path(base_dir)
        self.store_dir = self.base_dir / f"{name}-store"
        self.log_path = self.base_dir / f"{name}.log"
        self.port = port or free_port()
        self.http_port = free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.cluster_name = cluster_name
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def cluster_url(self) -> str | None:
        """Route URL of this member, or None for a standalone server."""
        return f"nats://127.0.0.1:{self.cluster_port}" if self.cluster_port else None

    @property
    def pid(self) -> int | None:
        """PID of the running process, None when not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.pid is not None

    def args(self) -> list[str]:
        """The command line."""
        cmd = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.http_port),
            "-js",
            "-sd",
            str(self.store_dir),
            "--server_name",
            self.name,
        ]
        if self.cluster_port:
            cmd += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            cmd += ["--cluster_name", self.cluster_name or "aos-test"]
            if self.routes:
                cmd += ["--routes", ",".join(self.routes)]
        return cmd

    # -- lifecycle -----------------------------------------------------------------------
    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running:
            raise RuntimeError(f"nats-server {self.name} is already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_parent_death_kill,
            )
        _LIVE[id(self)] = self

    def start(self, timeout: float = 20.0) -> NatsServer:
        """Start and wait until the client port accepts and JetStream is enabled."""
        self.launch()
        self.wait_ready(timeout, need_meta_leader=False)
        return self

    def wait_ready(self, timeout: float = 20.0, *, need_meta_leader: bool = True) -> None:
        """Wait until the port accepts, JetStream is on and (in a cluster) a meta leader exists."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited; log:\n{self.log_tail()}")
            if self._port_open() and self._jetstream_ready(need_meta_leader):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nats-server {self.name} not ready after {timeout}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID and wait; SIGKILL if it does not exit in ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None
        _LIVE.pop(id(self), None)

    def kill(self) -> None:
        """SIGKILL by PID (a crash), and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(15)
        self._proc = None
        _LIVE.pop(id(self), None)

    def restart(self, timeout: float = 20.0, *, need_meta_leader: bool = False) -> NatsServer:
        """Stop (if running) and start again on the same ports with the same store."""
        self.stop()
        self.launch()
        self.wait_ready(timeout, need_meta_leader=need_meta_leader)
        return self

    # -- monitoring ----------------------------------------------------------------------
    def monitor(self, path: str, timeout: float = 2.0) -> Any:
        """GET a monitoring endpoint (``/jsz``, ``/varz``...) and return the decoded JSON."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())

    def meta_leader(self) -> str | None:
        """Name of the JetStream meta leader as this server sees it, if any."""
        try:
            jsz = self.monitor("/jsz")
        except (OSError, ValueError):
            return None
        meta = jsz.get("meta_cluster") or {}
        leader = meta.get("leader")
        return str(leader) if leader else None

    def stream_leader(self, stream: str) -> str | None:
        """Name of the server that leads ``stream`` (from this server's ``/jsz``)."""
        try:
            jsz = self.monitor("/jsz?streams=true")
        except (OSError, ValueError):
            return None
        for account in jsz.get("account_details") or []:
            for info in account.get("stream_detail") or []:
                if info.get("name") == stream:
                    leader = (info.get("cluster") or {}).get("leader")
                    return str(leader) if leader else None
        return None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _jetstream_ready(self, need_meta_leader: bool) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthz", timeout=1.0
            ) as resp:
                if resp.status != 200:
                    return False
            jsz = self.monitor("/jsz")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        if jsz.get("disabled"):
            return False
        if need_meta_leader and self.cluster_port:
            return bool((jsz.get("meta_cluster") or {}).get("leader"))
        return True

    def __repr__(self) -> str:
        return f"NatsServer({self.name!r}, url={self.url!r}, pid={self.pid})"


@contextmanager
def running(server: NatsServer, *, kill: bool = False) -> Iterator[NatsServer]:
    """``server`` started for the ``with`` block; afterwards (also when it failed to start)
    stopped by SIGTERM, or by SIGKILL with ``kill=True``."""
    try:
        server.start()
        yield server
    finally:
        if kill:
            server.kill()
        else:
            server.stop()


def start_cluster(
    n: int,
    base_dir: str | os.PathLike[str],
    *,
    cluster_name: str = "aos-test",
    timeout: float = 30.0,
) -> list[NatsServer]:
    """Start ``n`` routed JetStream servers and wait until every one sees a meta leader."""
    cluster_ports = [free_port() for _ in range(n)]
    routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
    servers = [
        NatsServer(
            base_dir,
            name=f"n{i}",
            cluster_port=cluster_ports[i],
            routes=[r for j, r in enumerate(routes) if j != i],
            cluster_name=cluster_name,
        )
        for i in range(n)
    ]
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout, need_meta_leader=True)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def _stop_all() -> None:
    for server in list(_LIVE.values()):
        try:
            server.kill()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_stop_all)
