"""A griffe extension for the API reference: the docstrings' reStructuredText roles
(``:class:`~.x.Name```, ``:meth:`...```) and double backticks read as Markdown code, which
is what mkdocstrings renders, and ``::`` literal blocks as fenced code.

Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions`` option); the docstrings in ``src``
stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|attr|func|meth|mod|data|exc|obj):`~?\.*([^`]+)`")


def _inline(line: str) -> str:
    line = ROLE.sub(lambda m: "`" + m.group(1).rsplit(".", 1)[-1] + "`", line)
    return line.replace("``", "`")


def markdown_of(text: str) -> str:
    """Docstring text with roles and double backticks as Markdown code spans, and a
    paragraph ending in ``::`` followed by an indented block as a fenced block (kept as
    written)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            if block:
                head = line.rstrip()[:-2].rstrip()
                out.append(_inline(head) + (":" if head and not head.endswith(":") else ""))
                indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                out += ["", "```text", *[b[indent:] for b in block], "```", ""]
                i = j
                continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out)


class RstRoles(griffe.Extension):
    """Rewrite every object's docstring with :func:`markdown_of` as griffe loads it."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
