"""A check kind's module loads when a config names it (checks/registry.py): `pipectl check`
of freshness, volume and quality checks loads none of the other kinds, and a config's errors
read the same whichever kinds are loaded. Each case runs in a fresh interpreter (this one has
loaded every kind)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipectl.checks.registry import BUILT_IN

PROBE = """
import json, sys
import pipectl.checks
from pipectl.config import ConfigError, parse_config_text
try:
    parse_config_text(sys.stdin.read(), "pipectl.toml", environ={})
    error = None
except ConfigError as exc:
    error = str(exc)
kinds = sorted(k for k, m in BUILT_IN.items() if m in sys.modules)
loaded = sorted(m for m in ("pipectl.checks.incremental", "pipectl.audit") if m in sys.modules)
print(json.dumps({"kinds": kinds, "error": error, "loaded": loaded}))
"""

HEAD = '[database]\ndsn = "postgresql://localhost/x"\n'


def check(name: str, kind: str, body: str) -> str:
    return f'\n[[checks]]\nname = "{name}"\nkind = "{kind}"\n{body}'


FRESHNESS = check(
    "fresh",
    "freshness",
    'table = "public.t"\ncolumn = "at"\nwarn_after = "1h"\nerror_after = "2h"\n',
)
QUALITY = check(
    "present", "quality", 'table = "public.t"\nrule = { type = "not_null", column = "a" }\n'
)
AUDIT = check("audited", "audit", 'step = "s"\n')


def parsed(text: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", f"from pipectl.checks.registry import BUILT_IN\n{PROBE}"],
        input=text,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_only_the_kinds_a_config_names_are_loaded() -> None:
    found = parsed(HEAD + FRESHNESS + QUALITY)
    assert found["error"] is None
    assert found["kinds"] == ["freshness", "quality"]
    assert found["loaded"] == []  # nor the agent's window cache, nor the audit's engine


def test_a_kind_named_is_loaded_with_its_own_modules() -> None:
    found = parsed(HEAD + QUALITY + AUDIT)
    assert isinstance(found["error"], str)  # step "s" does not exist: said as ever
    assert "audit" in found["kinds"]
    assert "pipectl.audit" in found["loaded"]  # type: ignore[operator]


def test_an_unknown_kind_is_named_with_every_known_kind_whatever_is_loaded() -> None:
    names = ", ".join(BUILT_IN)
    for text in (HEAD + QUALITY + check("typo", "qualty", ""), HEAD + check("typo", "qualty", "")):
        error = parsed(text)["error"]
        assert isinstance(error, str)
        assert f"unknown check kind 'qualty'; expected one of {names}" in error, error
