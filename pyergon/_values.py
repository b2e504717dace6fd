"""The stored values of a flow (its result, or one step's) read back, and how to show one.

:meth:`pyergon.management.FlowManager.value` and ``session.value`` call :func:`stored_value`;
a value that does not exist yet (or never will) is an error that says why and what to do.
:func:`value_text` and :func:`value_json` show a value in a terminal or a JSON document, sized:
a DataFrame as its first and last rows (in JSON, pandas' ``split`` form of its first rows),
anything longer than :data:`VALUE_LIMIT` cut with a note.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from pyergon.core._frames import COLUMNS, frame_json, frame_text
from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.workers import StepActivity, WorkerRecord, running_steps
from pyergon.errors import (
    FlowNotFoundError,
    FlowStateError,
    SerializationError,
    SignatureError,
    StepNotFoundError,
)
from pyergon.executor.executor import validate_flow_id
from pyergon.history import FlowHistory
from pyergon.serialization import Serializer, loads_for
from pyergon.serialization._artifact_refs import is_ref

if TYPE_CHECKING:
    from pyergon.storage.base import ExecutionLog

__all__ = [
    "FRAME_ROWS",
    "VALUE_LIMIT",
    "read_value",
    "stored_value",
    "type_name",
    "value_json",
    "value_text",
]

VALUE_LIMIT = 10_000
"""Characters of a value shown unless the whole is asked for (``--full``)."""
FRAME_ROWS = 20
"""Rows of a DataFrame or Series shown unless the whole is asked for."""


async def read_value(
    storage: ExecutionLog,
    serializer: Serializer,
    flow_id: str,
    step: str | int | None,
    workers: Callable[[], Awaitable[Sequence[WorkerRecord]]],
) -> Any:
    """What :func:`stored_value` gives, reading only what it needs of the flow.

    The flow's result needs its record alone; a step's value its records too, and, while the
    flow is unfinished, which steps ``workers`` run (to say a step is running now). Its
    signals and children are never read.

    Args:
        storage: Where the flow is.
        serializer: The serializer the values were stored with.
        flow_id: The flow.
        step: As :func:`stored_value` takes it.
        workers: Reads the workers' records, with what they run.

    Raises:
        FlowNotFoundError: No such flow.
        InvalidFlowIdError: ``flow_id`` cannot be a flow id.
        StepNotFoundError, FlowStateError, SerializationError: As :func:`stored_value`.
    """
    flow = await storage.get_flow(validate_flow_id(flow_id))
    if flow is None:
        raise FlowNotFoundError(flow_id)
    invocations: tuple[Invocation, ...] = ()
    running: tuple[StepActivity, ...] = ()
    if step is not None:
        invocations = tuple(await storage.load_invocations(flow_id))
        if not flow.status.is_final:
            running = running_steps(await workers(), time.time()).get(flow_id, ())
    history = FlowHistory(flow, invocations, (), (), running=running)
    if is_ref(flow.result) or any(is_ref(record.result) for record in invocations):
        # A value kept apart (a large frame) takes a while to read: not on the event loop,
        # where a notebook's workers run.
        return await asyncio.to_thread(stored_value, history, serializer, step)
    return stored_value(history, serializer, step)


def stored_value(history: FlowHistory, serializer: Serializer, step: str | int | None) -> Any:
    """The value ``history``'s flow returned (``step`` is ``None``), or one step's value.

    Args:
        history: The flow, its records and the steps running now.
        serializer: The serializer the values were stored with.
        step: A step by position (``3``, ``"3"``, ``"3.1"``) or name; ``None``: the flow.

    Raises:
        StepNotFoundError: ``step`` names no step of the flow; the message lists them.
        FlowStateError: The flow (or step) has not finished, or it failed or was cancelled;
            the message says which, with the error, and what to do.
        SerializationError: The stored value cannot be read back (another serializer, or a
            class that cannot be imported here).
    """
    if step is None:
        return _flow_result(history.flow, serializer)
    try:
        found = history.find_steps(step)
    except StepNotFoundError:
        others = _other_operations(history, step)
        if not others:
            raise
        _refuse_ambiguous(history.flow.flow_id, step, others)
        return _operation_value(others[0], history, serializer)
    _refuse_ambiguous(history.flow.flow_id, step, found)
    record = found[0]
    return _step_value(record, serializer, running=history.running_at(record.position) is not None)


def _flow_result(flow: ScheduledFlow, serializer: Serializer) -> Any:
    flow_id = flow.flow_id
    if flow.status is TaskStatus.COMPLETE:
        return _loads(serializer, flow.result, f"the result of flow {flow_id!r}")
    if flow.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise FlowStateError(
            flow_id,
            f"flow {flow_id!r} {flow.status.value.lower()}{_with(flow.error)}, so it has no "
            f"result; retry it to run it again, or read the value of a step it finished",
        )
    raise FlowStateError(
        flow_id,
        f"flow {flow_id!r} has not finished ({flow.status.value}), so it has no result yet; "
        "wait for it, or read the value of a step it finished",
    )


def _refuse_ambiguous(flow_id: str, step: str | int, found: Sequence[Invocation]) -> None:
    """Refuse a name that names several operations: say where they are and how to pick one."""
    if len(found) > 1:
        positions = ", ".join(record.position for record in found)
        kind = found[0].kind.value.lower()
        raise FlowStateError(
            flow_id,
            f"flow {flow_id!r} called {kind} {step!r} {len(found)} times (at {positions}); "
            f"name one by its position, such as value({flow_id!r}, {found[-1].position!r})",
        )


def _other_operations(history: FlowHistory, step: str | int) -> list[Invocation]:
    """The timers, signals or child flows at position ``step`` (or those of that name)."""
    others = [record for record in history.records_now if record.kind is not OperationKind.STEP]
    found = [record for record in others if record.position == str(step)]
    if not found and isinstance(step, str):
        found = [record for record in others if record.name == step]
    return found


def _operation_value(record: Invocation, history: FlowHistory, serializer: Serializer) -> Any:
    """What a signal (its payload) or a child flow (its result) gave; a timer has nothing.

    Raises:
        FlowStateError: ``record`` is a timer, or a signal or child flow not finished or failed.
    """
    kind = record.kind
    if kind is OperationKind.TIMER:
        steps = [r for r in history.records_now if r.kind is OperationKind.STEP]
        listed = ", ".join(f"{r.position} {r.name}" for r in steps) or "none yet"
        raise FlowStateError(
            record.flow_id,
            f"position {record.position} of flow {record.flow_id!r} is a timer"
            f"{f' ({record.name!r})' if record.name else ''}, not a step: a timer has no value "
            f"to read; its steps: {listed}",
        )
    if kind is OperationKind.SIGNAL and record.status is not InvocationStatus.COMPLETE:
        raise FlowStateError(
            record.flow_id,
            f"{_what(record)} has not been received ({record.status.value}), so it has no "
            f"value yet; send it with `await session.signal({record.flow_id!r}, {record.name!r}, "
            "value)` or `pyergon.send_signal(storage, flow_id, name, value)`",
        )
    return _step_value(record, serializer, running=False)


def _what(record: Invocation) -> str:
    """``step 3 'load' of flow 'f'``, ``signal 'go' (position 3) of flow 'f'``, and so on."""
    owner = f"of flow {record.flow_id!r}"
    if record.kind is OperationKind.SIGNAL:
        return f"signal {record.name!r} (position {record.position}) {owner}"
    if record.kind is OperationKind.CHILD:
        child = f" {record.child_flow_id!r}" if record.child_flow_id else ""
        return f"child flow{child} ({record.name}, position {record.position}) {owner}"
    return f"step {record.position} {record.name!r} {owner}"


def _step_value(record: Invocation, serializer: Serializer, *, running: bool) -> Any:
    where = _what(record)
    if record.status is InvocationStatus.COMPLETE:
        return _loads(serializer, record.result, f"the value of {where}")
    if record.status is InvocationStatus.FAILED:
        attempts = f" after {record.attempts} attempts" if record.attempts > 1 else ""
        raise FlowStateError(
            record.flow_id,
            f"{where} failed{attempts}{_with(record.error)}, so it has no value; retry the "
            "flow to run it again",
        )
    state = "running now" if running else record.status.value
    raise FlowStateError(
        record.flow_id,
        f"{where} has not finished ({state}), so it has no value yet; wait for the flow",
    )


def _loads(serializer: Serializer, data: bytes | None, what: str) -> Any:
    if data is None:
        return None
    try:
        return loads_for(serializer, data, what)
    except SignatureError as error:  # another key, not a class to import: say only that
        raise SignatureError(f"{what} cannot be read back here: {error}") from error
    except SerializationError as error:
        raise SerializationError(
            f"{what} cannot be read back here: {error}; the classes it holds must be importable "
            "(run where the flow's modules are), and the serializer the one it was stored with"
        ) from error


def _with(error: StoredError | None) -> str:
    if error is None:
        return ""
    name = error.type_name.rsplit(".", 1)[-1]
    return f" with {name}: {error.message}" if error.message else f" with {name}"


def type_name(value: object) -> str:
    """``module.QualName`` of ``value``'s type (``builtins.`` left out)."""
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def value_text(value: object, *, full: bool = False) -> str:
    """``value`` as text: a DataFrame or Series as a table of its first and last rows, or a repr.

    Args:
        value: The value.
        full: Every row and character; otherwise :data:`FRAME_ROWS` rows and
            :data:`VALUE_LIMIT` characters, with a note of what was left out.
    """
    return _shown_text(value, full=full)[0]


def value_json(value: object, *, full: bool = False) -> dict[str, Any]:
    """``value`` for a JSON document: itself if it is JSON and fits, else its text.

    Returns:
        ``{"type", "format": "json", "value"}`` for a value JSON can hold, up to
        :data:`VALUE_LIMIT` characters unless ``full``; for a DataFrame or Series,
        ``{"type", "format": "split", "shape", "value", "truncated"}`` with pandas' ``split``
        JSON of its first :data:`FRAME_ROWS` rows that fit (see
        :func:`~pyergon.core._frames.frame_json`); otherwise ``{"type", "format": "text",
        "value", "truncated"}`` with the value's text (a repr, or the JSON text cut) as
        :func:`value_text` gives it.
    """
    try:
        frame = frame_json(value, rows=None if full else FRAME_ROWS, limit=VALUE_LIMIT)
    except (TypeError, ValueError, OverflowError):  # cells pandas cannot write as JSON
        frame = None
    if frame is not None:
        return frame
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON: a DataFrame, a dataclass, a NaN...
        encoded = None
    if encoded is not None and (full or len(encoded) <= VALUE_LIMIT):
        return {"type": type_name(value), "format": "json", "value": value}
    if encoded is None:
        shown, truncated = _shown_text(value, full=full)
    else:  # JSON longer than the limit, and not full: cut
        shown, truncated = _cut(encoded, len(encoded)), True
    return {"type": type_name(value), "format": "text", "value": shown, "truncated": truncated}


def _shown_text(value: object, *, full: bool) -> tuple[str, bool]:
    """:func:`value_text`'s text, and whether it leaves anything out.

    It never renders much more than it shows: a DataFrame's shown rows, a container's repr up
    to :data:`_REPR_COUNTED` characters.
    """
    if full:
        table = frame_text(value, rows=None)
        return (repr(value) if table is None else table), False
    table = frame_text(value, rows=FRAME_ROWS)
    if table is not None:
        shape: tuple[int, ...] = getattr(value, "shape")  # noqa: B009 - a pandas object
        elided = shape[0] > FRAME_ROWS or (len(shape) > 1 and shape[1] > COLUMNS)
        if len(table) > VALUE_LIMIT:
            return _cut(table, len(table)), True
        return table, elided
    text, length, whole = _repr_prefix(value)
    if length > VALUE_LIMIT:
        return _cut(text, length, whole=whole), True
    return text, False


_REPR_COUNTED = 100 * VALUE_LIMIT
"""Characters of a long repr rendered to say how many were left out; past them: "over"."""


def _repr_prefix(value: object) -> tuple[str, int, bool]:
    """The start of ``repr(value)``, its length, and whether that length is the whole repr's.

    The start holds at least :data:`VALUE_LIMIT` characters (all, if the repr is shorter).
    Lists, tuples, dicts and sets are rendered item by item, and only up to
    :data:`_REPR_COUNTED` characters, so a list of ten million numbers costs as much as its
    first hundred thousand characters.
    """
    kept: list[str] = []
    length = 0
    for chunk in _repr_chunks(value, set()):
        if length <= VALUE_LIMIT:
            kept.append(chunk)
        length += len(chunk)
        if length > _REPR_COUNTED:
            return "".join(kept), length, False
    return "".join(kept), length, True


_BRACKETS: dict[type, tuple[str, str]] = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
    dict: ("{", "}"),
}


def _repr_chunks(value: object, inside: set[int]) -> Iterator[str]:
    """``repr(value)`` in pieces, as the builtin containers write it (subclasses keep their own).

    Args:
        value: The value.
        inside: The ids of the containers being written, which a container inside itself
            names as ``[...]`` or ``{...}``, as repr does.
    """
    brackets = _BRACKETS.get(type(value))
    if brackets is None or not value:
        yield repr(value)
        return
    if id(value) in inside:
        yield "[...]" if isinstance(value, list) else "{...}"
        return
    inside.add(id(value))
    yield brackets[0]
    if isinstance(value, dict):
        for index, (key, item) in enumerate(value.items()):
            yield ", " if index else ""
            yield from _repr_chunks(key, inside)
            yield ": "
            yield from _repr_chunks(item, inside)
    else:
        items = cast("Collection[object]", value)
        for index, item in enumerate(items):
            yield ", " if index else ""
            yield from _repr_chunks(item, inside)
        if isinstance(value, tuple) and len(value) == 1:
            yield ","
    yield brackets[1]
    inside.discard(id(value))


def _cut(text: str, length: int, *, whole: bool = True) -> str:
    """``text`` cut at :data:`VALUE_LIMIT` characters, with a note of what was left out.

    Args:
        text: The text, or its start.
        length: The whole text's length (``whole``), or a length it exceeds.
        whole: Whether ``length`` is exact.
    """
    if length <= VALUE_LIMIT:
        return text
    more = f"{length - VALUE_LIMIT}" if whole else f"over {length - VALUE_LIMIT}"
    return f"{text[:VALUE_LIMIT]}\n… {more} more characters (--full shows all)"
