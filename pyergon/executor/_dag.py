"""``pyergon.dag``: run a flow's steps as a DAG, each as soon as the steps it waits for finished.

Inside a running flow, every DAG step takes its log position before any of them starts, in the
DAG's one topological order (declaration order breaks ties), so positions never depend on which
step finishes first. A step then starts as soon as its dependencies finished, concurrently with
whatever else can run; a replay returns the recorded steps and runs exactly those without a
final record. Outside a running flow the steps run plainly, with the same concurrency.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from pyergon._context import current_context, in_step
from pyergon.core.graph import StepGraph
from pyergon.decorators import step_methods
from pyergon.errors import DagExecutionError
from pyergon.executor._dag_shape import DagShape, dag_shape

__all__ = ["dag", "declared_graph", "shape_of"]

_Start = Callable[[str, Mapping[str, Any]], Coroutine[Any, Any, Any]]
"""Starts the named step with its inputs; returns the coroutine that runs it."""

_shapes: weakref.WeakKeyDictionary[type, DagShape] = weakref.WeakKeyDictionary()


def shape_of(cls: type) -> DagShape:
    """The checked DAG of a flow class (built once per class).

    Raises:
        FlowDefinitionError: The class's steps do not form a valid DAG (see
            :func:`~pyergon.executor._dag_shape.dag_shape`).
    """
    shape = _shapes.get(cls)
    if shape is None:
        shape = _shapes[cls] = dag_shape(cls, step_methods(cls))
    return shape


def declared_graph(cls: type) -> StepGraph | None:
    """The DAG a flow class declares; ``None`` if none of its steps has ``depends_on``/``inputs``.

    What a rerun asks to recompute only a changed step and the steps downstream of it
    (:meth:`~pyergon.core.graph.StepGraph.descendants`); a class declaring none runs its steps
    in the order its code calls them.

    Raises:
        FlowDefinitionError: The class's steps do not form a valid DAG.
    """
    if not any(method.spec.depends_on for method in step_methods(cls)):
        return None
    return shape_of(cls).graph


async def dag(flow: object, final_step: str | None = None) -> Any:
    """Run every public ``@step`` method of ``flow`` as a node of a DAG; return one's result.

    Call it as ``return await pyergon.dag(self)`` in a ``@flow`` method. A step waits for the
    steps in its ``@step(depends_on=...)`` and ``inputs=...`` and gets its inputs as keyword
    arguments; steps that do not wait for each other run concurrently (``def`` steps in threads
    of the flow's pool, ``isolate="process"`` steps in processes). Each step's log position is
    fixed before any step starts, in one topological order in which declaration order breaks
    ties, so replays and reruns find every record where it was. Steps whose names start with
    ``_`` are no DAG steps.

    If a step fails, no further step starts; the steps already running finish (and are
    recorded), then the first failure is raised as itself, so retry policies and ``except``
    clauses see the step's own error.

    Args:
        flow: The running flow (``self``).
        final_step: The step whose result to return (by step name); by default the last
            declared step of the last level (the steps the longest chain of dependencies ends
            with).

    Returns:
        The result of ``final_step``, or of the default last step.

    Raises:
        DagExecutionError: The flow has no public ``@step`` method, ``final_step`` names no
            step, or a step has a required parameter no input feeds.
        FlowDefinitionError: The steps' dependencies name no step or form a cycle (found when
            the class is defined, for a ``@flow_type`` class whose steps declare any).
    """
    shape = shape_of(type(flow))
    _check_runnable(shape, final_step)
    context = current_context()
    start: _Start
    if context is None or in_step():
        start = _plain_start(flow, shape)
    else:
        positions = {name: context.allocate() for name in shape.order}

        def start(name: str, inputs: Mapping[str, Any]) -> Coroutine[Any, Any, Any]:
            return shape.steps[name].start(context, positions[name], flow, (), inputs)

    results = await _run(shape, start)
    return results[final_step if final_step is not None else shape.last]


def _check_runnable(shape: DagShape, final_step: str | None) -> None:
    where = f"flow type {shape.flow_type}"
    if not shape.steps:
        raise DagExecutionError(
            f"No @step methods found in {where}: dag() runs the class's public @step methods "
            "(names not starting with '_'); mark its steps with @step"
        )
    if final_step is not None and final_step not in shape.steps:
        raise DagExecutionError(
            f"final_step={final_step!r} names no step of {where}, so it was not executed (nor "
            f"any other step); pass one of {', '.join(shape.order)}"
        )
    for name, missing in shape.unfed.items():
        names = ", ".join(repr(parameter) for parameter in missing)
        raise DagExecutionError(
            f"step {name!r} of {where} has required parameter(s) {names} that no input feeds, "
            f"so dag() cannot call it; add @step(inputs={{{missing[0]!r}: '<step name>'}}) "
            "or give it a default"
        )


def _plain_start(flow: object, shape: DagShape) -> _Start:
    """Start steps as plain calls: outside a running flow, or inside a step's body."""
    context = current_context()

    def start(name: str, inputs: Mapping[str, Any]) -> Coroutine[Any, Any, Any]:
        step = shape.steps[name]
        bound = getattr(flow, step.attribute)
        if context is None and not step.is_async:
            # Outside a flow a def step is a plain call: run it in a thread, so that
            # independent steps overlap as they do in a flow.
            return asyncio.to_thread(bound, **inputs)
        coroutine: Coroutine[Any, Any, Any] = bound(**inputs)
        return coroutine

    return start


async def _run(shape: DagShape, start: _Start) -> dict[str, Any]:
    """Run the steps as their dependencies finish; return every step's result by name.

    Raises:
        BaseException: The first error a step raised, once the steps still running ended.
    """
    graph, rank = shape.graph, {name: number for number, name in enumerate(shape.order)}
    waiting = {name: len(graph.depends_on(name)) for name in shape.order}
    results: dict[str, Any] = {}
    running: dict[asyncio.Future[Any], str] = {}
    failure: BaseException | None = None

    def launch(names: list[str]) -> None:
        for name in sorted(names, key=rank.__getitem__):
            inputs = {
                parameter: results[source] for parameter, source in shape.steps[name].spec.inputs
            }
            running[asyncio.ensure_future(start(name, inputs))] = name

    launch([name for name, count in waiting.items() if count == 0])
    try:
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            ready: list[str] = []
            for task in sorted(done, key=lambda task: rank[running[task]]):
                name = running.pop(task)
                error = asyncio.CancelledError() if task.cancelled() else task.exception()
                if error is not None:
                    if failure is None:
                        failure = error
                    continue
                results[name] = task.result()
                for dependent in graph.dependents(name):
                    waiting[dependent] -= 1
                    if waiting[dependent] == 0:
                        ready.append(dependent)
            if failure is None:  # once a step failed, no further step starts
                launch(ready)
    except BaseException:  # dag() itself was stopped: so are its steps
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    if failure is not None:
        raise failure
    return results
