"""Gates in the config and in requests: what is refused, where, and why."""

from __future__ import annotations

import textwrap

import pytest

from pipectl.config import ConfigError, parse_config_text
from pipectl.model import RequestKind
from pipectl.request_args import ArgsError, PublishArgs, describe_args


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(textwrap.dedent(text).lstrip("\n"), "g.toml", environ={})
    return [str(p) for p in caught.value.problems]


def test_a_gated_matview_step_parses_with_its_defaults() -> None:
    loaded = parse_config_text(
        textwrap.dedent(
            """
            [[steps]]
            name = "s"
            kind = "matview"
            relation = "public.summary"
            [steps.gates]
            row_count = { min_ratio = 0.5 }
            groups = { keys = ["rule_id"] }
            """
        ),
        "g.toml",
        environ={},
    )
    step = loaded.config.step("s")
    assert step.gates is not None and step.gates.builtin
    assert step.gated_relation is not None and str(step.gated_relation) == "public.summary"
    assert step.gates.groups is not None and step.gates.groups.max_lost == 0.0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'kind = "view"\nrelation = "public.v"\ngates = { not_null = ["a"] }',
            "a view step refreshes nothing: it cannot have gates",
        ),
        (
            'kind = "sql"\nsql = "SELECT 1"\ngates = { not_null = ["a"] }',
            "an sql step's built-in gates need 'gates.relation'",
        ),
        (
            'kind = "matview"\nrelation = "public.m"\ngates = { row_count = {} }',
            "give 'min_ratio', 'max_ratio' or both",
        ),
        (
            'kind = "matview"\nrelation = "public.m"\n'
            "gates = { row_count = { min_ratio = 2, max_ratio = 1 } }",
            "'min_ratio' is above 'max_ratio'",
        ),
        (
            'kind = "matview"\nrelation = "public.m"\n'
            'gates = { groups = { keys = ["k"], max_lost = 1.5 } }',
            "less than or equal to 1",
        ),
        (
            'kind = "matview"\nrelation = "public.m"\ngates = { not_null = ["bad name;"] }',
            "bad name;",
        ),
    ],
)
def test_gate_settings_that_cannot_work_are_refused(body: str, expected: str) -> None:
    found = problems(f'[[steps]]\nname = "s"\n{body}\n')
    assert any(expected in p for p in found), found
    assert all(p.startswith("g.toml:") for p in found)


def test_a_gate_check_must_be_configured_with_a_suggestion() -> None:
    found = problems(
        """
        [[steps]]
        name = "s"
        kind = "matview"
        relation = "public.m"
        gates = { checks = ["rule_id_presnt"] }

        [[checks]]
        name = "rule_id_present"
        kind = "quality"
        table = "public.m"
        rule = { type = "not_null", column = "rule_id" }
        """
    )
    assert found == [
        "g.toml:5: steps.s.gates.checks: unknown check 'rule_id_presnt';"
        " did you mean 'rule_id_present'?"
    ]


def test_publish_arguments_name_the_held_run() -> None:
    assert PublishArgs.parse({"run": 42}).run == 42
    assert describe_args(RequestKind.PUBLISH, {"run": 42}) == "run 42"
    for bad in ({}, {"run": True}, {"run": "42"}, {"run": 0}, {"run": 2**63}, {"run": 1, "x": 1}):
        with pytest.raises(ArgsError):
            PublishArgs.parse(bad)
    assert describe_args(RequestKind.PUBLISH, {"run": -1}) == "bad args"
