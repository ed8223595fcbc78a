"""The command line's side of a node's ``/admin`` API: a small synchronous HTTP client and
the helpers that turn command-line input into request bodies and paths.

Every failure (unreachable node, an HTTP error, an answer that is not JSON) becomes a
:class:`~.output.CLIError` whose message the user can act on.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .output import EXIT_USAGE, PROG, CLIError

__all__ = [
    "AGENT_OPTION",
    "DEFAULT_NODE",
    "NODE_ENV",
    "TOKEN_ENV",
    "AdminClient",
    "agent_of",
    "client_of",
    "parse_content",
    "quote",
    "required_agent",
]

DEFAULT_NODE = "http://127.0.0.1:8080"
"""The node a command talks to when neither ``--node`` nor ``$AOS_NODE_URL`` names one."""
NODE_ENV = "AOS_NODE_URL"
"""The environment variable holding the default ``--node``."""
TOKEN_ENV = "AOS_ADMIN_TOKEN"
"""The environment variable holding the default ``--token``."""
AGENT_OPTION = "agent_option"
"""Where argparse puts an agent named by option (``--agent``, or ``--to``) rather than by
the positional ``AGENT``."""


class AdminClient:
    """A small synchronous client of the node's ``/admin`` API."""

    def __init__(self, node: str, token: str | None, timeout: float = 30.0) -> None:
        node = node.rstrip("/")
        parts = urllib.parse.urlsplit(node)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CLIError(f"--node must be an http(s) URL such as {DEFAULT_NODE}, not {node!r}")
        self.node = node
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.node + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return req

    def open(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request; return the open response (raises CLIError on failure)."""
        req = self._request(method, path, body)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise CLIError(self._http_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CLIError(
                f"cannot reach the node at {self.node}: {reason}"
                f" (is `{PROG} serve` running? set --node or ${NODE_ENV})"
            ) from None

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and return its JSON answer."""
        with self.open(method, path, body, timeout=timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise CLIError(f"the node answered {path} with something that is not JSON") from None

    @staticmethod
    def _http_error(exc: urllib.error.HTTPError) -> str:
        try:
            payload = json.loads(exc.read())
            err = payload.get("error")
            if isinstance(err, dict):
                return str(err.get("message") or err.get("code") or exc.reason)
        except (ValueError, AttributeError):
            pass
        return f"the node answered HTTP {exc.code} {exc.reason}"


def client_of(args: argparse.Namespace) -> AdminClient:
    """The client of the node that ``--node`` and ``--token`` name."""
    return AdminClient(args.node, args.token)


def agent_of(args: argparse.Namespace, *, flag: str = "--agent") -> str | None:
    """The agent a command acts on, or None: the positional ``AGENT`` or the option ``flag``
    (the same agent may be given both ways; two different ones are a usage error, exit 2)."""
    given: str | None = getattr(args, "agent", None)
    named: str | None = getattr(args, AGENT_OPTION, None)
    if given and named and given != named:
        raise CLIError(
            f"two agents given: {given!r} and {flag} {named!r}; name the agent once", EXIT_USAGE
        )
    return named or given


def required_agent(args: argparse.Namespace, *, flag: str = "--agent") -> str:
    """:func:`agent_of` for a command that needs an agent: none is a usage error (exit 2)."""
    agent = agent_of(args, flag=flag)
    if not agent:
        raise CLIError(f"name the agent: AGENT (or {flag} AGENT)", EXIT_USAGE)
    return agent


def quote(value: str) -> str:
    """``value`` quoted as one path segment."""
    return urllib.parse.quote(value, safe="")


def parse_content(text: str | None) -> dict[str, Any]:
    """``--content`` as a JSON object: an object as given, another JSON value as
    ``{"value": ...}``, anything else as ``{"text": ...}``; ``-`` reads stdin."""
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}
