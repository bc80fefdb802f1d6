"""Layering: the import-linter contracts in pyproject.toml hold (checked by `lint-imports` in
.ci/run), every core module is under the core contract, and the core, the CLI and the agent
import without Textual. The installed wheel puts nothing but `pipectl` in site-packages."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
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
    if not linter.exists():
        pytest.skip("import-linter is not installed (the dev extra)")
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
    for module in ("agent/service.py", "checks/engine.py", "console/app.py", "console/app.tcss"):
        assert f"pipectl/{module}" in names
    assert not any(n.startswith("bench/") for n in names)
