"""The Redis backend's layout: its keys, its Lua scripts and how flows and records are encoded.

Every multi-key change is one atomic script, kept in ``redis_lua/<name>.lua`` and loaded once.
Keys under the prefix ``P`` (written ``{P}``: the braces put every key of a prefix in one Redis
Cluster hash slot and keep nested prefixes such as ``app`` and ``app:x`` apart):

* ``{P}:flow:<id>`` — hash, one field per flow attribute, bytes stored as they are; a ``None``
  attribute has no field, nor has ``cancel_requested`` while false (it is ``"1"`` when true),
  nor ``lease_losses`` while 0; the error is spread over ``error_type`` ... ``error_payload``.
  A flow without a ``version`` field (written before layout version 3) is at version 1.
* ``{P}:inv:<id>`` — hash, field ``"<sequence>:<sub_sequence>"`` → an encoded record: one line of
  JSON header, then the raw result bytes, error payload bytes and output text in UTF-8 (their
  lengths in the header, in bytes; no ``output`` length: no output); a step's progress is an
  object in the header (no ``progress``: none reported), and so is its ``code_hash`` (none:
  ``""``) and the list of its ``earlier_attempts`` (none: no attempts kept).
* ``{P}:sig:<id>`` — hash, signal name → the ``sent_at`` time, a newline, the payload bytes.
* ``{P}:ids`` — set of every id that has a flow, records or signals (what ``reset`` deletes).
* History indexes, sorted sets scored by ``created_at`` (ties by id, as Redis orders equal
  scores): ``{P}:flows``, ``{P}:type:<type>``, ``{P}:status:<status>``,
  ``{P}:status:<status>:<type>``, ``{P}:worker:<worker_id>`` and ``{P}:children:<parent id>``;
  ``{P}:status:PENDING:<type>`` is also the ready queue.
* Queue indexes: ``{P}:timers:<type>`` and ``{P}:timers`` (``SUSPENDED`` with a wake time, scored
  by it) and ``{P}:leases:<type>`` (``RUNNING`` with a lease, scored by its expiry).
* ``{P}:workers:<worker_id>`` — hash, a worker's record (:mod:`pyergon.storage._redis_workers`);
  ``{P}:workers`` — sorted set of the ids that have one, all scored 0 so listed by their bytes.
  Both came with layout version 4; an older prefix had no worker records. Its ``activity``
  field came with version 5.
* ``{P}:schema_version`` — the layout version; ``{P}:work`` — the pub/sub wake-up channel.

Version 2 added the ``worker_id`` and ``cancel_requested`` fields and the worker and children
indexes; version 3 the ``version`` field; version 4 the ``lease_losses`` and ``last_lost_by``
fields (absent on older flows, which have lost none); version 5 a record's output and progress
and a worker's activity (absent on older ones, which have none: no record is rewritten);
version 6 a record's ``code_hash`` (absent on older records, which read as ``""``); version 7
a record's ``earlier_attempts`` (absent on older records, which kept none).
``migrate.lua`` moves an older prefix forward.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib.resources import files
from typing import Any, cast

from pyergon.core.changes import Change
from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.transitions import TAKEN_OVER
from pyergon.errors import CorruptStorageError
from pyergon.storage._step_json import (
    attempts_fields,
    attempts_from_fields,
    progress_fields,
    progress_from_fields,
)
from pyergon.storage.base import ClaimedRun, damaged_run

__all__ = [
    "SCRIPTS",
    "apply_arguments",
    "claimed_run",
    "counted",
    "decode_invocation",
    "decode_signal",
    "describe_damage",
    "encode_invocation",
    "encode_signal",
    "flow_changes",
    "flow_fields",
    "flow_from_hash",
    "flow_from_reply",
    "log_from_hash",
    "number",
    "optional",
    "readable_flow",
    "record_field",
    "renewal",
]

# -- scripts -------------------------------------------------------------------------------------

_SCRIPT_NAMES = (
    "apply",
    "artifact_references",
    "beat",
    "cancel_requests",
    "claim",
    "count_flows",
    "create_flow",
    "delete_flow",
    "delete_worker",
    "list_flows",
    "migrate",
    "put_worker",
    "read_workers",
    "renew_leases",
    "reset",
)


def _lua_set(values: Iterable[str]) -> str:
    """A Lua table literal usable as a set of ``values``."""
    return "{" + ", ".join(f"[{value!r}] = true" for value in values) + "}"


def _load_scripts() -> dict[str, str]:
    """Each script's source: the constants it shares with Python, the prelude, its body."""
    folder = files("pyergon.storage").joinpath("redis_lua")
    # The statuses the scripts test are written from the enums, so the two cannot disagree.
    constants = (
        f"local FINAL_RECORD = {_lua_set(s.value for s in InvocationStatus if s.is_final)}\n"
        f"local FAILED = {InvocationStatus.FAILED.value!r}\n"
        f"local TAKEN_OVER = {TAKEN_OVER.value!r}\n"
    )
    prelude = constants + folder.joinpath("prelude.lua").read_text(encoding="utf-8")
    return {
        name: prelude + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        for name in _SCRIPT_NAMES
    }


SCRIPTS: dict[str, str] = _load_scripts()
"""Script name → Lua source; the backend loads them all on ``connect()``."""


# -- arguments -----------------------------------------------------------------------------------


def number(value: float) -> str:
    """A float as text that Redis and Lua parse back to exactly the same double."""
    return repr(float(value))


def counted(values: Sequence[str | bytes]) -> list[str | bytes]:
    """``values`` preceded by their count, the form in which the scripts read lists."""
    return [str(len(values)), *values]


def optional(value: str | None) -> list[str | bytes]:
    """An optional script argument: ``counted`` with zero values for ``None``, else one."""
    return counted([] if value is None else [value])


def renewal(leases: Mapping[str, str], *, lease_seconds: float, now: float) -> list[str | bytes]:
    """The arguments that renew ``leases`` (see ``renew_held_leases`` in ``prelude.lua``)."""
    pairs = [item for flow_id, token in leases.items() for item in (flow_id, token)]
    return [number(now + lease_seconds), *pairs]


# -- flows ---------------------------------------------------------------------------------------

_TEXT_FIELDS = frozenset(
    (
        "flow_id",
        "flow_type",
        "parent_flow_id",
        "parent_sequence",
        "lease_owner",
        "lease_token",
        "worker_id",
        "last_lost_by",
    )
)
_BYTES_FIELDS = frozenset(("payload", "result"))
_FLOAT_FIELDS = frozenset(("created_at", "updated_at", "wake_at", "lease_expires_at"))
_INT_FIELDS = frozenset(("attempt", "version", "lease_losses"))
_ERROR_FIELDS = ("error_type", "error_message", "error_traceback", "error_payload")
_FLOW_FIELDS = tuple(ScheduledFlow.__dataclass_fields__)
_ATTRIBUTES = frozenset(_FLOW_FIELDS)


def _stored(name: str, value: object) -> Iterator[tuple[str, str | bytes | None]]:
    """The hash fields that hold flow attribute ``name`` and their values (``None``: no field)."""
    if name not in _ATTRIBUTES:
        raise ValueError(f"{name!r} is not a field of a stored flow")
    if name == "error":
        error = cast(StoredError | None, value)
        if error is None:
            yield from ((field, None) for field in _ERROR_FIELDS)
        else:
            values = (error.stored_type, error.message, error.traceback, error.payload)
            yield from zip(_ERROR_FIELDS, values, strict=True)
    elif value is None:
        yield name, None
    elif name in _FLOAT_FIELDS:
        yield name, number(cast(float, value))
    elif name == "lease_losses" and not value:
        yield name, None
    elif name in _INT_FIELDS:
        yield name, str(int(cast(int, value)))
    elif name == "status":
        yield name, TaskStatus(cast(str, value)).value
    elif name == "cancel_requested":
        yield name, "1" if value else None
    else:  # text and bytes are stored as they are
        yield name, cast(str | bytes, value)


def _encode(values: Mapping[str, object]) -> tuple[list[str | bytes], list[str | bytes]]:
    """Flat field/value pairs to set, and the fields to delete, that store ``values``."""
    sets: list[str | bytes] = []
    deletes: list[str | bytes] = []
    for name, value in values.items():
        for field, stored in _stored(name, value):
            if stored is None:
                deletes.append(field)
            else:
                sets += (field, stored)
    return sets, deletes


def flow_fields(flow: ScheduledFlow) -> list[str | bytes]:
    """Flat field/value pairs of a flow's hash; ``None`` attributes have no field."""
    sets, _ = _encode({name: getattr(flow, name) for name in _FLOW_FIELDS})
    return sets


def flow_changes(changes: Mapping[str, object]) -> tuple[list[str | bytes], list[str | bytes]]:
    """The fields to set (flat pairs) and to delete for a write of flow attributes ``changes``.

    Raises:
        ValueError: ``changes`` names ``flow_id``, ``version`` or no flow attribute.
    """
    if "flow_id" in changes or "version" in changes:
        raise ValueError(f"a flow write cannot set flow_id or version, got {sorted(changes)}")
    return _encode(changes)


def flow_from_reply(reply: Sequence[bytes]) -> ScheduledFlow:
    """Rebuild a flow from a script's ``HGETALL`` reply, a flat field/value list.

    Raises:
        CorruptStorageError: A field cannot be read; the message names the flow and field.
    """
    items = iter(reply)
    return flow_from_hash(dict(zip(items, items, strict=True)))


def flow_from_hash(fields: Mapping[bytes, bytes]) -> ScheduledFlow:
    """Rebuild a flow from its hash.

    Raises:
        CorruptStorageError: A field cannot be read; the message names the flow and field.
    """
    values, damage = _flow_values(fields)
    if damage is not None:
        raise damage
    return ScheduledFlow(**values)


def readable_flow(
    flow_id: str, reply: Sequence[bytes]
) -> tuple[dict[str, Any], CorruptStorageError | None]:
    """The fields of a flow's ``HGETALL`` reply that can be read, and what cannot, if anything.

    For a flow a claim took: it is failed with the damage rather than raising it.
    """
    items = iter(reply)
    values, damage = _flow_values(dict(zip(items, items, strict=True)), flow_id)
    values["flow_id"] = flow_id  # the key's id, whatever the field holds
    return values, damage


_DECODERS: dict[str, tuple[Callable[[bytes], object], str]] = {
    **{name: (bytes.decode, "UTF-8 text") for name in _TEXT_FIELDS | set(_ERROR_FIELDS[:3])},
    **{name: (float, "a number") for name in _FLOAT_FIELDS},
    **{name: (int, "an integer") for name in _INT_FIELDS},
    "status": (lambda raw: TaskStatus(raw.decode()), "a flow status"),
    "cancel_requested": (lambda raw: raw == b"1", "a flag"),
}
"""How each stored field is read, and what it should hold (bytes fields are kept as stored)."""

_AS_STORED: tuple[Callable[[bytes], object], str] = (lambda raw: raw, "bytes")

_REQUIRED = ("flow_id", "flow_type", "payload", "status", "created_at", "updated_at")


def _flow_values(
    fields: Mapping[bytes, bytes], flow_id: str | None = None
) -> tuple[dict[str, Any], CorruptStorageError | None]:
    """The flow attributes ``fields`` hold, and the first field that cannot be read, if any."""
    raw_id = fields.get(b"flow_id", b"")
    name_of_flow = flow_id if flow_id is not None else raw_id.decode(errors="replace")
    values: dict[str, Any] = {"cancel_requested": False}
    damage: CorruptStorageError | None = None
    for raw_name, raw in fields.items():
        name = raw_name.decode(errors="replace")
        decode, holds = _DECODERS.get(name, _AS_STORED)
        try:
            values[name] = decode(raw)
        except (ValueError, UnicodeDecodeError):
            damage = damage or CorruptStorageError(
                f"stored field {name!r} of flow {name_of_flow!r} holds {raw[:80]!r}, which is "
                f"not {holds}; pyergon cannot read the flow. Fix or delete the field."
            )
    type_name, message, traceback, payload = (values.pop(name, None) for name in _ERROR_FIELDS)
    if type_name is not None and message is not None and traceback is not None:
        values["error"] = StoredError.from_stored(type_name, message, traceback, payload)
    missing = [name for name in _REQUIRED if name not in values]
    if missing and damage is None:
        damage = CorruptStorageError(
            f"stored flow {name_of_flow!r} has no field {missing[0]!r}; pyergon cannot read it"
        )
    unknown = set(values) - _ATTRIBUTES
    if unknown and damage is None:
        damage = CorruptStorageError(
            f"stored flow {name_of_flow!r} has a field pyergon does not know: "
            f"{sorted(unknown)[0]!r}"
        )
    for name in unknown:
        del values[name]
    return values, damage


def claimed_run(raw_id: bytes, fields: list[bytes], records: list[bytes] | None) -> ClaimedRun:
    """A run of a flow the claim script took; a field that cannot be read is its damage.

    Records that cannot be read (``records`` is ``None`` when their key is not a hash) give a
    run without a log, as the contract has it: whoever runs the flow reads them itself.
    """
    flow_id = raw_id.decode(errors="replace")
    values, damage = readable_flow(flow_id, fields)
    if damage is not None:
        return damaged_run(values, damage)
    flow = ScheduledFlow(**values)
    if records is None:
        return ClaimedRun(flow, None)
    items = iter(records)
    try:
        return ClaimedRun(flow, log_from_hash(flow_id, zip(items, items, strict=True)))
    except (ValueError, TypeError, KeyError, IndexError):
        return ClaimedRun(flow, None)


def describe_damage(
    flow_id: str, key: str, field: str, held: bytes | None, *, is_flow_key: bool
) -> str:
    """What the claim script met that kept it from taking a flow (see ``claim.lua``)."""
    found = "nothing" if held is None else held.decode(errors="replace")
    if not flow_id:
        return (
            f"key {key!r} holds a {found}, not the sorted set pyergon keeps there; no flow that "
            "needs it is claimed until it is deleted or renamed"
        )
    if field:
        return (
            f"flow {flow_id!r} was taken out of the queue: its field {field!r} (key {key!r}) "
            f"holds {found!r}, not what pyergon wrote; fix the field, then resume the flow"
        )
    if is_flow_key:
        held_there = "no flow" if found == "none" else f"a {found}"
        return (
            f"flow {flow_id!r} was taken out of the queue: key {key!r} holds {held_there}, not "
            "a flow's hash (pyergon changed nothing in it)"
        )
    return (
        f"flow {flow_id!r} is not claimed: key {key!r} holds a {found}, not the sorted set "
        "pyergon keeps there; delete or rename it"
    )


# -- records and signals -------------------------------------------------------------------------

_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))
"""Made once: ``json.dumps`` with other than default options makes an encoder per call.
``ensure_ascii`` (the default) keeps the header one line; the scripts split it off at ``\n``."""


def record_field(record: Invocation) -> str:
    """The field of a flow's records hash that holds ``record``."""
    return f"{record.sequence}:{record.sub_sequence}"


def encode_invocation(invocation: Invocation) -> bytes:
    """One line of JSON header, then the result bytes, the error payload bytes and the output.

    The output comes last and out of the header, so a step's long output is not escaped into
    JSON, nor read by the scripts, which compare outcomes by the header and the bytes before
    it (``same_outcome`` in ``apply.lua``).
    """
    error = invocation.error
    payload = None if error is None else error.payload
    header: dict[str, object] = {
        "kind": invocation.kind.value,
        "name": invocation.name,
        "status": invocation.status.value,
        "args_hash": invocation.args_hash,
        "attempts": invocation.attempts,
        "started_at": invocation.started_at,
        "completed_at": invocation.completed_at,
        "fire_at": invocation.fire_at,
        "child_flow_id": invocation.child_flow_id,
        "result": None if invocation.result is None else len(invocation.result),
        "error": None if error is None else [error.stored_type, error.message, error.traceback],
        "error_payload": None if payload is None else len(payload),
    }
    data = (invocation.result or b"") + (payload or b"")
    if invocation.output is not None:
        output = invocation.output.encode()
        header["output"] = len(output)
        data += output
    if invocation.progress is not None:
        header["progress"] = progress_fields(invocation.progress)
    if invocation.code_hash:
        header["code_hash"] = invocation.code_hash
    if invocation.earlier_attempts:
        header["earlier_attempts"] = attempts_fields(invocation.earlier_attempts)
    return _HEADER_JSON.encode(header).encode() + b"\n" + data


def log_from_hash(flow_id: str, fields: Iterable[tuple[bytes, bytes]]) -> list[Invocation]:
    """A flow's log from its records' hash fields and values, ordered by position."""
    records = [decode_invocation(flow_id, field, value) for field, value in fields]
    return sorted(records, key=lambda record: (record.sequence, record.sub_sequence))


def decode_invocation(flow_id: str, position: bytes, value: bytes) -> Invocation:
    """Rebuild the record of ``flow_id`` stored at ``position`` (``b"<seq>:<sub>"``)."""
    sequence, _, sub_sequence = position.partition(b":")
    raw_header, _, data = value.partition(b"\n")
    header = json.loads(raw_header)
    result_length, payload_length = header.pop("result"), header.pop("error_payload")
    payload_end = (result_length or 0) + (payload_length or 0)
    error = header.pop("error")
    if error is not None:
        payload = None if payload_length is None else data[result_length or 0 : payload_end]
        error = StoredError.from_stored(error[0], error[1], error[2], payload)
    output_length = header.pop("output", None)
    if output_length is not None:
        header["output"] = data[payload_end : payload_end + output_length].decode()
    progress = header.pop("progress", None)
    if progress is not None:
        header["progress"] = progress_from_fields(progress)
    attempts = header.pop("earlier_attempts", None)
    if attempts is not None:
        header["earlier_attempts"] = attempts_from_fields(attempts)
    return Invocation(
        flow_id=flow_id,
        sequence=int(sequence),
        sub_sequence=int(sub_sequence),
        kind=OperationKind(header.pop("kind")),
        status=InvocationStatus(header.pop("status")),
        result=None if result_length is None else data[:result_length],
        error=error,
        **header,
    )


def encode_signal(sent_at: float, payload: bytes) -> bytes:
    """A signal's stored value: its time, a newline, its payload."""
    return number(sent_at).encode() + b"\n" + payload


def decode_signal(value: bytes) -> tuple[float, bytes]:
    """The time and payload of a stored signal value."""
    sent_at, _, payload = value.partition(b"\n")
    return float(sent_at), payload


# -- changes -------------------------------------------------------------------------------------


def apply_arguments(change: Change) -> list[str | bytes]:
    """The arguments of the ``apply`` script for ``change`` (see ``redis_lua/apply.lua``)."""
    guards: list[str | bytes] = []
    writes: list[str | bytes] = [str(len(change.writes))]
    for write in change.writes:
        if write.expected_version is not None:
            guards += (write.flow_id, str(write.expected_version))
        sets, deletes = flow_changes(write.changes)
        statuses = write.only_if_status
        writes += (write.flow_id, "0" if statuses is None else "1")
        writes += counted([status.value for status in statuses or ()])
        writes += counted(sets)
        writes += counted(deletes)
    records: list[str | bytes] = []
    for record in change.records:
        records += (record.flow_id, record_field(record), encode_invocation(record))
    forget: list[str | bytes] = [str(len(change.forget))]
    for chosen in change.forget:
        forget += (chosen.flow_id, *counted([str(sequence) for sequence in chosen.sequences]))
    signals: list[str | bytes] = []
    for signal in change.signals:
        signals += (signal.flow_id, signal.name, encode_signal(signal.sent_at, signal.payload))
    return [
        *counted(guards),
        *counted(change.held or ()),
        *counted(change.forget_failed),
        *forget,
        *counted(records),
        *counted(signals),
        *writes,
        "1" if change.notify else "0",
    ]
