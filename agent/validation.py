"""The steps of a config against the database's catalog: each relation exists, of its kind."""

from __future__ import annotations

from pipectl.config import ConfigError, LoadedConfig, Problem
from pipectl.store.base import Conn


async def validate_steps(conn: Conn, loaded: LoadedConfig) -> None:
    """Every step's relation exists and has the right kind; otherwise a ConfigError."""
    label = str(loaded.file or "config")
    problems: list[Problem] = []
    for step in loaded.config.steps:
        if step.relation is None or not step.enabled:
            continue
        kind = await conn.fetchval(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = $2",
            step.relation.schema,
            step.relation.name,
        )
        path = f"steps.{step.name}.relation"
        if kind is None:
            problems.append(
                Problem(label, None, path, f"{step.relation} does not exist in the database")
            )
        elif step.kind == "matview" and kind != b"m":
            problems.append(
                Problem(
                    label,
                    None,
                    path,
                    f"{step.relation} is not a materialized view "
                    '(use kind = "view" for a plain view)',
                )
            )
        elif step.kind == "view" and kind not in (b"v", b"m"):
            problems.append(Problem(label, None, path, f"{step.relation} is not a view"))
    if problems:
        raise ConfigError(problems)
