"""The commands that inspect and repair a node's queues: ``queues`` and
``dlq list|show|resubmit|purge``."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from .client import client_of, quote
from .output import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CLIError,
    Progress,
    clip,
    print_json,
    print_listing,
)

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
    if args.agent:
        query["agent"] = args.agent
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
    data = client_of(args).call("GET", f"/admin/dlq/{quote(args.agent)}/{quote(args.message_id)}")
    print_json(data)
    return EXIT_OK


def cmd_dlq_resubmit(args: argparse.Namespace) -> int:
    """``dlq resubmit``: put the given dead letters (or ``--all``) back into their queue."""
    client = client_of(args)
    ids: list[str] = list(args.message_ids)
    if args.all:
        if ids:
            raise CLIError("give message ids or --all, not both", EXIT_USAGE)
        query = urllib.parse.urlencode({"agent": args.agent, "limit": "10000"})
        ids = [d["message_id"] for d in client.call("GET", f"/admin/dlq?{query}")["dead_letters"]]
    elif not ids:
        raise CLIError("give one or more message ids, or --all", EXIT_USAGE)
    progress = Progress(len(ids), f"resubmitting to {args.agent}", enabled=len(ids) > 1)
    errors: list[str] = []
    for mid in ids:
        try:
            client.call("POST", f"/admin/dlq/{quote(args.agent)}/{quote(mid)}/resubmit", {})
            progress.advance()
        except CLIError as exc:
            errors.append(f"{mid}: {exc}")
            progress.advance(failed=True)
    progress.finish()
    done = len(ids) - len(errors)
    if args.json:
        print_json({"agent": args.agent, "resubmitted": done, "errors": errors})
    else:
        print(f"resubmitted {done} dead letter(s) to {args.agent}")
    for err in errors:
        print(f"{PROG}: error: {err}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    """``dlq purge``: delete an agent's dead letters (asks first unless ``--yes``)."""
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(
                f"refusing to purge the dead letters of {args.agent!r} without --yes", EXIT_USAGE
            )
        answer = input(f"Delete every dead letter of {args.agent!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return EXIT_OK
    data = client_of(args).call("POST", f"/admin/dlq/{quote(args.agent)}/purge", {})
    if args.json:
        print_json(data)
    else:
        print(f"purged {data['purged']} dead letter(s) from {args.agent}")
    return EXIT_OK
