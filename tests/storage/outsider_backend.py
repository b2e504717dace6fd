"""A storage backend written as an outsider would, from pyergon's public contract alone.

Flows are rows of plain values (the status a string, an error spread over four columns, as a
database maps fields to columns) behind one lock. Every method yields to the loop before it
takes the lock, as I/O would, so the contract's concurrent callers really interleave.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection, Mapping

from pyergon.core import ClaimRequest, FlowQuery
from pyergon.core.changes import ABSENT, Applied, Change, stored_as_given
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import claim_changes, is_runnable, new_lease_token, queue_order
from pyergon.serialization import payload_info
from pyergon.storage import base

Row = dict[str, object]

_ERROR_COLUMNS = ("error_type", "error_message", "error_traceback", "error_payload")
_FLOW_FIELDS = tuple(field.name for field in dataclasses.fields(ScheduledFlow))


def _error_columns(error: object) -> Row:
    if error is None:
        return dict.fromkeys(_ERROR_COLUMNS)
    assert isinstance(error, StoredError)
    values = (error.stored_type, error.message, error.traceback, error.payload)
    return dict(zip(_ERROR_COLUMNS, values, strict=True))


def _columns(changes: Mapping[str, object]) -> Row:
    """The columns that hold ``changes`` of flow fields."""
    columns: Row = {}
    for name, value in changes.items():
        if name == "error":
            columns.update(_error_columns(value))
        elif name == "status":
            columns["status"] = TaskStatus(str(value)).value
        else:
            columns[name] = value
    return columns


def _to_row(flow: ScheduledFlow) -> Row:
    return _columns({name: getattr(flow, name) for name in _FLOW_FIELDS})


def _from_row(row: Row) -> ScheduledFlow:
    values = {name: value for name, value in row.items() if name not in _ERROR_COLUMNS}
    values["status"] = TaskStatus(str(row["status"]))
    values.setdefault("version", 1)  # rows written before versions existed
    error_type, message, trace, payload = (row[column] for column in _ERROR_COLUMNS)
    payload = payload if isinstance(payload, bytes) else None
    error = StoredError.from_stored(str(error_type), str(message), str(trace), payload)
    values["error"] = None if error_type is None else error
    return ScheduledFlow(**values)  # type: ignore[arg-type]  # the row holds the field values


class OutsiderExecutionLog(base.StorageLifecycle):
    """Flows as rows, records and signals by flow, one lock for atomic methods."""

    def __init__(self) -> None:
        self._rows: dict[str, Row] = {}
        self._records: dict[str, dict[tuple[int, int], Invocation]] = {}
        self._signals: dict[str, dict[str, SignalRecord]] = {}
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release."""

    async def _turn(self) -> asyncio.Lock:
        await asyncio.sleep(0)  # as a round trip to a server would
        return self._lock

    # -- flows and changes -------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists."""
        async with await self._turn():
            existing = self._rows.get(flow.flow_id)
            if existing is not None:
                return _from_row(existing), False
            self._rows[flow.flow_id] = _to_row(flow)
        if flow.status is TaskStatus.PENDING:
            self._work.set()
        return flow, True

    async def apply(self, change: Change) -> Applied:
        """Apply ``change`` atomically, in the documented order."""
        async with await self._turn():
            for write in change.writes:
                row = self._rows.get(write.flow_id)
                version = ABSENT if row is None else row["version"]
                if write.expected_version is not None and version != write.expected_version:
                    return Applied(moved=write.flow_id)
            if change.held is not None:
                held_id, lease_token = change.held
                row = self._rows.get(held_id)
                if row is None or (row["status"], row["lease_token"]) != ("RUNNING", lease_token):
                    return Applied(moved=held_id)
            for flow_id in change.forget_failed:
                records = self._records.get(flow_id, {})
                for position, record in list(records.items()):
                    if record.status is InvocationStatus.FAILED:
                        del records[position]
            for forget in change.forget:
                records = self._records.get(forget.flow_id, {})
                for sequence, sub_sequence in list(records):
                    if sequence in forget.sequences:
                        del records[sequence, sub_sequence]
            kept: list[Invocation] = []
            for record in change.records:
                records = self._records.setdefault(record.flow_id, {})
                position = (record.sequence, record.sub_sequence)
                existing = records.get(position)
                if existing is None or not existing.is_final:
                    records[position] = existing = record
                kept.append(existing)
                if not stored_as_given(record, existing):
                    return Applied(kept, record_conflict=True)
            new_signals = 0
            for signal in change.signals:
                by_name = self._signals.setdefault(signal.flow_id, {})
                if signal.name not in by_name:
                    by_name[signal.name] = signal
                    new_signals += 1
            for write in change.writes:
                row = self._rows.get(write.flow_id)
                if row is None:
                    continue
                allowed = write.only_if_status
                if allowed is None or TaskStatus(str(row["status"])) in allowed:
                    row.update(_columns(write.changes))
                row["version"] = int(str(row["version"])) + 1
        if change.notify:
            self._work.set()
        return Applied(kept, signals_stored=new_signals)

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[base.ClaimedRun]:
        """Take up to ``request.limit`` runnable flows of its types, in queue order."""
        async with await self._turn():
            flows = [_from_row(row) for row in self._rows.values()]
            runnable = sorted(
                (
                    f
                    for f in flows
                    if f.flow_type in request.flow_types
                    and is_runnable(f, request.now, request.due_by)
                ),
                key=queue_order,
            )
            runs = []
            for flow in runnable[: request.limit]:
                row = self._rows[flow.flow_id]
                changes = claim_changes(
                    request, lease_token=new_lease_token(), at=time.time(), flow=flow
                )
                row.update(_columns(changes))
                row["version"] = flow.version + 1
                runs.append(base.ClaimedRun(_from_row(row), self._log(flow.flow_id)))
            return runs

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        """Extend the leases still held with their tokens; the version stays."""
        async with await self._turn():
            held = set()
            for flow_id, token in leases.items():
                row = self._rows.get(flow_id)
                if (
                    row
                    and row["status"] == TaskStatus.RUNNING.value
                    and row["lease_token"] == token
                ):
                    row["lease_expires_at"] = now + lease_seconds
                    held.add(flow_id)
            return held

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` asked to cancel."""
        async with await self._turn():
            return {
                flow_id
                for flow_id in flow_ids
                if (row := self._rows.get(flow_id))
                and row["status"] == TaskStatus.RUNNING.value
                and row["cancel_requested"]
            }

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest wake time of a suspended flow."""
        async with await self._turn():
            times = [
                flow.wake_at
                for flow in map(_from_row, self._rows.values())
                if flow.status is TaskStatus.SUSPENDED
                and flow.wake_at is not None
                and (flow_types is None or flow.flow_type in flow_types)
            ]
        return min(times, default=None)

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for a notification, or ``timeout`` seconds."""
        if not await base.wait_for_event(self._work, timeout):
            return False
        self._work.clear()
        return True

    # -- reads -------------------------------------------------------------------------------

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        async with await self._turn():
            row = self._rows.get(flow_id)
            return None if row is None else _from_row(row)

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records by position."""
        async with await self._turn():
            return self._log(flow_id)

    def _log(self, flow_id: str) -> list[Invocation]:
        records = self._records.get(flow_id, {})
        return [records[position] for position in sorted(records)]

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first, then by name."""
        async with await self._turn():
            signals = list(self._signals.get(flow_id, {}).values())
        return sorted(signals, key=lambda signal: (signal.sent_at, signal.name))

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        """Return the page of flows ``query`` asks for, newest first."""
        async with await self._turn():
            flows = [_from_row(row) for row in self._rows.values()]
        return (query or FlowQuery()).page_of(flows)

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        """Count flows by status."""
        counts = dict.fromkeys(TaskStatus, 0)
        ids = FlowQuery(flow_ids=flow_ids).flow_ids  # checks them
        async with await self._turn():
            for row in self._rows.values():
                recent = created_after is None or float(str(row["created_at"])) >= created_after
                chosen = ids is None or row["flow_id"] in ids
                if flow_type in (None, row["flow_type"]) and recent and chosen:
                    counts[TaskStatus(str(row["status"]))] += 1
        return counts

    async def artifact_references(self) -> set[str]:
        """Return the digests the stored payloads name, read with the public payload_info."""
        async with await self._turn():
            payloads = [row[name] for row in self._rows.values() for name in ("payload", "result")]
            payloads += [r.result for log in self._records.values() for r in log.values()]
            payloads += [s.payload for signals in self._signals.values() for s in signals.values()]
        infos = [payload_info(data) for data in payloads if isinstance(data, bytes)]
        return {
            info.artifact.removeprefix("sha256:")
            for info in infos
            if info is not None and info.artifact is not None
        }

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals."""
        async with await self._turn():
            self._records.pop(flow_id, None)
            self._signals.pop(flow_id, None)
            return self._rows.pop(flow_id, None) is not None

    async def reset(self) -> None:
        """Delete everything."""
        async with await self._turn():
            self._rows.clear()
            self._records.clear()
            self._signals.clear()
