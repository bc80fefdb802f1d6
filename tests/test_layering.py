"""Layering: the import-linter contracts in pyproject.toml hold (checked by `lint-imports` in
.ci/run), every core module is under the core contract, and the core, the CLI and the agent
import without Textual. The installed wheel puts nothing but `pipectl` in site-packages. Only
pipectl/store/ writes SQL on the pipectl schema."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BLOCKED = """
import sys
sys.modules["textual"] = None  # any `import textual...` now raises ImportError
import pipectl, pipectl.store, pipectl.store.console, pipectl.cli, pipectl.dag, pipectl.format
import pipectl.agent, pipectl.agent.service, pipectl.agent.requests
from pipectl.cli import build_parser
build_parser()
assert not [m for m in sys.modules if m.startswith("textual.")], "textual got imported"
print("ok")
"""

# Sub-packages with contracts of their own, and the entry layer.
LAYERED = {"agent", "checks", "console", "cli"}


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_core_cli_and_agent_import_without_textual() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_every_core_module_is_under_the_core_contract() -> None:
    """A new module in pipectl/ must be named in the core contract (or be a layer of its own):
    otherwise it could import the agent or the console unnoticed."""
    core = next(c for c in _contracts() if str(c["name"]).startswith("The core"))
    named = {str(m).removeprefix("pipectl.") for m in core["source_modules"]}  # type: ignore[attr-defined]
    present = {
        path.stem if path.is_file() else path.name
        for path in (REPO / "pipectl").iterdir()
        if (path.suffix == ".py" and path.stem not in ("__init__", "__main__"))
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert present - LAYERED == named


def test_import_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    assert linter.exists(), "import-linter is part of the dev extra: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(linter), "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.slow
def test_the_wheel_installs_only_the_pipectl_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pipectl-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pipectl"}
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in (
        "agent/service.py",
        "checks/engine.py",
        "console/app.py",
        "console/app.tcss",
        "alert_rules.yml.in",  # `pipectl config rules` renders it
    ):
        assert f"pipectl/{module}" in names
    assert not any(n.startswith("bench/") for n in names)


# SQL on the pipectl schema outside pipectl/store/ (and the migrations): none is left.
SCHEMA_SQL_ALLOWED: set[tuple[str, str]] = set()
# Where SQL on the schema belongs: the store, the migrations and what tests and benchmarks set up.
SCHEMA_SQL_HOMES = ("pipectl/store/", "pipectl/migrate.py", "sql/", "tests/", "bench/")
_SQL_WORDS = re.compile(
    r"\b(select|insert|update|delete|from|join|into|returning|truncate|copy|listen)\b", re.I
)


def _schema_objects(root: Path) -> set[str]:
    """Tables, views and functions the migrations create in the pipectl schema."""
    created = re.compile(
        r"create\s+(?:or\s+replace\s+)?(?:unlogged\s+)?(?:table|view|materialized\s+view|"
        r"function|procedure|type|sequence)\s+(?:if\s+not\s+exists\s+)?pipectl\.(\w+)",
        re.I,
    )
    names = {"schema_migrations"}  # created by pipectl/migrate.py itself
    for path in (root / "sql" / "pipectl").glob("*.sql"):
        names.update(n.lower() for n in created.findall(path.read_text(encoding="utf-8")))
    return names


def _strings(tree: ast.AST) -> Iterator[ast.Constant]:
    """String constants, f-string parts included, docstrings excluded."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node


def schema_sql_outside_the_store(root: Path) -> set[tuple[str, str]]:
    """(file, the pipectl objects named) for each SQL string on the schema outside its homes.
    A name followed by a dot is a Python module (pipectl.checks.engine), not a table."""
    objects = _schema_objects(root)
    reference = re.compile(r"\bpipectl\.(" + "|".join(sorted(objects)) + r")\b(?![.\w])", re.I)
    found: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith((".", "pipectl/agent/", "pipectl/checks/", "pipectl/console/")):
            continue  # hidden dirs (.venv) and the symlinks to agent/, checks/, console/
        if relative.startswith(SCHEMA_SQL_HOMES):
            continue
        for node in _strings(ast.parse(path.read_text(encoding="utf-8"))):
            named = sorted({f"pipectl.{m.lower()}" for m in reference.findall(node.value)})
            if named and _SQL_WORDS.search(node.value):
                found.add((relative, ", ".join(named)))
    return found


def test_only_the_store_writes_sql_on_the_pipectl_schema() -> None:
    leaks = schema_sql_outside_the_store(REPO) - SCHEMA_SQL_ALLOWED
    assert not leaks, f"SQL on the pipectl schema outside pipectl/store/: {sorted(leaks)}"


def test_the_schema_sql_scan_finds_a_leak(tmp_path: Path) -> None:
    (tmp_path / "sql" / "pipectl").mkdir(parents=True)
    (tmp_path / "sql" / "pipectl" / "0001.sql").write_text("CREATE TABLE pipectl.runs (id int);")
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "data.py").write_text(
        '"""Reads pipectl.runs (a docstring, not SQL)."""\n'
        "import pipectl.runs_helper\n"
        'LOGGER = "pipectl.runs.detail"\n'
        "def f(step):\n"
        '    return f"SELECT max(finished_at) FROM pipectl.runs WHERE step = {step}"\n'
    )
    assert schema_sql_outside_the_store(tmp_path) == {("console/data.py", "pipectl.runs")}


def test_no_import_cycle_inside_the_agent() -> None:
    """The agent's parts depend one way (service -> parts -> runtime), never back."""
    import grimp  # installed with import-linter (the dev extra)

    graph = grimp.build_graph("pipectl")
    modules = sorted(m for m in graph.modules if m.startswith("pipectl.agent."))
    assert "pipectl.agent.runtime" in modules
    cycles = [
        (a, b)
        for a in modules
        for b in modules
        if a < b and graph.chain_exists(a, b) and graph.chain_exists(b, a)
    ]
    assert not cycles
