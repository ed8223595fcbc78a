"""What ``aos-messaging`` prints and how it exits: exit codes, :class:`CLIError`,
:class:`Progress` (from :mod:`.progress`) and the JSON, table, listing and clipping helpers
every command uses.

Exit codes: 0 success; 1 an error (the node is unreachable, refused the request, a request
timed out, nothing matched); 2 wrong usage; 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

from .progress import Progress

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CLIError",
    "Progress",
    "clip",
    "print_json",
    "print_listing",
    "table",
]

PROG = "aos-messaging"
"""The program's name, as usage lines and error messages show it."""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_T = TypeVar("_T")


class CLIError(Exception):
    """An error reported to the user as ``aos-messaging: error: ...`` with exit code 1
    (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (what ``--json`` asks for)."""
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def print_listing(
    as_json: bool,
    items: list[_T],
    row: Callable[[_T], list[str]],
    head: list[str],
    empty: str,
    *,
    shown: Any = None,
) -> int:
    """What a listing command prints: with ``--json`` (``as_json``) the items (or ``shown``,
    when given) as JSON; else one ``row`` per item under ``head``, or ``empty`` when there
    is none. Returns EXIT_OK."""
    if as_json:
        print_json(items if shown is None else shown)
        return EXIT_OK
    rows = [row(item) for item in items]
    print(table(rows, head) if rows else empty)
    return EXIT_OK


def table(rows: list[list[str]], head: list[str]) -> str:
    """``rows`` under ``head`` in left-aligned columns two spaces apart."""
    lines = [head, *rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines
    )


def clip(text: Any, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    s = "" if text is None else str(text).replace("\n", " ")
    return s if len(s) <= width else s[: width - 1] + "…"
