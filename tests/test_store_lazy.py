"""`pipectl.store` loads its modules as their names are used (PEP 562): the table of where
each name lives matches the imports mypy reads, and importing the package loads none."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipectl import store


def _typed_imports() -> dict[str, str]:
    """The `if TYPE_CHECKING:` imports of pipectl/store/__init__.py: name -> module."""
    tree = ast.parse(Path(store.__file__).read_text())
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipectl.store."):
            for alias in node.names:
                found[alias.name] = str(node.module).rsplit(".", 1)[1]
    return found


def test_every_name_lives_where_the_imports_say() -> None:
    homes = store._HOME
    assert homes == _typed_imports()
    assert set(homes) == set(store.__all__)
    for name, module in homes.items():
        home = importlib.import_module(f"pipectl.store.{module}")
        assert getattr(store, name) is getattr(home, name), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'record_resutl'"):
        store.record_resutl  # noqa: B018


def test_importing_the_package_loads_none_of_its_modules() -> None:
    probe = (
        "import sys, pipectl.store as s; print(sorted(m for m in sys.modules"
        " if m.startswith('pipectl.store.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
