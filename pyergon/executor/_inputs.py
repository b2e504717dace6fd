"""A flow's inputs as stored: the init fields of its dataclass, serialized together."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pyergon.errors import SerializationError
from pyergon.serialization import Serializer, dumps_for

__all__ = ["decode_flow", "encode_flow"]

F = TypeVar("F")


def encode_flow(serializer: Serializer, flow: object, type_name: str) -> bytes:
    """Serialize the init fields of ``flow``.

    Raises:
        SerializationError: A field cannot be serialized; the message names the field.
    """
    fields = {
        field.name: getattr(flow, field.name)
        for field in dataclasses.fields(flow)  # type: ignore[arg-type]
        if field.init
    }
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
