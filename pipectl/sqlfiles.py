"""Where the shipped SQL lives: inside the wheel, or beside the package in a checkout."""

from __future__ import annotations

from pathlib import Path


def sql_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "pipectl").is_dir():
            return candidate
    raise FileNotFoundError(f"pipectl's sql/ folder is missing (looked beside {here})")
