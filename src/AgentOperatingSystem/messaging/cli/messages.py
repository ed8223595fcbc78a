"""The commands that move messages through a node: ``send``, ``request`` and ``tail``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from ..types import MessagePriority
from .client import agent_of, client_of, parse_content, required_agent
from .output import EXIT_OK, CLIError, print_json
from .progress import Progress

__all__ = ["cmd_request", "cmd_send", "cmd_tail", "format_event"]


def cmd_send(args: argparse.Namespace) -> int:
    """``send``: publish a message ``--count`` times through ``/admin/send`` (with more than
    one, a :class:`~.progress.Progress` on stderr)."""
    client = client_of(args)
    content = parse_content(args.content)
    given: dict[str, Any] = {
        "message_type": args.type,
        "content": content,
        "sender_id": args.sender,
        "priority": _priority(args.priority),
        "recipient_id": agent_of(args, flag="--to"),
        "correlation_id": args.correlation_id,
        "ttl": args.ttl,
        "metadata": parse_content(args.metadata) if args.metadata else None,
    }
    # only what was given: the SendBody schema has no nulls
    body = {k: v for k, v in given.items() if v is not None}
    results = []
    with Progress(args.count, "sending", enabled=args.count > 1) as progress:
        for _ in range(args.count):
            results.append(client.call("POST", "/admin/send", body))
            progress.advance()
    if args.json:
        print_json(results if args.count > 1 else results[0])
        return EXIT_OK
    for r in results:
        to = ", ".join(r["recipients"]) or "(no queue)"
        note = " (duplicate, not enqueued)" if r.get("duplicate") else ""
        print(f"{r['message_id']} -> {to}{note}")
    return EXIT_OK


def _priority(text: str | None) -> str | None:
    """``--priority`` as the name the admin API documents (``2`` and ``high`` are
    ``NORMAL`` and ``HIGH``); a value that is no priority is sent as given, for the node to
    refuse with its message."""
    if text is None:
        return None
    try:
        return MessagePriority.coerce(int(text) if text.isdigit() else text.upper()).name
    except (ValueError, KeyError):
        return text


def cmd_request(args: argparse.Namespace) -> int:
    """``request``: send a request through ``/admin/request`` and print the response."""
    body = {
        "recipient_id": required_agent(args, flag="--to"),
        "content": parse_content(args.content),
        "timeout": args.timeout,
        "sender_id": args.sender,
        "message_type": args.type,
    }
    data = client_of(args).call("POST", "/admin/request", body, timeout=args.timeout + 10)
    response = data["response"]
    print_json(response if args.json else response["content"])
    return EXIT_OK


def format_event(event: dict[str, Any]) -> str:
    """One line of ``tail``: time, event kind, short message id and what happened."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("time", time.time()))))
    kind = event.get("event", "?")
    mid = str(event.get("message_id") or "")[:8]
    mt = event.get("message_type", "")
    if kind == "published":
        where = ",".join(event.get("queues") or []) or event.get("recipient") or "?"
        text = f"{mt} {event.get('sender')} -> {where} {event.get('content', '')}"
    elif kind == "handled":
        state = "ok" if event.get("ok") else f"FAILED {event.get('error')}"
        text = f"{mt} by {event.get('agent')} attempt {event.get('attempt')} {state}"
        text += f" ({event.get('duration_ms')} ms)"
    elif kind == "dropped":
        text = f"{event.get('count')} events dropped (too slow)"
    else:
        text = f"{mt} in {event.get('agent')}"
    return f"{stamp} {kind:<13} {mid:<8} {text}".rstrip()


def cmd_tail(args: argparse.Namespace) -> int:
    """``tail``: follow ``/admin/tail`` (Server-Sent Events) until ``--count`` or Ctrl-C."""
    client = client_of(args)
    agent = agent_of(args)
    query = {k: v for k, v in (("agent", agent), ("type", args.type)) if v}
    path = "/admin/tail" + ("?" + urllib.parse.urlencode(query) if query else "")
    # No read timeout: the node sends a comment every 15 s; allow for three missed ones.
    resp = client.open("GET", path, timeout=60)
    print(f"following {client.node} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    try:
        with resp:
            data: list[str] = []
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                    continue
                if line or not data:
                    continue
                try:
                    event = json.loads("\n".join(data))
                except ValueError:
                    event = {"event": "unparsable", "raw": "\n".join(data)}
                data = []
                print(json.dumps(event) if args.json else format_event(event), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return EXIT_OK
    except TimeoutError:
        raise CLIError("the node stopped sending (no heartbeat for 60 s)") from None
    except OSError as exc:
        raise CLIError(f"the stream from {client.node} broke: {exc}") from None
    raise CLIError("the node closed the stream (was it stopped?)")
