"""A flow's inputs as stored: the init fields of its dataclass, serialized together."""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any, TypeVar

from pyergon.core.records import ScheduledFlow
from pyergon.errors import FlowInputsChangedError, SerializationError, SignatureError
from pyergon.serialization import Serializer, dumps_for, stable_hash

__all__ = ["check_same_inputs", "decode_flow", "encode_flow"]

F = TypeVar("F")


def encode_flow(serializer: Serializer, flow: object, type_name: str) -> bytes:
    """Serialize the init fields of ``flow``.

    Raises:
        SerializationError: A field cannot be serialized; the message names the field.
    """
    fields = _init_fields(flow)
    try:
        return serializer.dumps(fields)
    except Exception:
        for name, value in fields.items():
            dumps_for(serializer, value, f"field {name!r} of flow type {type_name}")
        raise


def decode_flow(serializer: Serializer, cls: type[F], payload: bytes) -> F:
    """Rebuild a flow instance of ``cls`` from its stored fields.

    Raises:
        SerializationError: The payload cannot be read or no longer fits the class's fields.
    """
    fields: Any = serializer.loads(payload)
    if not isinstance(fields, dict):
        raise SerializationError(
            f"stored inputs of flow type {cls.__qualname__} are not a field mapping"
        )
    try:
        return cls(**fields)
    except TypeError as error:
        raise SerializationError(
            f"stored inputs of flow type {cls.__qualname__} no longer fit its fields: {error}; "
            "keep the old fields (or give new ones defaults) to run flows stored before"
        ) from error


def _init_fields(flow: object) -> dict[str, Any]:
    return {
        field.name: getattr(flow, field.name)
        for field in dataclasses.fields(flow)  # type: ignore[arg-type]
        if field.init
    }


_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 40


def check_same_inputs(
    serializer: Serializer, stored: ScheduledFlow, payload: bytes, flow: object
) -> None:
    """Refuse to take ``stored`` for ``flow`` (serialized as ``payload``) if their inputs differ.

    Inputs are the same when the payloads are, or else when every field's value has the same
    :func:`~pyergon.serialization.stable_hash` (pickle can write equal values differently).

    Raises:
        FlowInputsChangedError: They differ (or the stored ones cannot be read); the message
            names the fields, both values and what to do instead.
        SignatureError: The serializer's keys refuse the stored inputs.
    """
    if stored.payload == payload:
        return
    given = _init_fields(flow)
    try:
        kept = serializer.loads(stored.payload)
    except SignatureError:
        raise  # this process's key refuses the stored inputs: for a process with the right one
    except Exception:  # unreadable with today's class: not the same inputs, say so below
        kept = None
    if isinstance(kept, dict):
        changed = tuple(
            name
            for name in sorted(set(kept) | set(given))
            if name not in kept
            or name not in given
            or stable_hash((kept[name],), {}) != stable_hash((given[name],), {})
        )
        if not changed:
            return
        missing = object()
        differences = "; ".join(
            f"{name}: stored {_value(kept.get(name, missing), missing)}, "
            f"given {_value(given.get(name, missing), missing)}"
            for name in changed[:3]
        )
        if len(changed) > 3:
            differences += f" (and {len(changed) - 3} more fields)"
    else:
        changed = tuple(sorted(given))
        differences = "its stored inputs cannot be read with today's class or key"
    raise FlowInputsChangedError(
        stored.flow_id,
        f"flow {stored.flow_id!r} ({stored.flow_type}) exists with other inputs ({differences}); "
        "its recorded results belong to the stored ones. Run the new inputs under a new "
        "flow_id, or recompute this flow with them: "
        f"await session.rerun({stored.flow_id!r}, inputs={_shown.repr(flow)})",
        changed,
    )


def _value(value: object, missing: object) -> str:
    return "(no such field)" if value is missing else _shown.repr(value)
