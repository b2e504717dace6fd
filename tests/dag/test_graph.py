"""The pure dependency graph: order with declaration order breaking ties, levels, cycles,
descendants; no flow, no storage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyergon.core.graph import StepGraph

DIAMOND = StepGraph.of(
    {"root": [], "left": ["root"], "right": ["root"], "merge": ["left", "right"]}
)


def test_order_puts_each_step_after_its_dependencies_and_breaks_ties_by_declaration() -> None:
    graph = StepGraph.of({"z": [], "b": ["z"], "a": [], "c": ["a", "b"], "y": []})

    assert graph.order() == ("z", "b", "a", "c", "y")


def test_a_step_free_earlier_but_declared_later_waits_its_turn() -> None:
    # source frees left and right at once; left's own follower comes before right, declared later.
    graph = StepGraph.of(
        {"source": [], "left": ["source"], "left_more": ["left"], "right": ["source"]}
    )

    assert graph.order() == ("source", "left", "left_more", "right")


def test_levels_are_longest_chains_in_declaration_order() -> None:
    graph = StepGraph.of({"a": [], "b": ["a"], "c": [], "d": ["b", "c"], "e": ["a"]})

    assert graph.levels() == (("a", "c"), ("b", "e"), ("d",))
    assert DIAMOND.levels() == (("root",), ("left", "right"), ("merge",))


def test_roots_leaves_and_direct_neighbours() -> None:
    assert DIAMOND.roots == ("root",)
    assert DIAMOND.leaves == ("merge",)
    assert DIAMOND.depends_on("merge") == ("left", "right")
    assert DIAMOND.dependents("root") == ("left", "right")


def test_descendants_are_everything_downstream_in_declaration_order() -> None:
    assert DIAMOND.descendants(["left"]) == ("merge",)
    assert DIAMOND.descendants(["root"]) == ("left", "right", "merge")
    assert DIAMOND.descendants(["merge"]) == ()
    assert DIAMOND.descendants(["root", "left"]) == ("left", "right", "merge")


def test_a_cycle_is_named_from_where_the_search_meets_it() -> None:
    graph = StepGraph.of({"a": ["b"], "b": ["c"], "c": ["a"], "d": []})

    assert graph.cycle() == ("a", "b", "c", "a")
    assert StepGraph.of({"solo": ["solo"]}).cycle() == ("solo", "solo")
    assert DIAMOND.cycle() is None
    with pytest.raises(ValueError, match="cycle: a -> b -> c -> a"):
        graph.order()


def test_a_cycle_behind_an_acyclic_part_is_found() -> None:
    graph = StepGraph.of({"start": [], "x": ["start", "y"], "y": ["x"]})

    assert graph.cycle() == ("x", "y", "x")


def test_unknown_names_and_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="'b' depends on 'nowhere'"):
        StepGraph.of({"a": [], "b": ["nowhere"]})
    with pytest.raises(ValueError, match="unique"):
        StepGraph(("a", "a"), ((), ()))
    with pytest.raises(KeyError, match="'ghost'"):
        DIAMOND.descendants(["ghost"])


def test_an_empty_graph_has_no_order_and_no_levels() -> None:
    empty = StepGraph.of({})

    assert (empty.order(), empty.levels(), empty.roots, empty.cycle()) == ((), (), (), None)


@st.composite
def acyclic(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random DAG: each step may depend on steps declared before it, in any order."""
    count = draw(st.integers(0, 12))
    names = [f"s{number}" for number in range(count)]
    graph = {
        name: draw(st.lists(st.sampled_from(names[:index]), unique=True)) if index else []
        for index, name in enumerate(names)
    }
    order = draw(st.permutations(names))
    return {name: graph[name] for name in order}


@given(acyclic())
def test_every_order_respects_every_dependency_and_levels_agree(
    dependencies: dict[str, list[str]],
) -> None:
    graph = StepGraph.of(dependencies)
    order = graph.order()

    assert sorted(order) == sorted(dependencies)
    place = {name: index for index, name in enumerate(order)}
    level = {name: number for number, row in enumerate(graph.levels()) for name in row}
    for name, needs in dependencies.items():
        for need in needs:
            assert place[need] < place[name]
            assert level[need] < level[name]
        assert set(graph.descendants([name])).isdisjoint({name, *needs})
    assert graph.cycle() is None
