"""The CLI uses only the admin routes that ``/admin/openapi.json`` describes.

Two checks against the document built from the route table (:func:`openapi_document`):

* statically, every ``.call(METHOD, PATH)`` and ``.open(METHOD, PATH)`` in the CLI's modules
  (``cli/client.py`` and the command modules) is read from the source, its path worked out
  from the string, f-string, ``+`` and ``x if c else y`` it is made of (a name is followed to
  its assignments in the function), and it must be a documented method and path; a path
  that cannot be worked out fails too;
* on a live node (from :mod:`tests.cli.test_cli`), every remote command is run in this
  process with the client's ``open`` watched: each request's method and path must be a
  documented route, each query parameter one the route documents, and each JSON body must
  conform to the route's request schema. Every route found statically must have been used.
"""

from __future__ import annotations

import ast
import asyncio
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from AgentOperatingSystem.messaging import cli as cli_package
from AgentOperatingSystem.messaging.cli import main
from AgentOperatingSystem.messaging.cli.client import AdminClient
from AgentOperatingSystem.messaging.web.openapi import openapi_document
from tests.cli import test_cli
from tests.cli.test_cli import NodeProc, _dead_letter, agent_bus

node = test_cli.node  # the module's own live node (a module-scoped fixture)

DOC = openapi_document()
CLI_DIR = Path(cli_package.__file__).parent
HOLE = "\0"
"""Stands for a part of a path the source computes (a formatted value)."""
QUERY_HOLE = "\1"
"""Stands for a query string the source computes (``urlencode(...)``)."""


# ---------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the document's template, e.g. /admin/dlq/{agent}/{message_id}
    spec: dict[str, Any]

    def query_params(self) -> set[str]:
        return {p["name"] for p in self.spec.get("parameters", []) if p["in"] == "query"}

    def body_schema(self) -> dict[str, Any] | None:
        body = self.spec.get("requestBody")
        if body is None:
            return None
        schema: dict[str, Any] = body["content"]["application/json"]["schema"]
        return {**schema, "components": DOC["components"]}


def _segments_match(template: str, path: str) -> bool:
    """``path`` (literal segments, or HOLE for a computed one) fits ``template``: a literal
    segment equals the template's or fills a ``{param}``; a computed one fills a param."""
    want, got = template.strip("/").split("/"), path.strip("/").split("/")
    if len(want) != len(got):
        return False
    for w, g in zip(want, got):
        is_param = w.startswith("{") and w.endswith("}")
        if HOLE in g:
            if not is_param:
                return False
        elif not is_param and w != g:
            return False
        elif is_param and not g:
            return False
    return True


def documented(method: str, path: str) -> Operation | None:
    """The document's operation for ``method path`` (query string ignored), or None.

    A literal template beats one with parameters (``/admin/dlq/count`` is not the
    ``{agent}`` of ``/admin/dlq/{agent}/...``: their lengths differ anyway, but the rule
    holds for any overlap)."""
    path = path.split("?", 1)[0]
    found = [
        Operation(method.upper(), template, ops[method.lower()])
        for template, ops in DOC["paths"].items()
        if method.lower() in ops and _segments_match(template, path)
    ]
    found.sort(key=lambda op: op.path.count("{"))
    return found[0] if found else None


def test_the_matcher_refuses_what_the_document_does_not_describe() -> None:
    assert documented("GET", "/admin/queues?all=1") is not None
    assert documented("POST", f"/admin/dlq/a{HOLE}/{HOLE}/resubmit") is not None
    op = documented("GET", "/admin/dlq/count?agent=x")
    assert op is not None and op.path == "/admin/dlq/count"
    assert documented("GET", "/admin/nope") is None
    assert documented("DELETE", "/admin/queues") is None
    assert documented("POST", "/admin/queues") is None
    assert documented("GET", f"/admin/{HOLE}") is None  # a computed segment is no literal
    assert documented("GET", "/admin/dlq/a/b/c") is None


# ---------------------------------------------------------------------------- static


@dataclass(frozen=True)
class CallSite:
    where: str
    method: str
    paths: tuple[str, ...]  # every path the expression can make (HOLE for computed parts)


class _Unresolvable(Exception):
    pass


def _paths(expr: ast.expr, func: ast.AST, depth: int = 0) -> list[str]:
    """Every string ``expr`` can be, with HOLE for the computed parts."""
    if depth > 10:
        raise _Unresolvable(ast.unparse(expr))
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.JoinedStr):
        out = [""]
        for part in expr.values:
            pieces = _paths(part, func, depth + 1) if isinstance(part, ast.Constant) else [HOLE]
            out = [a + b for a in out for b in pieces]
        return out
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left, right = _paths(expr.left, func, depth + 1), _paths(expr.right, func, depth + 1)
        return [a + b for a in left for b in right]
    if isinstance(expr, ast.IfExp):
        return _paths(expr.body, func, depth + 1) + _paths(expr.orelse, func, depth + 1)
    if isinstance(expr, ast.Name):
        values = [
            node.value
            for node in ast.walk(func)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == expr.id for t in node.targets)
        ]
        if not values:
            raise _Unresolvable(expr.id)
        return [p for v in values for p in _paths(v, func, depth + 1)]
    if isinstance(expr, ast.Call):
        return [QUERY_HOLE]  # such as urlencode(query): allowed after the "?" only
    raise _Unresolvable(ast.unparse(expr))


def _call_sites() -> list[CallSite]:
    sites: list[CallSite] = []
    for source in sorted(CLI_DIR.glob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in ast.walk(func):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ("call", "open")
                    and len(call.args) >= 2
                    and isinstance(call.args[0], ast.Constant)
                    and call.args[0].value in ("GET", "POST", "PUT", "PATCH", "DELETE")
                ):
                    continue
                where = f"{source.name}:{call.lineno}"
                try:
                    paths = _paths(call.args[1], func)
                except _Unresolvable as exc:
                    pytest.fail(f"{where}: cannot tell which path {exc} is; write it literally")
                for p in paths:
                    if QUERY_HOLE in p.partition("?")[0]:
                        pytest.fail(f"{where}: a computed path {p!r}; only a query may be")
                sites.append(CallSite(where, str(call.args[0].value), tuple(paths)))
    return sites


def test_every_path_in_the_cli_source_is_a_documented_route() -> None:
    sites = _call_sites()
    assert len(sites) >= 10, sites  # the scan finds the calls (it is not looking elsewhere)
    undocumented = [
        f"{s.where}: {s.method} {p.split('?', 1)[0].replace(HOLE, '{...}')}"
        for s in sites
        for p in s.paths
        if documented(s.method, p) is None
    ]
    assert not undocumented, "the CLI calls routes /admin/openapi.json does not describe"
    routes = {(s.method, documented(s.method, p).path) for s in sites for p in s.paths}  # type: ignore[union-attr]
    assert ("POST", "/admin/send") in routes and ("GET", "/admin/tail") in routes


def _static_routes() -> set[tuple[str, str]]:
    out = set()
    for s in _call_sites():
        for p in s.paths:
            op = documented(s.method, p)
            assert op is not None
            out.add((op.method, op.path))
    return out


# ---------------------------------------------------------------------------- dynamic


@dataclass
class Recorded:
    method: str
    path: str
    body: Any


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Recorded]]:
    calls: list[Recorded] = []
    original = AdminClient.open

    def watched(self: AdminClient, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        calls.append(Recorded(method, path, body))
        return original(self, method, path, body, **kw)

    monkeypatch.setattr(AdminClient, "open", watched)
    yield calls


def _tail_while_sending(url: str) -> int:
    """``tail --count 1`` in a thread, with messages sent until it has seen one."""
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            main(["tail", "cli_routes_tail", "--count", "1", "--json", "--node", url])
        )
    )
    thread.start()
    for _ in range(100):
        if not thread.is_alive():
            break
        main(["send", "cli_routes_tail", "--content", "{}", "--node", url])
        thread.join(0.1)
    thread.join(10)
    assert not thread.is_alive()
    return codes[0]


async def test_every_remote_command_uses_only_documented_routes_and_parameters(
    node: NodeProc, recorded: list[Recorded], capsys: pytest.CaptureFixture[str]
) -> None:
    ids = await _dead_letter(node, "cli_routes", 4)
    url = ["--node", node.url]
    commands = [
        ["queues"],
        ["queues", "--all", "--json"],
        ["send", "cli_routes_inbox", "--content", '{"a": 1}', "--priority", "HIGH", "--ttl", "60"],
        ["send", "--type", "event", "--content", "x", "--count", "2", "--metadata", '{"k": 1}'],
        ["dlq", "list"],
        ["dlq", "list", "cli_routes", "--limit", "5"],
        ["dlq", "show", "cli_routes", ids[0]],
        ["dlq", "resubmit", "cli_routes", ids[0], ids[1]],
        ["dlq", "resubmit", "cli_routes", "--all"],
        ["dlq", "purge", "cli_routes", "--yes"],
        ["conversations", "list", "--state", "active", "--participant", "someone"],
        ["conversations", "show", "no-such-conversation", "--limit", "3"],
    ]
    codes = []
    for argv in commands:
        codes.append(await asyncio.to_thread(main, [*argv, *url]))
    codes.append(await asyncio.to_thread(main, ["request", "nobody", "--timeout", "0.2", *url]))
    codes.append(await asyncio.to_thread(_tail_while_sending, node.url))
    capsys.readouterr()
    assert codes == [0] * 10 + [0, 1, 1, 0]  # show of a missing one and an unanswered request

    used: set[tuple[str, str]] = set()
    for call in recorded:
        op = documented(call.method, call.path)
        assert op is not None, f"undocumented: {call.method} {call.path}"
        used.add((op.method, op.path))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(call.path).query)
        assert set(query) <= op.query_params(), (call.path, op.query_params())
        schema = op.body_schema()
        if schema is None:
            assert call.body is None, call
        else:
            jsonschema.validate(call.body, schema)  # the body is what the route documents
    assert _static_routes() <= used  # every route the source names was exercised here

    async with agent_bus(node) as bus:  # leave the shared node's queues tidy
        for agent in ("cli_routes", "cli_routes_inbox", "cli_routes_tail"):
            for m in await bus.get_messages(agent, 100):
                await bus.acknowledge(m.message_id)
