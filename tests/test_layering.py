"""The core, the CLI and the agent import without Textual; the agent and the console never
import each other (they meet in the database)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCKED = """
import sys
sys.modules["textual"] = None  # any `import textual...` now raises ImportError
import pipectl, pipectl.store, pipectl.store.console, pipectl.cli, pipectl.graph, pipectl.format
import agent, agent.service, agent.requests
from pipectl.cli import build_parser
build_parser()
assert not [m for m in sys.modules if m.startswith("textual.")], "textual got imported"
print("ok")
"""


def test_core_cli_and_agent_import_without_textual() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_only_the_console_imports_textual_and_agent_and_console_stay_apart() -> None:
    assert "textual" in _imports("console")
    assert "agent" not in _imports("console")
    assert "console" not in _imports("agent")
    for package in ("pipectl", "agent"):
        assert "textual" not in _imports(package), package
