"""The config against the database catalog: one validation for the agent and `config check`.

What the file alone cannot tell: each enabled step's relation exists and is of its kind, each
enabled check's tables and columns exist with usable types. Both read only the catalog, so any
role that can connect may run them, and the pipectl schema need not be installed.
"""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from pipectl import incremental as sql
from pipectl.checks.catalog import load_catalog
from pipectl.checks.engine import CheckEngine
from pipectl.config import ConfigError, LoadedConfig, Problem
from pipectl.store import incremental
from pipectl.store.base import Conn


async def validate_catalog(conn: Conn, loaded: LoadedConfig) -> CheckEngine:
    """Steps and checks against the catalog: a ConfigError listing every problem of both,
    each on its line of the file where the file says; otherwise the checks engine, validated
    (its catalog read), ready to run the checks."""
    engine = CheckEngine(loaded.config, config_file=_label(loaded))
    problems = await step_problems(conn, loaded) + await engine.problems(conn)
    if problems:
        raise ConfigError(located(problems, loaded))
    engine.warnings.extend(await incremental_warnings(conn, loaded))
    return engine


async def validate_steps(conn: Conn, loaded: LoadedConfig) -> None:
    """Every enabled step's relation exists and has the right kind; otherwise a ConfigError."""
    problems = await step_problems(conn, loaded)
    if problems:
        raise ConfigError(located(problems, loaded))


async def step_problems(conn: Conn, loaded: LoadedConfig) -> list[Problem]:
    """One catalog query for every relation the enabled steps name."""
    steps = [s for s in loaded.config.steps if s.enabled and s.relation is not None]
    catalog = await load_catalog(conn, [s.relation for s in steps if s.relation is not None])
    label = _label(loaded)
    problems: list[Problem] = []
    for step in steps:
        assert step.relation is not None
        path = f"steps.{step.name}.relation"
        table = catalog.get(step.relation)
        if table is None:
            message = f"{step.relation} does not exist in the database"
        elif step.kind == "matview" and table.kind != "m":
            message = (
                f'{step.relation} is not a materialized view (use kind = "view" for a plain view)'
            )
        elif step.kind == "view" and table.kind not in ("v", "m"):
            message = f"{step.relation} is not a view"
        elif step.kind == "incremental" and table.kind != "r":
            message = (
                f"{step.relation} is not a table yet: run `pipectl db incremental {step.name}` "
                "(it replaces the view by the incremental summary's table)"
            )
        else:
            continue
        problems.append(Problem(label, None, path, message))
    return problems


async def incremental_warnings(conn: Conn, loaded: LoadedConfig) -> list[str]:
    """What an enabled incremental step lacks in the database to be exact: its installation
    (schema 0012, `pipectl db incremental`) and its source's invalidation triggers."""
    steps = [s for s in loaded.config.steps if s.enabled and s.kind == "incremental"]
    if not steps:
        return []
    out = []
    for step in steps:
        try:
            published = await incremental.published_at(conn, step)
            triggers = await incremental.triggers_installed(conn, step)
        except asyncpg.PostgresError as exc:
            out.append(f"step {step.name}: cannot read its installation: {exc}")
            continue
        if published is None:
            out.append(
                f"step {step.name}: not installed as an incremental summary: run "
                f"`pipectl db incremental {step.name} --triggers`"
            )
        elif not triggers:
            out.append(
                f"step {step.name}: "
                + incremental.NO_TRIGGER.format(source=sql.config_of(step).source, step=step.name)
            )
    return out


def located(problems: list[Problem], loaded: LoadedConfig) -> list[Problem]:
    """Problems of the catalog put on the line that set the key (or the nearest key above it
    that the file sets), as the file's own problems are."""
    out = []
    for problem in problems:
        origin = _origin(problem.path, loaded)
        if problem.line is None and origin is not None:
            file, _, line = origin.rpartition(":")
            problem = replace(problem, file=file, line=int(line))
        out.append(problem)
    return out


def _origin(path: str, loaded: LoadedConfig) -> str | None:
    """`file:line` of the key at `path`, else of the nearest enclosing key, else of the
    enclosing item's `name`; None when the value did not come from the file."""
    parts = path.split(".")
    while parts:
        prefix = ".".join(parts)
        for key in (prefix, f"{prefix}.name"):
            file, _, line = loaded.origins.get(key, "").rpartition(":")
            if loaded.file is not None and file == str(loaded.file) and line.isdigit():
                return f"{file}:{line}"
        parts.pop()
    return None


def _label(loaded: LoadedConfig) -> str:
    return str(loaded.file or "config")
