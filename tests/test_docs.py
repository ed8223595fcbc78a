"""The documentation site: every Python block of ``docs/`` runs, the output it shows is what
the code prints, the tables generated from the code have nothing missing or stale, and
``mkdocs build --strict`` (internal links and anchors checked, every page in the nav) passes.

Blocks run as the README's do (:mod:`tests.test_readme`): in a fresh interpreter, in an
empty folder, asyncio-REPL style; ``# not run: <reason>`` as a block's first line is the only
way to leave one out. A block that only includes a script of ``examples/``
(``--8<-- "examples/x.py"``) is that script, run by ``tests/test_examples.py``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_examples import EXPECTED
from tests.test_readme import python_blocks, run_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPET = re.compile(r'^( *)--8<-- "([^"]+)"$', re.M)
PAGES = sorted(DOCS.rglob("*.md"))


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def _included(block: str) -> str | None:
    """The path a block includes when it is nothing but one snippet line."""
    match = SNIPPET.fullmatch(block.strip("\n"))
    return match.group(2) if match else None


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for index, block in enumerate(python_blocks(page.read_text())):
            if _included(block) is None:
                out.append((str(page.relative_to(DOCS)), index, block))
    return out


BLOCKS = _blocks()


def _text_after(page: str, lead: str) -> list[str]:
    """The lines of the first ``text`` block after ``lead`` on ``page``."""
    text = (DOCS / page).read_text().split(lead, 1)[1]
    match = re.search(r"```text\n(.*?)```", text, re.S)
    assert match is not None
    return match.group(1).rstrip("\n").split("\n")


def test_the_site_has_its_pages_and_blocks() -> None:
    names = {str(p.relative_to(DOCS)) for p in PAGES}
    for page in ("index.md", "getting-started.md", "changelog.md", "reference/options.md"):
        assert page in names
    assert len(BLOCKS) >= 10
    assert NATS  # the engines guide runs on a real NATS too


#: The NATS server a block names; the test gives such a block the fixture's server instead,
#: and its own namespace in place of ``namespace=docs``.
NATS_IN_DOCS = "nats://127.0.0.1:4222"
PLAIN = [b for b in BLOCKS if NATS_IN_DOCS not in b[2]]
NATS = [b for b in BLOCKS if NATS_IN_DOCS in b[2]]


def _ids(blocks: list[tuple[str, int, str]]) -> list[str]:
    return [f"{p}#{i}" for p, i, _ in blocks]


@pytest.mark.parametrize(("page", "index", "block"), PLAIN, ids=_ids(PLAIN))
def test_every_docs_block_runs(page: str, index: int, block: str, tmp_path: Path) -> None:
    result = run_block(block, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.nats
@pytest.mark.parametrize(("page", "index", "block"), NATS, ids=_ids(NATS))
def test_every_nats_block_runs_on_the_fixture_server(
    page: str, index: int, block: str, tmp_path: Path, nats_url: str, nats_namespace: str
) -> None:
    assert "namespace=docs" in block
    block = block.replace(NATS_IN_DOCS, nats_url).replace(
        "namespace=docs", f"namespace={nats_namespace}"
    )
    result = run_block(block, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_a_block_that_includes_a_script_is_an_example_that_is_run() -> None:
    included = set()
    for page in PAGES:
        for block in python_blocks(page.read_text()):
            path = _included(block)
            if path is not None:
                assert path.startswith("examples/") and (ROOT / path).is_file(), path
                included.add(Path(path).name)
    assert included <= set(EXPECTED)
    assert "quickstart.py" in included


def test_the_output_shown_is_what_the_examples_print() -> None:
    assert _text_after("getting-started.md", "prints:") == EXPECTED["quickstart.py"]
    assert _text_after("guides/a2a.md", "prints") == EXPECTED["a2a_client.py"]


def test_the_getting_started_commands_go_from_a_clone_to_the_quickstart() -> None:
    page = (DOCS / "getting-started.md").read_text()
    steps = ["git clone", "python3 -m venv .venv", "pip install -e .", "examples/quickstart.py"]
    positions = [page.index(step) for step in steps]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", sorted(hooks.TABLES))
def test_every_generated_table_matches_the_code(name: str) -> None:
    problems: list[str] = []
    table = hooks.TABLES[name](problems)
    assert problems == []
    assert table.count("\n") >= 3


def test_every_table_marker_on_a_page_is_known() -> None:
    used = {m for page in PAGES for m in hooks.MARKER.findall(page.read_text())}
    assert used == set(hooks.TABLES)


def test_the_tables_name_every_setting() -> None:
    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.config.network import NetworkConfig

    bus = hooks.messagebus_config([])
    for field in MessageBusConfig.__dataclass_fields__:
        assert f"| `{field}` |" in bus
    network = hooks.network_config([])
    for name in ("port", "auth_secret", "previous_auth_secrets", "a2a_auth_token", "max_retries"):
        assert f"| `{name}` |" in network
    assert isinstance(NetworkConfig.port, object)
    urls = hooks.engine_urls([])
    for option in ("`synchronous`", "`busy_timeout_ms`", "`namespace`", "`replicas`"):
        assert option in urls
    for scheme in ("`tls://host:port`", "`ws://host:port`", "`wss://host:port`"):
        assert scheme in urls


def test_drift_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(hooks.BUS_FIELDS, "gone_field", "a setting that was removed")
    monkeypatch.delitem(hooks.BUS_FIELDS, "lock_seconds")
    problems: list[str] = []
    hooks.messagebus_config(problems)
    assert problems == [
        "MessageBusConfig.lock_seconds has no description (add a #: comment)",
        "BUS_FIELDS describes 'gone_field', which MessageBusConfig no longer has",
    ]
    monkeypatch.delitem(hooks.URL_OPTIONS, ("sqlite", "synchronous"))
    monkeypatch.setitem(hooks.URL_OPTIONS, ("nats", "token"), ("", "no such option"))
    problems = []
    hooks.engine_urls(problems)
    assert problems == [
        "engine URL option ('sqlite', 'synchronous') has no description in URL_OPTIONS",
        "URL_OPTIONS describes ('nats', 'token'), which no engine accepts",
    ]
    problems = []
    assert hooks.expand("<!-- aos:nope -->", problems) == "<!-- aos:nope -->"
    assert problems == ["unknown table marker '<!-- aos:nope -->'"]


def test_the_error_tree_is_the_class_tree() -> None:
    from AgentOperatingSystem.messaging import errors

    tree = hooks.error_tree([])
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.MessagingError):
            assert f"- `{name}`" in tree
    assert "    - `QueueFullError`" in tree.split("- `DeliveryError`", 1)[1]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(config),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    options = (site / "reference" / "options.html").read_text()
    assert "<table>" in options and "aos:" not in options
    assert "message_bus_queue_depth" in (site / "guides" / "observability.html").read_text()
    assert "doc-heading" in (site / "reference" / "bus.html").read_text()  # rendered docstrings
    assert "cdnjs" not in (site / "index.html").read_text()  # nothing fetched when viewed


def test_a_broken_internal_link_or_anchor_fails_the_build(tmp_path: Path) -> None:
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    with (docs / "guides" / "cli.md").open("a") as page:
        page.write("\nSee [the queues](nowhere.md) and [modes](delivery.md#no-such-heading).\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("- scripts/docs_hooks.py", f"- {ROOT / 'scripts' / 'docs_hooks.py'}")
    config = config.replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    config = config.replace("- scripts/docs_griffe.py", f"- {ROOT / 'scripts' / 'docs_griffe.py'}")
    config = config.replace('base_path: ["."]', f'base_path: ["{ROOT}"]')
    (tmp_path / "mkdocs.yml").write_text(config)
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 1
    assert "contains a link 'nowhere.md'" in result.stderr
    assert "does not contain an anchor '#no-such-heading'" in result.stderr


def test_docstrings_are_read_as_markdown() -> None:
    spec = importlib.util.spec_from_file_location(
        "docs_griffe", ROOT / "scripts" / "docs_griffe.py"
    )
    assert spec is not None and spec.loader is not None
    griffe_ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(griffe_ext)
    text = "Use :class:`~.core.bus.MessageBus` or ``memory://``::\n\n    tree ``kept``\n\nafter"
    assert griffe_ext.markdown_of(text).split("\n") == [
        "Use `MessageBus` or `memory://`:",
        "",
        "```text",
        "tree ``kept``",
        "```",
        "",
        "after",
    ]


def _command_lines() -> list[tuple[str, str]]:
    """Every ``aos-messaging ...`` line of a ``bash`` block in the README and the docs."""
    out = []
    for page in [ROOT / "README.md", *PAGES]:
        text = page.read_text()
        for block in re.findall(r"^ *```bash\n(.*?)^ *```", text, re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("aos-messaging "):
                    out.append((page.name, line.strip()))
    return out


COMMAND_LINES = _command_lines()


@pytest.mark.parametrize(("page", "line"), COMMAND_LINES, ids=[c for _, c in COMMAND_LINES])
def test_every_command_line_shown_parses(page: str, line: str) -> None:
    import shlex

    from AgentOperatingSystem.messaging.cli import build_parser

    words = shlex.split(line, comments=True)
    words = [w for w in words[1:] if w != "&"]
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:  # pragma: no cover - the failure message
        raise AssertionError(f"{page}: `{line}` does not parse") from exc
    assert callable(args.func)
