"""A flow's inputs as stored: the init fields of its dataclass, serialized together."""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any, TypeVar

from pyergon.core.records import ScheduledFlow
from pyergon.errors import FlowInputsChangedError, SerializationError, SignatureError
from pyergon.serialization import Serializer, dumps_for, loads_for, stable_hash

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
    fields: Any = loads_for(serializer, payload, f"the inputs of a {cls.__qualname__} flow")
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

    Inputs are the same when the payloads are. Otherwise both are read back through the
    serializer (so a JSON tuple and list, or pickles of equal values written differently,
    compare alike) and compared field by field: by
    :func:`~pyergon.serialization.stable_hash`, then ``==`` (``.equals`` for a DataFrame). A
    field the stored inputs lack (added to the class since) is the same if the given value is
    the field's default.

    Raises:
        FlowInputsChangedError: They differ (or the stored ones cannot be read); the message
            names the fields, both values and what to do instead.
        SignatureError: The serializer's keys refuse the stored inputs.
    """
    if stored.payload == payload:
        return
    try:
        kept = serializer.loads(stored.payload)
    except SignatureError:
        raise  # this process's key refuses the stored inputs: for a process with the right one
    except Exception:  # unreadable with today's class: not the same inputs, say so below
        kept = None
    given = serializer.loads(payload)
    if isinstance(kept, dict) and isinstance(given, dict):
        defaults = _defaults(flow)
        missing = object()
        changed = tuple(
            name
            for name in sorted(set(kept) | set(given))
            if not _same(kept.get(name, defaults.get(name, missing)), given.get(name, missing))
        )
        if not changed:
            return
        differences = "; ".join(
            f"{name}: stored {_value(kept.get(name, missing), missing)}, "
            f"given {_value(given.get(name, missing), missing)}"
            for name in changed[:3]
        )
        if len(changed) > 3:
            differences += f" (and {len(changed) - 3} more fields)"
    else:
        changed = tuple(sorted(_init_fields(flow)))
        differences = "its stored inputs cannot be read with today's class or key"
    raise FlowInputsChangedError(
        stored.flow_id,
        f"flow {stored.flow_id!r} ({stored.flow_type}) exists with other inputs ({differences}); "
        "its recorded results belong to the stored ones. Run the new inputs under a new "
        "flow_id, or recompute this flow with them: "
        f"await session.rerun({stored.flow_id!r}, inputs={_shown.repr(flow)})",
        changed,
    )


def _defaults(flow: object) -> dict[str, Any]:
    """The default of each init field of ``flow``'s class that has one."""
    defaults: dict[str, Any] = {}
    for field in dataclasses.fields(flow):  # type: ignore[arg-type]
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _same(kept: object, given: object) -> bool:
    """Whether two field values read back from storage are the same input."""
    if stable_hash((kept,), {}) == stable_hash((given,), {}):
        return True
    try:
        return bool(kept == given)
    except Exception:
        equals = getattr(kept, "equals", None)
        try:
            return callable(equals) and type(kept) is type(given) and bool(equals(given))
        except Exception:
            return False


def _value(value: object, missing: object) -> str:
    return "(no such field)" if value is missing else _shown.repr(value)
