"""The commands that inspect and repair a node's queues: ``queues`` and
``dlq list|show|resubmit|purge``.

Each ``dlq`` action takes the agent as its first positional argument (optional for
``list``), or as ``--agent AGENT``: ``dlq list cfo_agent``, ``dlq show cfo_agent ID``,
``dlq resubmit cfo_agent ID... | --all``, ``dlq purge cfo_agent --yes``.
"""

from __future__ import annotations

import argparse
import math
import sys
import urllib.parse
from typing import Any

from .client import AGENT_OPTION, AdminClient, agent_of, client_of, quote, required_agent
from .output import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CLIError,
    clip,
    print_json,
    print_listing,
)
from .progress import Progress

__all__ = ["cmd_dlq_list", "cmd_dlq_purge", "cmd_dlq_resubmit", "cmd_dlq_show", "cmd_queues"]


def cmd_queues(args: argparse.Namespace) -> int:
    """``queues``: the agents' queues with depth, dead letters and whether one consumes."""
    data = client_of(args).call("GET", "/admin/queues" + ("?all=1" if args.all else ""))
    head = ["AGENT", "DEPTH", "DEAD", "CONSUMER"]
    return print_listing(args.json, data["queues"], _queue_row, head, "no queues", shown=data)


def _queue_row(q: dict[str, Any]) -> list[str]:
    return [q["agent"], str(q["depth"]), str(q["dead_letters"]), "yes" if q["subscribed"] else ""]


def cmd_dlq_list(args: argparse.Namespace) -> int:
    """``dlq list``: dead letters with reason, attempts and last error."""
    query = {"limit": str(args.limit)}
    agent = agent_of(args)
    if agent:
        query["agent"] = agent
    data = client_of(args).call("GET", "/admin/dlq?" + urllib.parse.urlencode(query))
    letters = data["dead_letters"]
    head = ["AGENT", "MESSAGE_ID", "TYPE", "REASON", "ATTEMPTS", "LAST_ERROR"]
    return print_listing(args.json, letters, _dead_letter_row, head, "no dead letters")


def _dead_letter_row(d: dict[str, Any]) -> list[str]:
    return [
        d["agent"],
        d["message_id"],
        d["message_type"],
        str(d.get("reason") or ""),
        str(d.get("attempts") if d.get("attempts") is not None else ""),
        clip(d.get("error"), 60),
    ]


def cmd_dlq_show(args: argparse.Namespace) -> int:
    """``dlq show``: one dead letter in full, as JSON."""
    agent = required_agent(args)
    data = client_of(args).call("GET", f"/admin/dlq/{quote(agent)}/{quote(args.message_id)}")
    print_json(data)
    return EXIT_OK


def cmd_dlq_resubmit(args: argparse.Namespace) -> int:
    """``dlq resubmit``: put the given dead letters (or ``--all``) back into their queue,
    with a :class:`~.progress.Progress` on stderr when there is more than one."""
    client = client_of(args)
    ids: list[str] = list(args.message_ids)
    named = getattr(args, AGENT_OPTION, None)
    if named and args.agent and args.agent != named:
        # `resubmit --agent a1 ID1 ID2`: argparse took ID1 for the positional AGENT
        ids.insert(0, args.agent)
        args.agent = None
    agent = required_agent(args)
    if args.all:
        if ids:
            raise CLIError("give message ids or --all, not both", EXIT_USAGE)
        done, errors = _resubmit_all(client, agent)
    elif not ids:
        raise CLIError("give one or more message ids, or --all", EXIT_USAGE)
    else:
        done, errors = _resubmit_each(client, agent, ids)
    if args.json:
        print_json({"agent": agent, "resubmitted": done, "errors": errors})
    else:
        print(f"resubmitted {done} dead letter(s) to {agent}")
    for err in errors:
        print(f"{PROG}: error: {err}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


def _dead_letter_count(client: AdminClient, agent: str) -> int:
    """How many dead letters ``agent`` has (``GET /admin/dlq/count``; at most 10000)."""
    query = urllib.parse.urlencode({"agent": agent})
    return int(client.call("GET", f"/admin/dlq/count?{query}")["count"])


def _resubmit_each(client: AdminClient, agent: str, ids: list[str]) -> tuple[int, list[str]]:
    """Resubmit the dead letters ``ids`` one by one: (how many moved, the errors)."""
    errors: list[str] = []
    with Progress(len(ids), f"resubmitting to {agent}", enabled=len(ids) > 1) as progress:
        for mid in ids:
            try:
                client.call("POST", f"/admin/dlq/{quote(agent)}/{quote(mid)}/resubmit", {})
                progress.advance()
            except CLIError as exc:
                errors.append(f"{mid}: {exc}")
                progress.advance(failed=True)
    return len(ids) - len(errors), errors


def _resubmit_all(client: AdminClient, agent: str) -> tuple[int, list[str]]:
    """Resubmit every dead letter of ``agent``, counted first, in batches of about a
    twentieth (``POST /admin/dlq/resubmit`` with ``{"agent", "limit"}``), so the progress
    moves while the node works. Stops after the counted number, so letters that fail and
    come back meanwhile are not resubmitted twice. Returns (how many moved, the errors)."""
    total = _dead_letter_count(client, agent)
    batch = min(_BATCH, max(1, math.ceil(total / 20)))
    moved = 0
    errors: list[str] = []
    with Progress(total, f"resubmitting to {agent}", enabled=total > 1) as progress:
        while moved + len(errors) < total:
            body = {"agent": agent, "limit": min(batch, total - moved - len(errors))}
            data = client.call("POST", "/admin/dlq/resubmit", body)
            failed = [f"{mid}: gone before it was resubmitted" for mid in data["failed"]]
            if not data["resubmitted"] and not failed:
                break  # fewer left than counted (resubmitted or purged by someone else)
            moved += int(data["resubmitted"])
            errors += failed
            progress.advance(int(data["resubmitted"]))
            if failed:
                progress.advance(len(failed), failed=True)
    return moved, errors


_BATCH = 500
"""The most dead letters one ``POST /admin/dlq/resubmit`` of ``dlq resubmit --all`` moves."""


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    """``dlq purge``: delete an agent's dead letters (asks first unless ``--yes``), counted
    first (``GET /admin/dlq/count``) for the question and the progress."""
    agent = required_agent(args)
    client = client_of(args)
    if not args.yes and not sys.stdin.isatty():
        raise CLIError(f"refusing to purge the dead letters of {agent!r} without --yes", EXIT_USAGE)
    total = _dead_letter_count(client, agent)
    if not args.yes:
        answer = input(f"Delete the {total} dead letter(s) of {agent!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return EXIT_OK
    with Progress(total, f"purging {agent}", enabled=total > 1) as progress:
        data = client.call("POST", f"/admin/dlq/{quote(agent)}/purge", {})
        progress.advance(int(data["purged"]))
    if args.json:
        print_json(data)
    else:
        print(f"purged {data['purged']} dead letter(s) from {agent}")
    return EXIT_OK
