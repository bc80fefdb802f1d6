"""The one step DAG (pipectl.dag): run order, its tie-break, and why the agent (config) and the
console/CLI (published steps) cannot disagree about it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipectl.config import StepConfig
from pipectl.dag import CycleError, Dag, dependents, find_cycle


def _step(name: str, *deps: str) -> StepConfig:
    return StepConfig(name=name, kind="sql", sql="SELECT 1", depends_on=list(deps))


def test_siblings_run_by_name_whatever_the_config_order() -> None:
    """The case that split them: the agent ran zeta first (config order), the dialog alpha."""
    steps = [_step("root"), _step("zeta_summary", "root"), _step("alpha_summary", "root")]
    dag = Dag.from_steps(steps)
    assert dag.with_downstream("root") == ["root", "alpha_summary", "zeta_summary"]
    assert dag.order() == ["root", "alpha_summary", "zeta_summary"]
    published = {"alpha_summary": ("root",), "root": (), "zeta_summary": ("root",)}
    assert Dag(published).rerun("root", downstream=True) == dag.rerun("root", downstream=True)


def test_order_downstream_and_upstream() -> None:
    dag = Dag.from_steps(
        [_step("c", "b"), _step("a"), _step("b", "a"), _step("d", "a"), _step("e")]
    )
    assert dag.order() == ["a", "b", "c", "d", "e"]
    assert dag.with_downstream("a") == ["a", "b", "c", "d"]
    assert dag.with_downstream("b") == ["b", "c"]
    assert dag.rerun("b", downstream=False) == ["b"]
    assert dag.upstream("c") == ["b"]
    assert dag.downstream("a") == ["b", "d"]
    assert dag.ancestors("c") == {"a", "b"}
    assert dag.descendants("a") == {"b", "c", "d"}


def test_ready_steps_go_by_name_not_by_depth() -> None:
    """`a_late` waits for `z_first`; `b` is ready at once and goes before `z_first`."""
    dag = Dag({"a_late": ["z_first"], "b": [], "z_first": []})
    assert dag.order() == ["b", "z_first", "a_late"]


def test_upstreams_outside_the_dag_are_listed_but_not_ordered() -> None:
    """An enabled step may depend on a disabled one, which is no step of the agent's DAG."""
    dag = Dag({"a": ["disabled"], "b": ["a"]})
    assert dag.upstream("a") == ["disabled"]
    assert dag.order() == ["a", "b"]
    assert dag.ancestors("b") == {"a"}


def test_cycles_are_refused_and_unknown_names_are_errors() -> None:
    with pytest.raises(CycleError, match="a -> b -> a"):
        Dag.from_steps([_step("a", "b"), _step("b", "a")])
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"x": ["x"]}) == ["x"]
    with pytest.raises(KeyError):
        Dag({"a": []}).order(["a", "nope"])


def test_dependents_is_total_on_any_published_graph() -> None:
    assert dependents({"a": [], "b": ["a"], "c": ["a", "b"], "x": ["x"]}, "a") == ["b", "c"]
    assert dependents({"b": ["gone"]}, "gone") == ["b"]


# ----------------------------------------------------------------------------- properties

NAMES = [f"{prefix}_{i}" for prefix in ("alpha", "mid", "zeta") for i in range(4)]


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random DAG: a random subset of NAMES in a random topological position each; every
    step may depend on any step placed before it."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=10, unique=True))
    graph: dict[str, list[str]] = {}
    for index, name in enumerate(names):
        graph[name] = draw(st.lists(st.sampled_from(names[:index]), unique=True)) if index else []
    return graph


def _shuffled(graph: dict[str, list[str]], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    items = list(graph.items())
    rng.shuffle(items)
    return {name: rng.sample(ups, len(ups)) for name, ups in items}


@given(graphs(), st.integers())
def test_order_is_topological_and_ignores_config_order(
    graph: dict[str, list[str]], seed: int
) -> None:
    dag = Dag(graph)
    order = dag.order()
    assert sorted(order) == sorted(graph)
    position = {name: i for i, name in enumerate(order)}
    for name in graph:
        assert all(position[up] < position[name] for up in dag.ancestors(name))
    assert Dag(_shuffled(graph, seed)).order() == order


@given(graphs(), st.integers())
def test_each_next_step_is_the_first_by_name_of_those_ready(
    graph: dict[str, list[str]], seed: int
) -> None:
    dag = Dag(graph)
    start = sorted(graph)[seed % len(graph)]
    plan = dag.with_downstream(start)
    placed: set[str] = set()
    for name in plan:
        ready = [n for n in plan if n not in placed and dag.ancestors(n) & set(plan) <= placed]
        assert name == min(ready)
        placed.add(name)


@given(graphs(), st.integers(), st.lists(st.sampled_from(["other_1", "other_2", "other_3"])))
def test_a_rerun_plan_depends_only_on_the_step_and_its_descendants(
    graph: dict[str, list[str]], seed: int, extra: list[str]
) -> None:
    """Published steps may hold more than one agent's config: steps that are not descendants
    of the rerun step, even when plan steps depend on them, do not change the plan."""
    dag = Dag(graph)
    start = sorted(graph)[seed % len(graph)]
    plan = dag.rerun(start, downstream=True)
    bigger = _shuffled(graph, seed)
    rng = random.Random(seed)
    for other in extra:
        bigger.setdefault(other, [])
        # Any step may depend on the extra one: it is upstream, never downstream, of start.
        bigger[rng.choice(sorted(graph))].append(other)
    assert Dag(bigger).rerun(start, downstream=True) == plan
