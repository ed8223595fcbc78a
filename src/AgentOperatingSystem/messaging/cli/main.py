"""``aos-messaging``: the command line of AOS Messaging.

::

    aos-messaging demo                         the multi-agent walk-through (SQLite)
    aos-messaging serve [--broker-url URL] [--host H] [--port P]
                                               a node: bus + network + dashboard + /metrics
    aos-messaging send [AGENT] [--type TYPE] [--content JSON] [--count N]
    aos-messaging request AGENT [--content JSON] [--timeout S]
    aos-messaging tail [AGENT] [--type T] [--count N]
    aos-messaging queues [--all]
    aos-messaging dlq list [AGENT] | show AGENT ID | resubmit AGENT (ID... | --all)
                  | purge AGENT [--yes]
    aos-messaging conversations list|show ...
    aos-messaging bench [--quick] [--only NAMES]

The agent a command acts on is its first positional argument; ``--agent AGENT`` (``--to
AGENT`` for ``send`` and ``request``) is still accepted.

Every command but ``demo``, ``serve`` and ``bench`` talks to a running node over HTTP (its
``/admin`` API): ``--node URL`` (default ``$AOS_NODE_URL``, else ``http://127.0.0.1:8080``)
and ``--token`` (default ``$AOS_ADMIN_TOKEN``). ``--json`` prints machine-readable output.
Long work (``send --count N``, ``dlq resubmit --all``, ``dlq purge``) shows its progress on
stderr (:mod:`.progress`): a bar with rate and time left on a terminal, plain lines
elsewhere.

Exit codes: 0 success; 1 an error (the node is unreachable, refused the request, a request
timed out, nothing matched); 2 wrong usage (unknown command or option, missing argument);
130 interrupted with Ctrl-C (except ``tail`` and ``serve``, for which Ctrl-C is the normal way
to stop: 0). Errors are printed on stderr as ``aos-messaging: error: <message>``.

The package is split by concept: :mod:`.parser` declares the commands as data,
:mod:`.messages`, :mod:`.queues`, :mod:`.conversations` and :mod:`.local` run them,
:mod:`.serve` runs a node, :mod:`.client` talks to one, :mod:`.output` and :mod:`.progress`
print; this module only dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from .output import EXIT_INTERRUPTED, EXIT_OK, PROG, CLIError
from .parser import build_parser

__all__ = ["main"]

_CTRL_C_STOPS = ("tail", "serve")
"""The commands for which Ctrl-C is the normal way to stop (exit 0)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``aos-messaging``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        if args.command in _CTRL_C_STOPS:
            return EXIT_OK
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
