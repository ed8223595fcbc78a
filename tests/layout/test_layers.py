"""The layer contracts (import-linter, ``[tool.importlinter]`` in pyproject.toml) and the shape
measure (``scripts/shape.py``): they hold on the tree, and they catch what they are for.

Each check of a broken tree runs on a copy of ``src/`` in a temporary folder, so the tree itself
is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MESSAGING = Path("AgentOperatingSystem") / "messaging"


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "src" / "AgentOperatingSystem",
        tmp_path / "src" / "AgentOperatingSystem",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _add_import(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint_imports(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # an engine calling up into the core
        (
            MESSAGING / "brokers" / "memory.py",
            "from ..core import bus as _up  # noqa",
            "Engines never import the core, the services or the faces",
        ),
        # the codec calling up into the core (the cycle security <-> bus once was)
        (
            MESSAGING / "codec" / "envelope.py",
            "from ..core import bus as _up  # noqa",
            "Layers",
        ),
        # the seam naming an engine
        (
            MESSAGING / "brokers" / "base.py",
            "from . import sqlite as _engine  # noqa",
            "The broker seam names no engine",
        ),
        # one engine reaching into another
        (
            MESSAGING / "brokers" / "memory.py",
            "from . import sqlite as _other  # noqa",
            "Engines are independent of each other",
        ),
        # ground importing a service
        (
            MESSAGING / "types.py",
            "from . import router as _up  # noqa",
            "Layers",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: Path, line: str, contract: str
) -> None:
    tree = _copy_tree(tmp_path)
    _add_import(tree, str(module), line)
    result = _lint_imports(tree)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def _shape(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "shape.py"), str(tree / "src")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_tree_is_within_the_shape_limits(tmp_path: Path) -> None:
    result = _shape(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout
    assert "shape: 0 finding(s)" in result.stdout


def test_shape_reports_a_cycle_and_oversize_code(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    # a cycle hidden inside a function still counts
    _add_import(tree, str(MESSAGING / "types.py"), "def _late():\n    from . import policy  # noqa")
    body = "".join(f"    x{i} = {i}\n" for i in range(90))
    _add_import(tree, str(MESSAGING / "clock.py"), f"def _long():\n{body}")
    result = _shape(tree)
    assert result.returncode == 1
    assert "cycle" in result.stdout and "messaging.policy" in result.stdout
    assert "function" in result.stdout and "_long" in result.stdout
