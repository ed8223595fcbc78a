"""The commands that read a node's conversations: ``conversations list|show``."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from .client import client_of, quote
from .output import EXIT_OK, CLIError, clip, print_json, print_listing

__all__ = ["cmd_conversations_list", "cmd_conversations_show"]


def cmd_conversations_list(args: argparse.Namespace) -> int:
    """``conversations list``: conversations (oldest first), filtered by state or member."""
    query = {k: v for k, v in (("state", args.state), ("participant", args.participant)) if v}
    path = "/admin/conversations" + ("?" + urllib.parse.urlencode(query) if query else "")
    data = client_of(args).call("GET", path)
    if not data.get("available", True):
        raise CLIError("this node has no conversation storage")
    convs = data["conversations"]
    head = ["ID", "TOPIC", "STATE", "TURNS", "PARTICIPANTS"]
    return print_listing(args.json, convs, _conversation_row, head, "no conversations")


def _conversation_row(c: dict[str, Any]) -> list[str]:
    return [
        c["conversation_id"],
        clip(c.get("topic"), 30),
        str(c.get("state")),
        str(c.get("message_count")),
        ",".join(c.get("participants") or []),
    ]


def cmd_conversations_show(args: argparse.Namespace) -> int:
    """``conversations show``: one conversation and its last ``--limit`` turns."""
    path = f"/admin/conversations/{quote(args.conversation_id)}?limit={args.limit}"
    data = client_of(args).call("GET", path)
    if args.json:
        print_json(data)
        return EXIT_OK
    c = data["conversation"]
    print(f"{c['conversation_id']}  {c.get('topic')!r}  {c.get('state')}")
    print(f"participants: {', '.join(c.get('participants') or [])}")
    print(
        f"started {c.get('started_at')}" + (f", ended {c['ended_at']}" if c.get("ended_at") else "")
    )
    for turn in data["history"]:
        content = turn.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        print(f"[{turn['sequence']}] {turn['sender_id']} ({turn['message_type']}): {text}")
    return EXIT_OK
