"""SQLite engine across OS processes: restart durability, a killed consumer's lock expiring,
and several processes sharing one file without "database is locked" reaching anyone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.types import MessageType

pytestmark = pytest.mark.timeout(120)

PRELUDE = textwrap.dedent(
    """
    import asyncio, json, sys
    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.types import Message, MessageType, MessagePriority
    URL = sys.argv[1]
    """
)


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_messages_survive_a_restart_in_another_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    child = run_child(
        """
        async def main():
            async with MessageBus(MessageBusConfig(broker_url=URL)) as bus:
                for i in range(100):
                    prio = MessagePriority.HIGH if i % 10 == 0 else MessagePriority.NORMAL
                    await bus.publish(Message(message_type=MessageType.TASK, sender_id="o",
                                              recipient_id="ceo_agent", content={"i": i},
                                              priority=prio))
                await bus.subscribe("noop", [MessageType.EVENT], lambda m: None)
                await bus.publish(message_type=MessageType.EVENT, content={"event": "x"})
            print("published")
        asyncio.run(main())
        """,
        url,
    )
    assert child.returncode == 0, child.stderr
    assert "published" in child.stdout
    async with MessageBus(MessageBusConfig(broker_url=url)) as bus:
        assert await bus.queue_depth("ceo_agent") == 100
        got = await bus.get_messages("ceo_agent", limit=100)
        order = [m.content["i"] for m in got]
        assert order == [i for i in range(100) if i % 10 == 0] + [
            i for i in range(100) if i % 10 != 0
        ]
        for m in got:
            await bus.acknowledge(m.message_id)
        assert await bus.queue_depth("ceo_agent") == 0
        # the event binding (a durable subscription) survived too, with its queued event
        (event,) = await bus.get_messages("noop")
        assert event.content == {"event": "x"}


async def test_lock_held_by_a_killed_process_expires_and_the_message_is_redelivered(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with MessageBus(MessageBusConfig(broker_url=url)) as bus:
        await bus.publish(
            message_type=MessageType.TASK,
            sender_id="o",
            recipient_id="worker",
            content={"job": "important"},
        )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PRELUDE
            + textwrap.dedent(
                """
            async def main():
                async with MessageBus(MessageBusConfig(broker_url=URL, lock_seconds=30)) as bus:
                    async def handler(msg):
                        print("HANDLING", json.dumps(msg.content), flush=True)
                        await asyncio.sleep(3600)  # killed in here
                    await bus.subscribe("worker", [MessageType.TASK], handler)
                    await asyncio.sleep(3600)
            asyncio.run(main())
            """
            ),
            url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("HANDLING") and "important" in line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    clock = ManualClock(start=time.time())
    async with MessageBus(MessageBusConfig(broker_url=url, lock_seconds=30), clock=clock) as bus:
        assert await bus.get_messages("worker") == []  # the dead process still holds the lock
        assert await bus.queue_depth("worker") == 1
        clock.advance(31)
        (again,) = await bus.get_messages("worker")
        assert again.content == {"job": "important"}
        await bus.acknowledge(again.message_id)
        assert await bus.queue_depth("worker") == 0


def test_three_processes_share_one_file_without_lock_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    code = """
        import os
        N = int(sys.argv[2]); ME = sys.argv[3]
        async def main():
            seen = []
            cfg = MessageBusConfig(broker_url=URL, poll_interval=0.02, lock_seconds=60)
            async with MessageBus(cfg) as bus:
                async def handler(msg):
                    seen.append(msg.content["id"])
                await bus.subscribe("pool", [MessageType.TASK], handler)
                for i in range(N):
                    await bus.publish(message_type=MessageType.TASK, sender_id=ME,
                                      recipient_id="pool", content={"id": f"{ME}-{i}"})
                idle = 0
                while idle < 40:
                    await asyncio.sleep(0.05)
                    idle = idle + 1 if await bus.queue_depth("pool") == 0 else 0
            print(json.dumps(seen))
        asyncio.run(main())
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), url, "150", f"p{k}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    handled: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=100)
        assert p.returncode == 0, err
        assert "locked" not in err.lower()
        handled.extend(json.loads(out.strip().splitlines()[-1]))
    expected = {f"p{k}-{i}" for k in range(3) for i in range(150)}
    assert sorted(handled) == sorted(expected)  # each handled once, none lost
