"""The DAG a flow class declares: its public ``@step`` methods, what each waits for, checked.

``@step(depends_on=..., inputs=...)`` is read and checked against the method here
(:func:`declared_dag`, :func:`check_step_parameters`); ``@flow_type`` then checks the steps
named exist and form no cycle (:func:`check_dag_definition`), and :func:`pyergon.dag` runs the
:class:`DagShape` that :func:`dag_shape` builds. Steps are named by their step name (the
method's name, or the ``name=`` given to ``@step``); methods whose names start with ``_`` are
no DAG steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyergon.core.graph import StepGraph
from pyergon.errors import FlowDefinitionError

if TYPE_CHECKING:
    from pyergon.decorators import StepMethod

__all__ = [
    "DagShape",
    "check_dag_definition",
    "check_step_parameters",
    "dag_shape",
    "declared_dag",
    "unfed_parameters",
]

_FED_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True, slots=True, eq=False)
class DagShape:
    """The DAG of a flow class, checked: what :func:`pyergon.dag` runs.

    Attributes:
        flow_type: The class's qualified name, for messages.
        steps: The public ``@step`` methods by step name, in declaration order.
        graph: Their dependencies.
        order: The order in which the steps take their log positions (see
            :meth:`~pyergon.core.graph.StepGraph.order`).
        last: The step whose result is the DAG's when no ``final_step`` is given: the last
            declared step of the last level (``""`` for a class without steps).
        unfed: For each step with required parameters that no input feeds, their names.
    """

    flow_type: str
    steps: Mapping[str, StepMethod]
    graph: StepGraph
    order: tuple[str, ...]
    last: str
    unfed: Mapping[str, tuple[str, ...]]


def declared_dag(
    depends_on: object, inputs: object
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Read ``@step(depends_on=..., inputs=...)``: the steps waited for, and the inputs.

    Returns:
        The step names waited for (``depends_on``, then the sources of ``inputs``, each once),
        and the ``(parameter, step name)`` pairs of ``inputs``.

    Raises:
        FlowDefinitionError: ``depends_on`` is not a name or a list of names, or ``inputs``
            is not a mapping of parameter names to step names.
    """
    if depends_on is None:
        needs: tuple[str, ...] = ()
    elif isinstance(depends_on, str):
        needs = (depends_on,)
    elif isinstance(depends_on, Sequence) and all(isinstance(n, str) for n in depends_on):
        needs = tuple(depends_on)
    else:
        raise FlowDefinitionError(
            f"@step(depends_on=...) takes a step name or a list of step names, got {depends_on!r}"
        )
    if inputs is None:
        fed: tuple[tuple[str, str], ...] = ()
    elif isinstance(inputs, Mapping) and all(
        isinstance(key, str) and isinstance(value, str) for key, value in inputs.items()
    ):
        fed = tuple(inputs.items())
    else:
        raise FlowDefinitionError(
            "@step(inputs=...) takes a dict of parameter names to step names, such as "
            f'{{"data": "load"}}, got {inputs!r}'
        )
    return tuple(dict.fromkeys((*needs, *(source for _, source in fed)))), fed


def _parameters(method: Callable[..., Any]) -> list[inspect.Parameter]:
    """The method's parameters after ``self``."""
    parameters = list(inspect.signature(method).parameters.values())
    if parameters and parameters[0].kind is not inspect.Parameter.VAR_POSITIONAL:
        parameters = parameters[1:]
    return parameters


def unfed_parameters(method: Callable[..., Any], inputs: Sequence[tuple[str, str]]) -> list[str]:
    """The parameters of ``method`` a call with only ``inputs`` as keywords leaves without value."""
    fed = {parameter for parameter, _ in inputs}
    return [
        parameter.name
        for parameter in _parameters(method)
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and (parameter.name not in fed or parameter.kind not in _FED_BY_KEYWORD)
    ]


def check_step_parameters(
    method: Callable[..., Any], depends_on: Sequence[str], inputs: Sequence[tuple[str, str]]
) -> None:
    """Check a DAG step's method takes its inputs and needs no other argument.

    Raises:
        FlowDefinitionError: An input names a parameter the method does not take by keyword,
            or the step declares ``depends_on`` or ``inputs`` and a required parameter of it is
            fed by no input.
    """
    if not depends_on and not inputs:
        return
    parameters = _parameters(method)
    keywords = {p.name for p in parameters if p.kind in _FED_BY_KEYWORD}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    where = f"step {method.__qualname__}"
    for parameter, source in inputs:
        if parameter not in keywords and not takes_any:
            taken = ", ".join(sorted(keywords)) or "none besides self"
            raise FlowDefinitionError(
                f"{where} takes its input {parameter!r} from step {source!r}, but the method "
                f"has no parameter {parameter!r} to pass it as (its parameters: {taken}); "
                "rename the input or add the parameter"
            )
    missing = unfed_parameters(method, inputs)
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise FlowDefinitionError(
            f"{where} runs in a DAG (it declares depends_on or inputs), where it is called "
            f"with its inputs only, but no input feeds its required parameter(s) {names}; "
            f"add inputs={{{missing[0]!r}: '<step name>'}} or give it a default"
        )


def check_dag_definition(cls: type, methods: Sequence[StepMethod]) -> None:
    """Check the DAG a flow class declares, if any of its steps declares one.

    Raises:
        FlowDefinitionError: See :func:`dag_shape`.
    """
    if any(method.spec.depends_on for method in methods):
        dag_shape(cls, methods)


def dag_shape(cls: type, methods: Sequence[StepMethod]) -> DagShape:
    """Build and check the DAG of a flow class from its ``@step`` methods.

    Raises:
        FlowDefinitionError: Two public steps share a name, a private step declares
            dependencies, a dependency or input names no public step of the class, or the
            dependencies form a cycle (named in the message).
    """
    where = f"flow type {cls.__qualname__}"
    steps: dict[str, StepMethod] = {}
    for method in methods:
        if method.attribute.startswith("_"):
            if method.spec.depends_on:
                raise FlowDefinitionError(
                    f"step {method.attribute!r} of {where} declares depends_on or inputs, but "
                    "dag() leaves out private steps (names starting with '_'); drop the '_'"
                )
            continue
        name = method.spec.name
        if name in steps:
            raise FlowDefinitionError(
                f"{where} has two steps named {name!r} (methods {steps[name].attribute!r} and "
                f"{method.attribute!r}), so a DAG cannot tell them apart; give one another "
                "name= in its @step"
            )
        steps[name] = method
    for name, method in steps.items():
        for need in method.spec.depends_on:
            if need not in steps:
                raise FlowDefinitionError(_unknown_step(where, name, method, need, methods))
    graph = StepGraph.of({name: method.spec.depends_on for name, method in steps.items()})
    cycle = graph.cycle()
    if cycle is not None:
        raise FlowDefinitionError(
            f"the steps of {where} depend on each other in a cycle: {' -> '.join(cycle)} "
            "(each waits for the next); remove one of these dependencies"
        )
    levels = graph.levels()
    unfed = {
        name: tuple(missing)
        for name, method in steps.items()
        if (missing := unfed_parameters(method.method, method.spec.inputs))
    }
    return DagShape(
        cls.__qualname__,
        steps,
        graph,
        graph.order(),
        levels[-1][-1] if levels else "",
        unfed,
    )


def _unknown_step(
    where: str, name: str, method: StepMethod, need: str, methods: Sequence[StepMethod]
) -> str:
    """Why ``need`` names no step of the DAG, and what to do."""
    sources = [parameter for parameter, source in method.spec.inputs if source == need]
    what = f"takes its input {sources[0]!r} from {need!r}" if sources else f"depends on {need!r}"
    public = ", ".join(m.spec.name for m in methods if not m.attribute.startswith("_"))
    hint = f"fix the name or add the step (its steps: {public})"
    for other in methods:
        if other.attribute.startswith("_") and need in (other.attribute, other.spec.name):
            hint = "dag() leaves out private steps (names starting with '_'); drop the '_'"
        elif other.attribute == need and other.spec.name != need:
            hint = (
                f"{need!r} is the method of the step named {other.spec.name!r}; "
                "name steps by their step name"
            )
    return f"step {name!r} of {where} {what}, which is not a @step method of the class; {hint}"
