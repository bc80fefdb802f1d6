"""The Prometheus alert rules, made from the template shipped in the package.

The runbook links must be absolute (Alertmanager receivers, Grafana and pagers show them out
of context) and point to wherever a deployment publishes docs/operating.md; the scrape job's
name is the deployment's too. `pipectl config rules --runbook-base URL --job NAME` prints the
rules for them; deploy/prometheus/pipectl.rules.yml is the output for the defaults.
"""

from __future__ import annotations

import re
from importlib import resources
from urllib.parse import urlsplit

# A placeholder: the .invalid top-level domain never resolves (RFC 2606).
DEFAULT_RUNBOOK_BASE = "https://pipectl.invalid/docs/operating.md"
DEFAULT_JOB = "pipectl-agent"
TEMPLATE = "alert_rules.yml.in"

# Characters a job name may have here: it is written into PromQL string literals in YAML.
_JOB = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
# What a URL in a YAML double-quoted string may hold without escaping.
_URL_UNSAFE = re.compile(r'[\s"\\#{}<>`]')


def template() -> str:
    return resources.files("pipectl").joinpath(TEMPLATE).read_text(encoding="utf-8")


class RulesError(ValueError):
    """An argument the rules cannot be made with; the message says which and why."""


def render(runbook_base: str = DEFAULT_RUNBOOK_BASE, job: str = DEFAULT_JOB) -> str:
    """The rules with runbook links under `runbook_base` (an absolute http(s) URL of
    operating.md, without a fragment) and `job` as the agents' scrape job."""
    problems = [*_runbook_problems(runbook_base), *_job_problems(job)]
    if problems:
        raise RulesError("; ".join(problems))
    return template().replace("@runbook_base@", runbook_base).replace("@job@", job)


def _runbook_problems(base: str) -> list[str]:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return [f"--runbook-base: expected an absolute http(s) URL, got {base!r}"]
    if _URL_UNSAFE.search(base):
        return [
            f"--runbook-base: {base!r} has a fragment, quote, brace or white space"
            " (the rules add #alertname themselves)"
        ]
    return []


def _job_problems(job: str) -> list[str]:
    if _JOB.fullmatch(job):
        return []
    return [f"--job: {job!r} is not a job name pipectl writes into rules (A-Z a-z 0-9 _ . : / -)"]
