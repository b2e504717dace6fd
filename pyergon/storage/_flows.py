"""Changing stored flows: read, let the state machine decide, apply under a version guard.

This is the one place the loop is written. :mod:`pyergon.core.transitions` decides what an event
does to a flow; :meth:`~pyergon.storage.ExecutionLog.apply` writes it only if the flow is still at
the version it was decided on; if it moved on meanwhile (a cancel request, a signal, a finished
child, another worker), the flow is read again and the event decided again. Runtime, management
and notebook code change flows only through these functions, on every backend alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial

from pyergon.core.changes import Applied, Change, FlowWrite
from pyergon.core.query import FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.transitions import (
    RunEnd,
    Transition,
    holds,
    leave_run,
    signal_arrival,
)
from pyergon.core.transitions import request_cancel as decide_cancel
from pyergon.core.transitions import requeue as decide_requeue
from pyergon.core.transitions import start_direct_run as decide_direct_run
from pyergon.errors import StorageError
from pyergon.storage.base import ExecutionLog

__all__ = [
    "HeldFlow",
    "deliver_signal",
    "find_signal",
    "reopen_failed_work",
    "request_cancel",
    "requeue",
    "save_records",
    "start_direct_run",
]

_MAX_ROUNDS = 1_000
"""Decisions in a row that may meet a flow moved on by others before the caller is told."""


def _contended(flow_id: str) -> StorageError:
    return StorageError(
        f"flow {flow_id!r} kept changing under {_MAX_ROUNDS} attempts to change it; try again"
    )


def _with(change: Change, records: Sequence[Invocation], signals: Sequence[SignalRecord]) -> Change:
    return Change(
        records=tuple(records),
        signals=tuple(signals),
        writes=change.writes,
        forget_failed=change.forget_failed,
        notify=change.notify,
        forget=change.forget,
    )


async def _decide_and_apply(
    storage: ExecutionLog,
    flow_id: str,
    decide: Callable[[ScheduledFlow], Transition | None],
    along: Callable[[float], Awaitable[Change]] | None = None,
) -> tuple[ScheduledFlow | None, bool]:
    """Apply ``decide``'s transition of the stored flow; decide again while it moves on.

    Args:
        storage: The flow's storage.
        flow_id: The flow to change.
        decide: The transition of the flow as stored, or ``None`` to change nothing.
        along: Builds (given the time) what is applied in the same change as the transition,
            under its guard; read again with every new decision.

    Returns:
        The flow as the transition left it (or as stored, if ``decide`` changed nothing;
        ``None`` if it does not exist), and whether it was changed.
    """
    for _ in range(_MAX_ROUNDS):
        flow = await storage.get_flow(flow_id)
        if flow is None:
            return None, False
        transition = decide(flow)
        if transition is None:
            return flow, False
        change = transition.change
        if along is not None:
            change = _joined(change, await along(time.time()))
        applied = await storage.apply(change)
        if applied.moved is None:
            return transition.flow, True
    raise _contended(flow_id)


async def save_records(storage: ExecutionLog, records: Sequence[Invocation]) -> Applied:
    """Store records (first writer wins) without changing any flow."""
    return await storage.apply(Change(records=tuple(records)))


async def start_direct_run(storage: ExecutionLog, flow_id: str) -> ScheduledFlow | None:
    """Make a flow ``RUNNING`` for a direct executor (see ``transitions.start_direct_run``)."""
    flow, _ = await _decide_and_apply(
        storage, flow_id, lambda flow: decide_direct_run(flow, at=time.time())
    )
    return flow


async def request_cancel(storage: ExecutionLog, flow_id: str) -> ScheduledFlow | None:
    """Cancel a flow now, or at its next step boundary if it runs.

    Returns:
        The flow as stored afterwards, or ``None`` if it does not exist.
    """
    flow, _ = await _decide_and_apply(
        storage, flow_id, lambda flow: decide_cancel(flow, at=time.time())
    )
    return flow


async def requeue(
    storage: ExecutionLog,
    flow_id: str,
    *,
    from_statuses: Collection[TaskStatus],
    fields: Mapping[str, object] | None = None,
    reopen_failed: bool = False,
    lost_by: str | None = None,
) -> ScheduledFlow | None:
    """Put a flow back in the queue if its status is one of ``from_statuses``.

    Args:
        storage: The flow's storage.
        flow_id: The flow to requeue.
        from_statuses: The statuses the operation applies to.
        fields: Other fields to set.
        reopen_failed: Also make its failed work run again (see :func:`reopen_failed_work`),
            in the same change: nothing is deleted unless the flow is requeued.
        lost_by: The dead worker whose ``RUNNING`` flow is taken back: its lost lease is
            counted, and the flow is requeued only while that worker holds it.

    Returns:
        The flow as requeued, or ``None`` if it does not exist or its status (or, with
        ``lost_by``, its lease owner) did not allow it.
    """
    flow, changed = await _decide_and_apply(
        storage,
        flow_id,
        lambda flow: decide_requeue(
            flow, from_statuses=from_statuses, fields=fields, at=time.time(), lost_by=lost_by
        ),
        partial(_reopening, storage, flow_id) if reopen_failed else None,
    )
    return flow if changed else None


async def reopen_failed_work(
    storage: ExecutionLog, flow_id: str, *, lease_token: str | None = None
) -> bool:
    """Make a flow's failed work run again: its failed records and its failed child flows.

    Records of steps that succeeded stay, so only what failed runs again. A failed child flow
    (and its failed children, and so on) is put back in the queue with its failed records
    cleared, so the parent's next run waits for a fresh attempt of the child instead of
    replaying the child's old failure. One change: a child that moved on meanwhile is decided
    again, and nothing is deleted for a child that is no longer ``FAILED``.

    Args:
        storage: The flow's storage.
        flow_id: The flow.
        lease_token: The lease of the run of ``flow_id`` that reopens its work: nothing is
            done unless the flow runs under it. ``None``: whatever holds the flow.

    Returns:
        Whether it was done: ``False`` only if the flow no longer runs under ``lease_token``.
    """
    held = None if lease_token is None else (flow_id, lease_token)
    for _ in range(_MAX_ROUNDS):
        change = dataclasses.replace(await _reopening(storage, flow_id, time.time()), held=held)
        moved = (await storage.apply(change)).moved
        if moved is None:
            return True
        if held is not None and moved == flow_id:  # the changes write only its children
            return False
    raise _contended(flow_id)


async def _reopening(storage: ExecutionLog, flow_id: str, at: float) -> Change:
    """The change forgetting the failed records of ``flow_id``, requeueing its failed children."""
    forget = [flow_id]
    writes: list[FlowWrite] = []
    parents = [flow_id]
    while parents:
        failed = await storage.list_flows(
            FlowQuery(parent_flow_id=parents.pop(), status=TaskStatus.FAILED, limit=10_000)
        )
        for child in failed:
            transition = decide_requeue(
                child,
                from_statuses=(TaskStatus.FAILED,),
                fields={"error": None, "attempt": 1},
                at=at,
            )
            assert transition is not None  # listed as FAILED
            forget.append(child.flow_id)
            writes += transition.change.writes
            parents.append(child.flow_id)
    return Change(writes=tuple(writes), forget_failed=tuple(forget), notify=bool(writes))


def _joined(first: Change, second: Change) -> Change:
    """One change doing what ``first`` and then ``second`` do (neither has records or signals)."""
    return Change(
        writes=first.writes + second.writes,
        forget_failed=first.forget_failed + second.forget_failed,
        notify=first.notify or second.notify,
        forget=first.forget + second.forget,
    )


async def find_signal(storage: ExecutionLog, flow_id: str, name: str) -> SignalRecord | None:
    """Return the signal ``name`` stored for ``flow_id``, or ``None``."""
    for signal in await storage.list_signals(flow_id):
        if signal.name == name:
            return signal
    return None


async def deliver_signal(storage: ExecutionLog, signal: SignalRecord) -> bool:
    """Store a signal unless its flow already has one of that name; wake a flow waiting for it.

    Returns:
        Whether the signal was new.
    """
    for _ in range(_MAX_ROUNDS):
        flow = await storage.get_flow(signal.flow_id)
        if await find_signal(storage, signal.flow_id, signal.name) is not None:
            return False
        waits = flow is not None and flow.status is TaskStatus.SUSPENDED
        if waits:
            waits = any(
                record.kind is OperationKind.SIGNAL
                and record.name == signal.name
                and record.status is InvocationStatus.WAITING_FOR_SIGNAL
                for record in await storage.load_invocations(signal.flow_id)
            )
        transition = signal_arrival(signal.flow_id, flow, waits_for_it=waits, at=time.time())
        applied = await storage.apply(_with(transition.change, (), (signal,)))
        if applied.moved is None:
            return applied.signals_stored == 1
    raise _contended(signal.flow_id)


class HeldFlow:
    """A flow a run holds, as the run last knows it stored, and the run's lease token.

    Args:
        storage: The flow's storage.
        flow: The flow as the claim (or the direct start) left it.
        lease_token: The claim's token; ``None`` for a direct run.

    Attributes:
        flow: The flow as last known stored.
        lost: Whether another run took the flow (or it stopped running): nothing the run
            decides about the flow is written any more.
    """

    def __init__(self, storage: ExecutionLog, flow: ScheduledFlow, lease_token: str | None) -> None:
        self.storage = storage
        self.flow_id = flow.flow_id
        self.lease_token = lease_token
        self.lost = False
        self._flow = flow
        self._left: Transition | None = None
        """The last transition applied, whose flow is built only if someone asks for it."""

    def __repr__(self) -> str:
        return f"HeldFlow({self.flow_id!r}, version={self.flow.version}, lost={self.lost})"

    @property
    def flow(self) -> ScheduledFlow:
        """The flow as last known stored."""
        if self._left is not None:
            self._flow = self._left.flow or self._flow
            self._left = None
        return self._flow

    async def leave(self, records: Sequence[Invocation], end: RunEnd) -> Applied:
        """Store ``records`` and leave the flow as ``end`` says, as one change.

        Decided on the run's copy first, so the usual case costs one write. If the flow moved
        on meanwhile, it is read again: still held, the end is decided again (a flow that would
        suspend for a signal or child that has arrived meanwhile goes back to the queue; one
        asked to cancel ends ``CANCELLED``); taken by another run (or deleted, or no longer
        running), nothing is stored, not even the records, and :attr:`lost` is set.

        Returns:
            What was applied; on a record conflict the flow was not changed; once the flow is
            lost, ``moved`` is its id and nothing was written.
        """
        flow: ScheduledFlow | None = self.flow
        last_records = tuple(records)
        # What a suspension waits for may have come before this run's copy of the flow was
        # taken (the run looked earlier); what comes later moves the version on.
        woken = end.status is TaskStatus.SUSPENDED and await self._wait_is_over(end)
        for _ in range(_MAX_ROUNDS):
            if not holds(flow, self.lease_token):
                self.lost = True  # another run holds the flow, or none: store nothing more
                return Applied(moved=self.flow_id)
            assert flow is not None  # held
            transition = leave_run(
                flow, end.status, end.fields, at=time.time(), woken=woken, records=last_records
            )
            applied = await self.storage.apply(transition.change)
            if applied.moved is None:
                if not applied.record_conflict and transition.before is not None:
                    self._left = transition
                return applied
            flow = await self.storage.get_flow(self.flow_id)
            woken = end.status is TaskStatus.SUSPENDED and await self._wait_is_over(end)
        raise _contended(self.flow_id)

    async def _wait_is_over(self, end: RunEnd) -> bool:
        """Whether a signal or child that a suspending ``end`` waits for arrived or finished."""
        if end.status is not TaskStatus.SUSPENDED:
            return False
        if end.waiting_signals:
            stored = {signal.name for signal in await self.storage.list_signals(self.flow_id)}
            if stored.intersection(end.waiting_signals):
                return True
        for child_id in end.waiting_children:
            child = await self.storage.get_flow(child_id)
            if child is not None and child.status.is_final:
                return True
        return False
