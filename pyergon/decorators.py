"""The three decorators that turn a dataclass into a durable flow: flow_type, flow and step.

``@step`` wraps the method in a plain function that takes the step's log position as soon as it
is *called* and returns a coroutine; outside a running flow the method just runs. A ``def``
step's body runs off the event loop (see :mod:`pyergon.executor._offload`). ``@flow``
marks the entry method, ``@flow_type`` marks the class and gives it ``invoke`` for child flows.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from pyergon._context import FlowContext, Position, current_context, in_step
from pyergon._fingerprint import code_fingerprint
from pyergon.core.retry import RetryPolicy
from pyergon.errors import FlowDefinitionError
from pyergon.executor._child import ChildHandle, start_child
from pyergon.executor._dag_shape import check_dag_definition, check_step_parameters, declared_dag
from pyergon.executor._offload import in_step_thread, run_in_thread
from pyergon.executor._process import run_in_process
from pyergon.executor._steps import run_step

__all__ = [
    "FlowSpec",
    "StepMethod",
    "StepSpec",
    "StepStart",
    "flow",
    "flow_entry",
    "flow_type",
    "flow_type_name",
    "invoke",
    "require_flow_class",
    "require_flow_instance",
    "step",
    "step_methods",
]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
C = TypeVar("C", bound=type)

Method = Callable[Concatenate[S, P], Coroutine[Any, Any, R]]
SyncMethod = Callable[Concatenate[S, P], R]

Isolation = Literal["thread", "process"]
"""Where a ``def`` step's body runs: a thread of the flow's pool, or a process of its own."""

_ISOLATIONS = ("thread", "process")

_FLOW_TYPE_ATTR = "__pyergon_flow_type__"
_FLOW_ATTR = "__pyergon_flow__"
_STEP_ATTR = "__pyergon_step__"
_START_ATTR = "__pyergon_step_start__"

StepStart = Callable[
    [FlowContext, Position, Any, tuple[Any, ...], Mapping[str, Any]], Coroutine[Any, Any, Any]
]
"""Runs a step at a log position taken already: ``(context, position, self, args, kwargs)``.

The part of a step call after ``context.allocate()``, shared by the step's own wrapper and by
:func:`pyergon.dag`, which takes every DAG step's position before any of them starts.
"""


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What ``@step`` recorded about a step method.

    Attributes:
        name: The step's recorded name (the method name unless given).
        retry_policy: How failing attempts are retried; ``None`` means once.
        timeout: Seconds an attempt may run, or ``None``.
        isolate: Where a ``def`` step's body runs (``None``: a thread, or the loop for an
            ``async def`` step).
        code: The fingerprint of the method's code (:mod:`pyergon._fingerprint`), kept with
            each record the step makes.
        depends_on: The steps of the flow's DAG this one waits for, by step name: those given
            as ``depends_on`` and then those its ``inputs`` come from, each once.
        inputs: ``(parameter, step name)`` pairs: :func:`pyergon.dag` passes the named step's
            result as that keyword argument.
    """

    name: str
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    isolate: Isolation | None = None
    code: str = ""
    depends_on: tuple[str, ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StepMethod:
    """A ``@step`` method of a flow class, as :func:`step_methods` finds it.

    Attributes:
        attribute: The method's attribute name on the class.
        spec: What ``@step`` recorded about it.
        method: The undecorated method.
        start: Runs the step at a log position taken already (see :data:`StepStart`).
    """

    attribute: str
    spec: StepSpec
    method: Callable[..., Any]
    start: StepStart

    @property
    def is_async(self) -> bool:
        """Whether the step is ``async def`` (else its body runs in a thread or a process)."""
        return inspect.iscoroutinefunction(self.method)


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """What ``@flow`` recorded about a flow's entry method.

    Attributes:
        name: The method's name.
        retry_policy: How a failed flow is re-run; ``None`` means it fails at once.
    """

    name: str
    retry_policy: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class _FlowTypeInfo:
    name: str


def _require_async(function: Callable[..., Any], decorator: str) -> None:
    if not inspect.iscoroutinefunction(function):
        raise FlowDefinitionError(
            f"@{decorator} needs an 'async def' method, but {function.__qualname__} is not "
            "async; declare it with 'async def'"
        )


class _StepDecorator(Protocol):
    """What ``@step(...)`` with options returns: applied to an ``async def`` or a ``def``."""

    @overload
    def __call__(self, method: Method[S, P, R], /) -> Method[S, P, R]: ...

    @overload
    def __call__(self, method: SyncMethod[S, P, R], /) -> Method[S, P, R]: ...


# An async method matches both signatures; the first that matches wins, so an async step keeps
# its own result type rather than a coroutine of one.
@overload
def step(function: Method[S, P, R], /) -> Method[S, P, R]: ...


@overload
def step(function: SyncMethod[S, P, R], /) -> Method[S, P, R]: ...


@overload
def step(
    *,
    retry_policy: RetryPolicy | None = None,
    timeout: float | None = None,
    name: str | None = None,
    isolate: Isolation | None = None,
    depends_on: str | Sequence[str] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> _StepDecorator: ...


def step(
    function: Callable[..., Any] | None = None,
    /,
    *,
    retry_policy: RetryPolicy | None = None,
    timeout: float | None = None,
    name: str | None = None,
    isolate: Isolation | None = None,
    depends_on: str | Sequence[str] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Any:
    """Mark a method (``async def`` or plain ``def``) as a durable step.

    Inside a running flow, each call takes the next log position when it is made; its result
    (or error) is recorded, and a replay returns the record instead of running the body again.
    Called from inside another step's body, a step runs inline as part of that step.

    A ``def`` step is awaited like an async one (``x = await self.load()``), but its body runs
    in a thread (the worker's pool, sized to its ``max_concurrent_flows``), so the event loop
    and the lease heartbeats stay free. Pure-Python CPU work still shares the interpreter lock
    with the loop; for that, ``isolate="process"`` runs each attempt in a process of its own.
    Inside a ``def`` step's body, call other ``def`` steps plainly and run pyergon's async
    operations with :func:`pyergon.block_on` (``pyergon.block_on(pyergon.now())``).
    Outside a running flow a step runs as if undecorated: a ``def`` step called directly just
    returns its value (only in a flow does the call return an awaitable; type checkers see the
    awaitable).

    A thread cannot be stopped. When a ``def`` step's attempt passes its ``timeout``, the
    attempt fails with ``StepTimeoutError`` at once, but its thread runs on to its end and its
    result is dropped; a retry of the step starts only after it returned (two copies of one
    step never run at once), and the flow is not given back before it returned either. A flow
    cancelled, or a worker stopped, while a ``def`` step runs waits for the body to return. A
    process step's process, in contrast, is killed at its timeout or on cancellation.

    Args:
        function: The method, when used as ``@step`` without arguments.
        retry_policy: Retry failing attempts of the body; ``None`` means one attempt.
        timeout: Seconds one attempt may run before it fails with ``StepTimeoutError``.
        name: The recorded name; defaults to the method name. Renaming a step changes its
            identity in the log, so give the old name here when you rename the method.
        isolate: For a ``def`` step: ``"thread"`` (the default) or ``"process"``, which runs
            each attempt in a child process (forked where the platform can; the flow instance
            and arguments are pickled, the result and errors come back pickled, the child's
            stdout and stderr, up to their last 64 KiB, are written out after the attempt). A
            process step runs apart from its flow: inside it, steps are plain calls and
            ``block_on`` is not available. Called inside another step's body, it runs in a
            thread as part of that step.
        depends_on: For a flow run with :func:`pyergon.dag`: the step (a name) or steps (a
            list of names) that must finish before this one starts. Steps are named by their
            step name: the method's name, or the ``name=`` given to their ``@step``.
        inputs: For :func:`pyergon.dag`: ``{"parameter": "step name"}``, passing that step's
            result as the keyword argument; an input implies a dependency.

    Returns:
        The wrapped method, or a decorator when called with options.

    Raises:
        FlowDefinitionError: The method is a generator, ``isolate`` is set on an ``async def``
            step or is not ``"thread"`` or ``"process"``, an option is invalid, an input names
            a parameter the method does not take, or a step with ``depends_on`` or ``inputs``
            has a required parameter no input feeds. Whether the steps named exist, and form
            no cycle, is checked by ``@flow_type``.
    """
    if timeout is not None and (not isinstance(timeout, int | float) or not timeout > 0):
        raise FlowDefinitionError(f"@step(timeout=...) must be a positive number, got {timeout!r}")
    if timeout is not None and math.isinf(timeout):
        timeout = None
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise FlowDefinitionError(
            f"@step(retry_policy=...) must be a RetryPolicy, got {type(retry_policy).__name__}"
        )
    if isolate is not None and isolate not in _ISOLATIONS:
        raise FlowDefinitionError(
            f"@step(isolate=...) must be 'thread' or 'process', got {isolate!r}"
        )
    needs, fed = declared_dag(depends_on, inputs)

    def decorate(method: Callable[..., Any]) -> Any:
        if inspect.isgeneratorfunction(method) or inspect.isasyncgenfunction(method):
            raise FlowDefinitionError(
                f"@step cannot wrap the generator {method.__qualname__}: a step returns one "
                "value; return a list instead of yielding"
            )
        spec = StepSpec(
            name or method.__name__,
            retry_policy,
            timeout,
            isolate,
            code_fingerprint(method),
            needs,
            fed,
        )
        check_step_parameters(method, spec.depends_on, spec.inputs)
        if inspect.iscoroutinefunction(method):
            if isolate is not None:
                raise FlowDefinitionError(
                    f"@step(isolate={isolate!r}) on {method.__qualname__}: isolation is for "
                    "'def' steps; an 'async def' step runs on the event loop. Declare it with "
                    "'def' to run it in a thread or a process"
                )
            start = _async_start(method, spec)
            call = _async_step(method, start)
        else:
            start = _sync_start(method, spec)
            call = _sync_step(method, spec, start)
        setattr(call, _STEP_ATTR, spec)
        setattr(call, _START_ATTR, start)
        return call

    return decorate if function is None else decorate(function)


def _async_start(method: Method[S, P, R], spec: StepSpec) -> StepStart:
    name, retry_policy, timeout, code = spec.name, spec.retry_policy, spec.timeout, spec.code

    def start(
        context: FlowContext,
        position: Position,
        self: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Coroutine[Any, Any, Any]:
        return run_step(
            context,
            position,
            name,
            lambda: method(self, *args, **kwargs),
            args,
            kwargs,
            retry_policy,
            timeout,
            code,
        )

    return start


def _async_step(method: Method[S, P, R], start: StepStart) -> Method[S, P, R]:
    @functools.wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        context = current_context()
        if context is None or in_step():
            return method(self, *args, **kwargs)
        return start(context, context.allocate(), self, args, kwargs)

    return call


def _sync_start(method: SyncMethod[S, P, R], spec: StepSpec) -> StepStart:
    """Where a ``def`` step's body runs is decided here once, so async steps pay nothing for it."""
    in_process = spec.isolate == "process"
    attribute = method.__name__
    name, retry_policy, timeout, code = spec.name, spec.retry_policy, spec.timeout, spec.code

    def start(
        context: FlowContext,
        position: Position,
        self: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Coroutine[Any, Any, Any]:
        body: Callable[[], Coroutine[Any, Any, Any]]
        if in_process:
            body = functools.partial(
                run_in_process, context, position, name, attribute, self, args, kwargs, timeout
            )
        else:
            bound = functools.partial(method, self, *args, **kwargs)
            body = functools.partial(run_in_thread, context, position, name, bound, timeout)
        # The timeout is the body's own: a thread cannot be cancelled like a coroutine.
        return run_step(context, position, name, body, args, kwargs, retry_policy, None, code)

    return start


def _sync_step(method: SyncMethod[S, P, R], spec: StepSpec, start: StepStart) -> Callable[..., Any]:
    """The call of a ``def`` step: a plain call outside flows, else ``start`` (or inline)."""

    @functools.wraps(method)
    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        context = current_context()
        if context is None or in_step_thread():
            return method(self, *args, **kwargs)  # a plain call, as outside pyergon
        if in_step():  # inside an async step's body: part of that step, in a thread
            return run_in_thread(
                context, None, spec.name, functools.partial(method, self, *args, **kwargs)
            )
        return start(context, context.allocate(), self, args, kwargs)

    return call


@overload
def flow(function: Method[S, P, R], /) -> Method[S, P, R]: ...


@overload
def flow(
    *, retry_policy: RetryPolicy | None = None
) -> Callable[[Method[S, P, R]], Method[S, P, R]]: ...


def flow(
    function: Method[S, P, R] | None = None,
    /,
    *,
    retry_policy: RetryPolicy | None = None,
) -> Method[S, P, R] | Callable[[Method[S, P, R]], Method[S, P, R]]:
    """Mark the async method that runs a flow.

    Args:
        function: The method, when used as ``@flow`` without arguments.
        retry_policy: Re-run the whole flow when it fails; recorded steps are not run again
            and the backoff between attempts is a durable timer.

    Returns:
        The wrapped method, or a decorator when called with options.

    Raises:
        FlowDefinitionError: The method is not ``async def``.
    """
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise FlowDefinitionError(
            f"@flow(retry_policy=...) must be a RetryPolicy, got {type(retry_policy).__name__}"
        )

    def decorate(method: Method[S, P, R]) -> Method[S, P, R]:
        _require_async(method, "flow")
        spec = FlowSpec(method.__name__, retry_policy)

        @functools.wraps(method)
        async def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
            context = current_context()
            if context is not None and context.flow_retry_policy is None:
                context.flow_retry_policy = spec.retry_policy
            return await method(self, *args, **kwargs)

        setattr(call, _FLOW_ATTR, spec)
        return call

    return decorate if function is None else decorate(function)


@overload
def flow_type(cls: C, /) -> C: ...


@overload
def flow_type(*, name: str | None = None) -> Callable[[C], C]: ...


def flow_type(cls: C | None = None, /, *, name: str | None = None) -> C | Callable[[C], C]:
    """Mark a dataclass as a flow type; its fields are the flow's stored inputs.

    Works above or below ``@dataclass``. Adds ``invoke(child)`` for starting child flows.

    Args:
        cls: The class, when used as ``@flow_type`` without arguments.
        name: The name the flow type is stored and registered under; defaults to the class
            name. Keep it stable: stored flows are found by it.

    Returns:
        The class itself, marked.

    Raises:
        FlowDefinitionError: The target is not a class or has no ``@flow`` method; or its
            steps declare a DAG (``depends_on``, ``inputs``) that names no step of the class
            or has a cycle.
    """

    def decorate(target: C) -> C:
        if not isinstance(target, type):
            raise FlowDefinitionError(
                f"@flow_type decorates a class, not {type(target).__name__} {target!r}"
            )
        entries = _flow_methods(target)
        if not entries:
            raise FlowDefinitionError(
                f"flow type {target.__qualname__} has no @flow method; mark the async method "
                "that runs the flow with @flow"
            )
        check_dag_definition(target, step_methods(target))
        setattr(target, _FLOW_TYPE_ATTR, _FlowTypeInfo(name or target.__name__))
        if "invoke" not in target.__dict__:
            target.invoke = invoke  # type: ignore[attr-defined]
        return target

    return decorate if cls is None else decorate(cls)


def invoke(self: object, child: object) -> ChildHandle:
    """Start ``child`` as a child flow of the running flow; await ``.result()`` for its result.

    Added to every ``@flow_type`` class as ``self.invoke``.

    Args:
        self: The running (parent) flow.
        child: An instance of a ``@flow_type`` dataclass.

    Returns:
        A handle whose ``result()`` coroutine returns the child's result.

    Raises:
        FlowDefinitionError: ``child`` is not a flow instance.
        PyergonError: Called outside a running flow.
    """
    return start_child(child, require_flow_instance(child))


def step_methods(cls: type) -> tuple[StepMethod, ...]:
    """Return the ``@step`` methods of a class (inherited ones too), in declaration order.

    A method overridden in a subclass keeps the place of the one it overrides.
    """
    found: dict[str, StepMethod] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            spec = getattr(value, _STEP_ATTR, None)
            if isinstance(spec, StepSpec):
                found[attribute] = StepMethod(
                    attribute, spec, value.__wrapped__, getattr(value, _START_ATTR)
                )
            else:
                found.pop(attribute, None)
    return tuple(found.values())


def _flow_methods(cls: type) -> dict[str, FlowSpec]:
    methods: dict[str, FlowSpec] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            spec = getattr(value, _FLOW_ATTR, None)
            if isinstance(spec, FlowSpec):
                methods[attribute] = spec
    return methods


def flow_type_name(cls: type) -> str:
    """Return the stored name of a ``@flow_type`` class.

    Raises:
        FlowDefinitionError: ``cls`` is not decorated with ``@flow_type``.
    """
    info = getattr(cls, _FLOW_TYPE_ATTR, None)
    if not isinstance(info, _FlowTypeInfo):
        raise FlowDefinitionError(
            f"{cls.__qualname__} is not a flow type; decorate the class with @flow_type "
            "(and @dataclass)"
        )
    return info.name


def require_flow_instance(flow: object) -> str:
    """Check ``flow`` is an instance of a ``@flow_type`` dataclass; return its type name.

    Raises:
        FlowDefinitionError: It is a class instead of an instance, undecorated, or not a
            dataclass.
    """
    if isinstance(flow, type):
        raise FlowDefinitionError(
            f"expected a flow instance but got the class {flow.__qualname__}; "
            f"create one first, e.g. {flow.__name__}(...)"
        )
    return _dataclass_flow_type_name(type(flow))


def require_flow_class(cls: object) -> str:
    """Check ``cls`` is a flow class a worker can run; return its type name.

    A runnable flow class is a ``@flow_type`` dataclass with exactly one ``@flow`` method.

    Raises:
        FlowDefinitionError: It is not a class, undecorated, not a dataclass, or has no single
            ``@flow`` method.
    """
    if not isinstance(cls, type):
        raise FlowDefinitionError(f"expected a flow class, got {cls!r}")
    type_name = _dataclass_flow_type_name(cls)
    flow_entry(cls)
    return type_name


def _dataclass_flow_type_name(cls: type) -> str:
    type_name = flow_type_name(cls)
    if not dataclasses.is_dataclass(cls):
        raise FlowDefinitionError(
            f"flow type {cls.__qualname__} is not a dataclass; add @dataclass to the class so "
            "its fields can be stored as the flow's inputs"
        )
    return type_name


def flow_entry(cls: type) -> tuple[str, FlowSpec]:
    """Return the name and spec of the single ``@flow`` method of a flow type.

    Raises:
        FlowDefinitionError: The class has no ``@flow`` method or more than one.
    """
    methods = _flow_methods(cls)
    if len(methods) != 1:
        found = ", ".join(sorted(methods)) or "none"
        raise FlowDefinitionError(
            f"flow type {cls.__qualname__} needs exactly one @flow method to be run by name, "
            f"found {found}"
        )
    return next(iter(methods.items()))
