"""The flow state machine: what each event does to a flow, its lease, its parent and workers.

Every rule of a flow's life is written here once. The functions are pure: they take the flow as
stored (and the wall-clock time ``at`` to stamp ``updated_at``) and return a
:class:`Transition`, the flow as it will be and the :class:`~pyergon.core.changes.Change` that
makes it so. Storage applies the change atomically, guarded by the flow's ``version``; if the
flow moved on meanwhile, the caller reads it again and asks here again.

    event                            function               what happens
    a worker claims a flow           claim_changes          RUNNING under a new lease; the error
                                                            of a refused earlier claim goes; a
                                                            RUNNING flow taken over counts the
                                                            lease its worker lost
    which flows may be claimed       is_runnable            PENDING; due SUSPENDED; lease expired
    a run ends (complete, fail,      leave_run              the lease is dropped; a cancel request
      suspend, give back)                                   turns waiting into CANCELLED; a final
                                                            child wakes its parent
    a step is recorded               (no flow change)       records only
    someone asks to cancel           request_cancel         CANCELLED now, or at the next boundary
    a signal arrives                 signal_arrival         a flow waiting for it becomes PENDING
    a direct run starts              start_direct_run       RUNNING without a lease
    an operator requeues a flow      requeue                PENDING (resume, retry); a RUNNING
      (or a dead worker's flow)                             flow of a dead worker counts its loss
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from pyergon.core.changes import ABSENT, Change, FlowWrite
from pyergon.core.query import ClaimRequest
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import TaskStatus

__all__ = [
    "TAKEN_OVER",
    "RunEnd",
    "Transition",
    "claim_changes",
    "holds",
    "is_runnable",
    "lease_loss",
    "leave_run",
    "new_lease_token",
    "queue_order",
    "request_cancel",
    "requeue",
    "signal_arrival",
    "start_direct_run",
    "takeover_changes",
    "wake",
]

# Read once: on Python 3.11 each read of a member off its enum class goes through the enum
# metaclass's __getattr__ hook (about 900 instructions), and every run's end reads several.
_PENDING, _RUNNING, _SUSPENDED = TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUSPENDED
_WAITING = frozenset((_PENDING, _SUSPENDED))
_ONLY_SUSPENDED = frozenset((_SUSPENDED,))
_NO_LEASE: Mapping[str, object] = {
    "lease_owner": None,
    "lease_token": None,
    "lease_expires_at": None,
}


@dataclass(frozen=True, slots=True)
class Transition:
    """A decided change of state.

    Attributes:
        change: What storage applies: the guarded write of the flow, wake-ups of others and
            whether workers are notified; a run's last records with :func:`leave_run`.
            Other records and signals are added by the caller.
        before: The flow the change was decided on (``None`` if it does not exist).
        changes: The fields the change sets on it (its version moves on by one as well).
    """

    change: Change
    before: ScheduledFlow | None = None
    changes: Mapping[str, object] = field(default_factory=dict)

    @property
    def flow(self) -> ScheduledFlow | None:
        """The flow as the change leaves it (``None`` if it does not exist).

        Built when asked, not with the decision: most callers never need it (a copy of a flow
        is about 3 us, on the path of every run's end).
        """
        if self.before is None:
            return None
        return self.before.replace(**self.changes, version=self.before.version + 1)


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run wants to leave its flow, before the rules of :func:`leave_run` apply.

    Attributes:
        status: The status the run ends in (not ``RUNNING``).
        fields: Other fields it sets: ``result``, ``error``, ``wake_at``, ``attempt``.
        waiting_signals: For a suspension, the signals the flow waits for.
        waiting_children: For a suspension, the child flows it waits for.
    """

    status: TaskStatus
    fields: Mapping[str, object] = field(default_factory=dict)
    waiting_signals: tuple[str, ...] = ()
    waiting_children: tuple[str, ...] = ()


def _status_fields(status: TaskStatus) -> dict[str, object]:
    """The fields besides ``status`` and ``updated_at`` that every change to ``status`` sets."""
    fields: dict[str, object] = {}
    if status is not _RUNNING:
        fields.update(_NO_LEASE)
    if status is _PENDING:
        fields["cancel_requested"] = False
    if status.is_final or status is _PENDING:
        fields["wake_at"] = None
    return fields


_STATUS_FIELDS = {status: _status_fields(status) for status in TaskStatus}
"""Worked out once per status: every change of status asks."""


def _status_changes(flow: ScheduledFlow, status: TaskStatus, at: float) -> dict[str, object]:
    """The fields every change to ``status`` sets, whatever caused it."""
    return {"status": status, "updated_at": at, **_STATUS_FIELDS[status]}


def _settled_status(flow: ScheduledFlow, status: TaskStatus) -> TaskStatus:
    """A running flow asked to cancel ends ``CANCELLED`` where it would wait or requeue."""
    if status in _WAITING and flow.status is _RUNNING and flow.cancel_requested:
        return TaskStatus.CANCELLED
    return status


def wake(flow_id: str, at: float) -> FlowWrite:
    """The write that makes a ``SUSPENDED`` flow ``PENDING`` (and tells any holder it moved).

    Not guarded: it applies to the flow as stored. A flow in another status is not changed,
    but its version moves on, so a run about to suspend it decides again.
    """
    return FlowWrite(
        flow_id,
        {
            "status": _PENDING,
            "wake_at": None,
            "cancel_requested": False,
            "updated_at": at,
        },
        only_if_status=_ONLY_SUSPENDED,
    )


def _transition(
    flow: ScheduledFlow,
    changes: dict[str, object],
    at: float,
    *,
    notify: bool = False,
    records: tuple[Invocation, ...] = (),
) -> Transition:
    """Write ``changes`` to ``flow`` (with ``records``); a flow turning final wakes its parent."""
    writes = [FlowWrite(flow.flow_id, changes, expected_version=flow.version)]
    # Annotated rather than cast(): typing.cast is a Python call, ~900 instructions, twice a run.
    status: TaskStatus = changes.get("status", flow.status)  # type: ignore[assignment]
    parent: str | None = changes.get("parent_flow_id", flow.parent_flow_id)  # type: ignore[assignment]
    if status.is_final and not flow.status.is_final and parent is not None:
        writes.append(wake(parent, at))
        notify = True
    if status is _PENDING:
        notify = True
    if status is _SUSPENDED and changes.get("wake_at", flow.wake_at) is not None:
        notify = True  # a worker waiting for the earliest timer may have to wake earlier
    return Transition(Change(records=records, writes=tuple(writes), notify=notify), flow, changes)


# -- claims --------------------------------------------------------------------------------------


def new_lease_token() -> str:
    """A fresh, unguessable lease token."""
    return uuid.uuid4().hex


TAKEN_OVER = TaskStatus.RUNNING
"""The status of a runnable flow whose claim is a takeover: its lease expired, so the worker
that held it died or lost it, and the claim counts that loss (see :func:`takeover_changes`)."""


def lease_loss(flow: ScheduledFlow, lost_by: str | None) -> dict[str, object]:
    """The fields recording that a worker lost ``flow``'s lease: one loss more, by ``lost_by``."""
    return {"lease_losses": flow.lease_losses + 1, "last_lost_by": lost_by}


def takeover_changes(flow: ScheduledFlow) -> dict[str, object]:
    """What a claim of ``flow`` records besides its own fields: the loss, if it is a takeover.

    A claim that takes a ``RUNNING`` flow (:data:`TAKEN_OVER`; its lease expired) counts one
    lost lease and names the lease's owner as the loser; a claim of a waiting flow records
    nothing. Backends that claim in one statement apply the same rule in storage, from the
    flow's stored status, lease owner and count.
    """
    if flow.status is not TAKEN_OVER:
        return {}
    return lease_loss(flow, flow.lease_owner)


def claim_changes(
    request: ClaimRequest, *, lease_token: str, at: float, flow: ScheduledFlow | None = None
) -> dict[str, object]:
    """The fields a claim sets on a runnable flow (its version moves on as with any write).

    A waiting flow has an ``error`` only when a worker that could not read it gave it back
    (see ``Worker``); the claim clears it.

    Args:
        request: The claim: its worker holds the lease for its ``lease_seconds`` from ``now``.
        lease_token: A token of this claim alone (see :func:`new_lease_token`).
        at: Wall-clock time for ``updated_at``.
        flow: The flow claimed, as stored: a takeover adds :func:`takeover_changes`. A backend
            that claims many flows in one statement leaves it out and applies that rule itself.
    """
    changes: dict[str, object] = {
        "status": TaskStatus.RUNNING,
        "updated_at": at,
        "lease_owner": request.worker_id,
        "lease_token": lease_token,
        "lease_expires_at": request.now + request.lease_seconds,
        "worker_id": request.worker_id,
        # Why an earlier claim gave the flow back unrun (a worker that could not read it);
        # this run starts afresh, so it goes.
        "error": None,
    }
    if flow is not None and flow.status is TAKEN_OVER:  # tested here: claims are hot
        changes.update(takeover_changes(flow))
    return changes


def is_runnable(flow: ScheduledFlow, now: float, due_by: float | None = None) -> bool:
    """Whether a worker may claim ``flow`` now.

    Runnable: ``PENDING``; ``SUSPENDED`` with a wake time at or before ``due_by`` (default
    ``now``; a worker passes a little more to prepare timers about to fire); ``RUNNING`` with a
    lease that expired before ``now`` (its worker died). A direct run has no lease and is
    never claimed.
    """
    if flow.status is _PENDING:
        return True
    if flow.status is _SUSPENDED:
        due = now if due_by is None else max(due_by, now)
        return flow.wake_at is not None and flow.wake_at <= due
    if flow.status is _RUNNING:
        return flow.lease_expires_at is not None and flow.lease_expires_at < now
    return False


def queue_order(flow: ScheduledFlow) -> tuple[float, float, str]:
    """The key runnable flows are claimed in: ready time, then creation, then id.

    A suspended flow is ready at its wake time; every other runnable flow at 0.
    """
    ready_at = flow.wake_at if flow.status is _SUSPENDED and flow.wake_at else 0.0
    return (ready_at, flow.created_at, flow.flow_id)


def holds(flow: ScheduledFlow | None, lease_token: str | None) -> bool:
    """Whether a run holding ``lease_token`` (``None``: a direct run) still holds ``flow``."""
    return flow is not None and flow.status is _RUNNING and flow.lease_token == lease_token


# -- runs ------------------------------------------------------------------------------------------


def start_direct_run(flow: ScheduledFlow, *, at: float) -> Transition | None:
    """A direct executor takes a flow that no worker holds: ``RUNNING`` without a lease.

    Returns:
        ``None`` if the flow is final or already running (it is then run as it is).
    """
    if flow.status.is_final or flow.status is _RUNNING:
        return None
    return _transition(flow, _status_changes(flow, _RUNNING, at), at)


def leave_run(
    flow: ScheduledFlow,
    status: TaskStatus,
    fields: Mapping[str, object] | None = None,
    *,
    at: float,
    woken: bool = False,
    records: tuple[Invocation, ...] = (),
) -> Transition:
    """A run leaves its flow in ``status``: finished, suspended or given back to the queue.

    Args:
        flow: The flow as stored, held by the run.
        status: The status the run ends in (not ``RUNNING``).
        fields: Other fields the run sets (``result``, ``error``, ``wake_at``, ``attempt``).
        at: Wall-clock time for ``updated_at``.
        woken: What the run would wait for arrived while it ended (a signal stored, a child
            finished): a flow that would suspend goes back to the queue instead, and its next
            run finds what arrived.
        records: The run's last records, stored in the same change.

    Rules: the lease is dropped; a flow whose cancellation was requested ends ``CANCELLED``
    where it would suspend or requeue; a flow reaching a final status wakes its parent.

    Raises:
        ValueError: ``status`` is ``RUNNING``.
    """
    if status is _RUNNING:
        raise ValueError("a run cannot leave its flow RUNNING; claim or start it instead")
    if woken and status is _SUSPENDED:
        status = _PENDING
    settled = _settled_status(flow, status)
    changes = dict(fields or {})
    changes.update(_status_changes(flow, settled, at))
    if settled is _SUSPENDED and "wake_at" not in changes:
        changes["wake_at"] = None
    return _transition(flow, changes, at, records=records)


# -- events from outside a run -----------------------------------------------------------------


def request_cancel(flow: ScheduledFlow, *, at: float) -> Transition | None:
    """Someone asks to cancel ``flow``.

    A waiting flow is ``CANCELLED`` at once (waking its parent); a running one is marked and
    stops at its next step boundary.

    Returns:
        ``None`` if there is nothing to change: the flow is final or already marked.
    """
    if flow.status.is_final:
        return None
    if flow.status is _RUNNING:
        if flow.cancel_requested:
            return None
        return _transition(flow, {"cancel_requested": True, "updated_at": at}, at, notify=True)
    return _transition(flow, _status_changes(flow, TaskStatus.CANCELLED, at), at)


def signal_arrival(
    flow_id: str, flow: ScheduledFlow | None, *, waits_for_it: bool, at: float
) -> Transition:
    """A signal for ``flow_id`` is stored.

    Args:
        flow_id: The flow the signal is for.
        flow: That flow as stored, or ``None`` if it does not exist (yet): the signal is kept
            for it.
        waits_for_it: Whether the flow's log has a record waiting for this signal.
        at: Wall-clock time for ``updated_at``.

    A ``SUSPENDED`` flow waiting for the signal becomes ``PENDING``. Any other flow is only
    touched (its version moves on), so a run about to suspend it for this signal decides again.
    """
    if flow is None:
        return Transition(Change(writes=(FlowWrite(flow_id, expected_version=ABSENT),)))
    if flow.status is _SUSPENDED and waits_for_it:
        return _transition(flow, _status_changes(flow, _PENDING, at), at)
    touch = FlowWrite(flow_id, expected_version=flow.version)
    return Transition(Change(writes=(touch,)), flow)


def requeue(
    flow: ScheduledFlow,
    *,
    from_statuses: Collection[TaskStatus],
    fields: Mapping[str, object] | None = None,
    at: float,
    lost_by: str | None = None,
) -> Transition | None:
    """An operator puts ``flow`` back in the queue (resume, retry), if its status allows.

    Args:
        flow: The flow as stored.
        from_statuses: The statuses the operation applies to.
        fields: Other fields to set (a retry clears ``error`` and ``result`` and starts the
            attempts over; the count of lost leases stays, it is the flow's history).
        at: Wall-clock time for ``updated_at``.
        lost_by: The worker known dead whose ``RUNNING`` flow this requeue takes back: the
            requeue counts its lost lease (see :func:`lease_loss`), and applies only while
            that worker holds the lease. No effect on a flow in another status.

    Returns:
        ``None`` if the flow's status is not one of ``from_statuses``, or it is ``RUNNING``
        under a lease of another than ``lost_by`` (another worker took it meanwhile).
    """
    if flow.status not in from_statuses:
        return None
    changes = dict(fields or {})
    if lost_by is not None and flow.status is TaskStatus.RUNNING:
        if flow.lease_owner != lost_by:
            return None
        changes.update(lease_loss(flow, lost_by))
    status = _settled_status(flow, _PENDING)
    changes.update(_status_changes(flow, status, at))
    return _transition(flow, changes, at)
