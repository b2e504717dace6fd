"""Dependency graphs of named steps: order, levels, cycles and descendants. Pure, no I/O.

A :class:`StepGraph` holds step names in the order they were declared and, for each, the names
of the steps it depends on. It answers what a DAG flow and its tools ask: one topological order
in which declaration order breaks ties (so log positions never depend on timing), the level of
each step (its longest chain of dependencies), a cycle if there is one, and the steps downstream
of some (what has to run again when they change).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["StepGraph"]


@dataclass(frozen=True, slots=True)
class StepGraph:
    """Steps and what each depends on, in declaration order.

    Build one with :meth:`of`. Every dependency names a step of the graph; the graph may hold a
    cycle (:meth:`cycle` finds it), but :meth:`order` and :meth:`levels` need one without.

    Attributes:
        names: The steps, in declaration order.
        dependencies: For each step (in the order of ``names``), the steps it depends on.
    """

    names: tuple[str, ...]
    dependencies: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.dependencies):
            raise ValueError("a StepGraph needs one tuple of dependencies per step")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"a StepGraph's step names must be unique: {self.names}")
        known = set(self.names)
        for name, needs in zip(self.names, self.dependencies, strict=True):
            for need in needs:
                if need not in known:
                    raise ValueError(f"step {name!r} depends on {need!r}, not a step of the graph")

    @classmethod
    def of(cls, dependencies: Mapping[str, Iterable[str]]) -> StepGraph:
        """Build a graph from ``{step: its dependencies}``, in the mapping's order.

        Raises:
            ValueError: A dependency names no step of the mapping.
        """
        return cls(
            tuple(dependencies),
            tuple(tuple(dict.fromkeys(needs)) for needs in dependencies.values()),
        )

    def depends_on(self, name: str) -> tuple[str, ...]:
        """The steps ``name`` depends on directly.

        Raises:
            KeyError: ``name`` is not a step of the graph.
        """
        return self.dependencies[self._index(name)]

    def dependents(self, name: str) -> tuple[str, ...]:
        """The steps that depend on ``name`` directly, in declaration order.

        Raises:
            KeyError: ``name`` is not a step of the graph.
        """
        self._index(name)
        return tuple(
            step for step, needs in zip(self.names, self.dependencies, strict=True) if name in needs
        )

    @property
    def roots(self) -> tuple[str, ...]:
        """The steps that depend on none, in declaration order."""
        return tuple(
            name for name, needs in zip(self.names, self.dependencies, strict=True) if not needs
        )

    @property
    def leaves(self) -> tuple[str, ...]:
        """The steps no step depends on, in declaration order."""
        needed = {need for needs in self.dependencies for need in needs}
        return tuple(name for name in self.names if name not in needed)

    def cycle(self) -> tuple[str, ...] | None:
        """A cycle of dependencies, as ``("a", "b", "a")`` (a needs b, b needs a); ``None`` if none.

        The search follows declaration order, so the same graph always names the same cycle.
        """
        index = {name: number for number, name in enumerate(self.names)}
        state = [0] * len(self.names)  # 0: not seen, 1: on the current path, 2: done
        for start in range(len(self.names)):
            if state[start]:
                continue
            path = [start]
            next_needs = [iter(self.dependencies[start])]
            state[start] = 1
            while path:
                need = next(next_needs[-1], None)
                if need is None:
                    state[path.pop()] = 2
                    next_needs.pop()
                    continue
                at = index[need]
                if state[at] == 1:
                    loop = path[path.index(at) :]
                    return tuple(self.names[step] for step in (*loop, at))
                if state[at] == 0:
                    state[at] = 1
                    path.append(at)
                    next_needs.append(iter(self.dependencies[at]))
        return None

    def order(self) -> tuple[str, ...]:
        """Every step after the steps it depends on; among steps free to go, the first declared.

        Raises:
            ValueError: The graph has a cycle (named in the message).
        """
        index = {name: number for number, name in enumerate(self.names)}
        waiting = [len(needs) for needs in self.dependencies]
        dependents: list[list[int]] = [[] for _ in self.names]
        for number, needs in enumerate(self.dependencies):
            for need in needs:
                dependents[index[need]].append(number)
        ready = [number for number, count in enumerate(waiting) if count == 0]
        heapq.heapify(ready)
        ordered: list[str] = []
        while ready:
            number = heapq.heappop(ready)
            ordered.append(self.names[number])
            for dependent in dependents[number]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    heapq.heappush(ready, dependent)
        if len(ordered) != len(self.names):
            raise ValueError(f"the steps depend on each other in a cycle: {self._cycle_text()}")
        return tuple(ordered)

    def levels(self) -> tuple[tuple[str, ...], ...]:
        """The steps by level: level 0 depends on nothing, level n on some step of level n - 1.

        A step's level is the length of its longest chain of dependencies; each level lists
        its steps in declaration order.

        Raises:
            ValueError: The graph has a cycle.
        """
        level: dict[str, int] = {}
        for name in self.order():
            level[name] = 1 + max((level[need] for need in self.depends_on(name)), default=-1)
        rows: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for name in self.names:
            rows[level[name]].append(name)
        return tuple(tuple(row) for row in rows)

    def descendants(self, names: Iterable[str]) -> tuple[str, ...]:
        """The steps that depend on any of ``names``, directly or not, in declaration order.

        ``names`` themselves are left out unless one depends on another.

        Raises:
            KeyError: A name is not a step of the graph.
        """
        given = set(names)
        for name in given:
            self._index(name)
        found: set[str] = set()
        frontier = list(given)
        while frontier:
            for dependent in self.dependents(frontier.pop()):
                if dependent not in found:
                    found.add(dependent)
                    frontier.append(dependent)
        return tuple(name for name in self.names if name in found)

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a step of the graph") from None

    def _cycle_text(self) -> str:
        found = self.cycle()
        return " -> ".join(found) if found is not None else "(none)"
