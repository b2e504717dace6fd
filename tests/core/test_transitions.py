"""The flow state machine, without storage: every event's decision, field by field."""

from __future__ import annotations

import itertools

import pytest

from pyergon.core.changes import ABSENT, Change, FlowWrite
from pyergon.core.query import ClaimRequest
from pyergon.core.records import ScheduledFlow, StoredError
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import (
    TAKEN_OVER,
    RunEnd,
    Transition,
    claim_changes,
    holds,
    is_runnable,
    lease_loss,
    leave_run,
    new_lease_token,
    queue_order,
    request_cancel,
    requeue,
    signal_arrival,
    start_direct_run,
    takeover_changes,
    wake,
)
from pyergon.testing import make_flow, make_invocation

AT = 2_000.0
FINAL = [TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED]
WAITING = [TaskStatus.PENDING, TaskStatus.SUSPENDED]
NOT_RUNNING = [status for status in TaskStatus if status is not TaskStatus.RUNNING]
NO_LEASE = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}


def running(flow_id: str = "flow-1", **changes: object) -> ScheduledFlow:
    """A flow held by ``worker-a`` under token ``t`` until 1030, at version 2."""
    fields: dict[str, object] = {
        "status": TaskStatus.RUNNING,
        "lease_owner": "worker-a",
        "lease_token": "t",
        "lease_expires_at": 1_030.0,
        "worker_id": "worker-a",
        "version": 2,
    }
    fields.update(changes)
    return make_flow(flow_id, **fields)


def only_write(transition: Transition) -> FlowWrite:
    assert len(transition.change.writes) == 1
    return transition.change.writes[0]


def check_decided(flow: ScheduledFlow, transition: Transition) -> None:
    """The flow a transition names is its first write applied to ``flow``, guarded by version."""
    write = transition.change.writes[0]
    assert (write.flow_id, write.expected_version) == (flow.flow_id, flow.version)
    assert transition.flow == write.applied_to(flow)
    assert transition.change.records == () and transition.change.signals == ()
    assert transition.change.forget_failed == ()


# -- claims ---------------------------------------------------------------------------------------


def test_a_lease_token_is_fresh_hex() -> None:
    tokens = {new_lease_token() for _ in range(1_000)}

    assert len(tokens) == 1_000
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in tokens)


def test_claim_changes_put_the_flow_under_a_lease() -> None:
    request = ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=30, now=1_000.0)
    changes = claim_changes(request, lease_token="tok", at=AT)

    assert changes == {
        "status": TaskStatus.RUNNING,
        "updated_at": AT,
        "lease_owner": "worker-a",
        "lease_token": "tok",
        "lease_expires_at": 1_030.0,
        "worker_id": "worker-a",
        "error": None,  # left by a worker that gave the flow back unread
    }


def test_a_claim_of_a_running_flow_counts_the_lease_its_worker_lost() -> None:
    request = ClaimRequest("worker-b", ["Order"], limit=1, lease_seconds=30, now=1_040.0)
    expired = running(lease_losses=2, last_lost_by="worker-z")

    changes = claim_changes(request, lease_token="tok", at=AT, flow=expired)

    assert changes == claim_changes(request, lease_token="tok", at=AT) | {
        "lease_losses": 3,
        "last_lost_by": "worker-a",
    }
    assert TAKEN_OVER is TaskStatus.RUNNING
    assert takeover_changes(expired) == {"lease_losses": 3, "last_lost_by": "worker-a"}


@pytest.mark.parametrize("status", NOT_RUNNING)
def test_a_claim_of_a_flow_not_running_counts_no_loss(status: TaskStatus) -> None:
    request = ClaimRequest("worker-b", ["Order"], limit=1, lease_seconds=30, now=1_040.0)
    flow = make_flow(status=status, lease_losses=1, last_lost_by="worker-z")

    changes = claim_changes(request, lease_token="tok", at=AT, flow=flow)

    assert changes == claim_changes(request, lease_token="tok", at=AT)
    assert takeover_changes(flow) == {}


def test_a_lease_loss_is_one_more_by_the_worker_named() -> None:
    assert lease_loss(make_flow(), "worker-a") == {"lease_losses": 1, "last_lost_by": "worker-a"}
    assert lease_loss(make_flow(lease_losses=4), None) == {"lease_losses": 5, "last_lost_by": None}


@pytest.mark.parametrize(
    ("flow", "now", "due_by", "expected"),
    [
        pytest.param(make_flow(), 0.0, None, True, id="pending"),
        pytest.param(make_flow(wake_at=9e9), 0.0, None, True, id="pending-with-a-wake-time"),
        pytest.param(make_flow(status=TaskStatus.SUSPENDED), 9e9, None, False, id="no-timer"),
        pytest.param(
            make_flow(status=TaskStatus.SUSPENDED, wake_at=5.0), 5.0, None, True, id="due"
        ),
        pytest.param(
            make_flow(status=TaskStatus.SUSPENDED, wake_at=5.0), 4.9, None, False, id="not-due"
        ),
        pytest.param(
            make_flow(status=TaskStatus.SUSPENDED, wake_at=5.0), 4.9, 5.0, True, id="due-by"
        ),
        pytest.param(
            make_flow(status=TaskStatus.SUSPENDED, wake_at=5.0), 5.0, 1.0, True, id="due-by-past"
        ),
        pytest.param(running(), 1_030.0, None, False, id="lease-ends-now"),
        pytest.param(running(), 1_030.1, None, True, id="lease-expired"),
        pytest.param(running(), 1_000.0, 2_000.0, False, id="due-by-is-not-for-leases"),
        pytest.param(running(lease_expires_at=None), 9e9, None, False, id="direct-run"),
        *(
            pytest.param(make_flow(status=status, wake_at=1.0), 9e9, None, False, id=status.value)
            for status in FINAL
        ),
    ],
)
def test_is_runnable(flow: ScheduledFlow, now: float, due_by: float | None, expected: bool) -> None:
    assert is_runnable(flow, now, due_by) is expected


def test_queue_order_is_ready_time_then_creation_then_id() -> None:
    flows = [
        make_flow("timer-late", status=TaskStatus.SUSPENDED, wake_at=50.0, created_at=1.0),
        make_flow("timer-early", status=TaskStatus.SUSPENDED, wake_at=20.0, created_at=9.0),
        make_flow("pending-b", created_at=5.0),
        make_flow("pending-a", created_at=5.0, wake_at=1.0),  # a PENDING flow's wake_at is moot
        running("expired", created_at=3.0, lease_expires_at=1.0),
        make_flow("new", created_at=7.0),
    ]

    ordered = sorted(flows, key=queue_order)

    assert [flow.flow_id for flow in ordered] == [
        "expired",
        "pending-a",
        "pending-b",
        "new",
        "timer-early",
        "timer-late",
    ]
    assert queue_order(flows[1]) == (20.0, 9.0, "timer-early")
    assert queue_order(flows[2]) == (0.0, 5.0, "pending-b")


@pytest.mark.parametrize(
    ("flow", "token", "expected"),
    [
        pytest.param(None, "t", False, id="missing"),
        pytest.param(running(), "t", True, id="held"),
        pytest.param(running(), "other", False, id="other-token"),
        pytest.param(running(), None, False, id="a-direct-run-of-a-leased-flow"),
        pytest.param(running(lease_token=None), None, True, id="direct-run"),
        *(
            pytest.param(make_flow(status=status, lease_token="t"), "t", False, id=status.value)
            for status in NOT_RUNNING
        ),
    ],
)
def test_holds(flow: ScheduledFlow | None, token: str | None, expected: bool) -> None:
    assert holds(flow, token) is expected


# -- direct runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", WAITING)
def test_a_direct_run_takes_a_waiting_flow_without_a_lease(status: TaskStatus) -> None:
    flow = make_flow(status=status, version=4)

    transition = start_direct_run(flow, at=AT)

    assert transition is not None
    check_decided(flow, transition)
    assert transition.flow == flow.replace(status=TaskStatus.RUNNING, updated_at=AT, version=5)
    assert holds(transition.flow, None)
    assert not transition.change.notify


@pytest.mark.parametrize("status", [*FINAL, TaskStatus.RUNNING])
def test_a_direct_run_takes_a_final_or_running_flow_as_it_is(status: TaskStatus) -> None:
    assert start_direct_run(make_flow(status=status), at=AT) is None


# -- a run leaving its flow -----------------------------------------------------------------------


def test_a_run_cannot_leave_its_flow_running() -> None:
    with pytest.raises(ValueError, match="RUNNING"):
        leave_run(running(), TaskStatus.RUNNING, at=AT)


def _expected_end(status: TaskStatus, cancel_requested: bool, woken: bool) -> TaskStatus:
    if woken and status is TaskStatus.SUSPENDED:
        status = TaskStatus.PENDING
    if cancel_requested and status in WAITING:
        return TaskStatus.CANCELLED
    return status


@pytest.mark.parametrize(
    ("status", "cancel_requested", "woken", "wake_at", "parent"),
    list(
        itertools.product(NOT_RUNNING, [False, True], [False, True], [None, 1_500.0], [None, "p"])
    ),
)
def test_leaving_a_run(
    status: TaskStatus,
    cancel_requested: bool,
    woken: bool,
    wake_at: float | None,
    parent: str | None,
) -> None:
    flow = running(cancel_requested=cancel_requested, parent_flow_id=parent, parent_sequence="1")
    error = StoredError("builtins.ValueError", "bad")
    fields = {"result": b"r", "error": error, "attempt": 3, "wake_at": wake_at}

    transition = leave_run(flow, status, fields, at=AT, woken=woken)

    check_decided(flow, transition)
    after = transition.flow
    assert after is not None
    end = _expected_end(status, cancel_requested, woken)
    assert after.status is end
    assert {name: getattr(after, name) for name in NO_LEASE} == NO_LEASE
    assert (after.result, after.error, after.attempt, after.updated_at) == (b"r", error, 3, AT)
    assert after.worker_id == "worker-a"
    assert after.version == flow.version + 1
    assert after.wake_at == (wake_at if end is TaskStatus.SUSPENDED else None)
    assert after.cancel_requested is (cancel_requested and end is not TaskStatus.PENDING)
    wakes_parent = end.is_final and parent is not None
    assert transition.change.writes[1:] == ((wake(parent, AT),) if wakes_parent and parent else ())
    notify = (
        wakes_parent
        or end is TaskStatus.PENDING
        or (end is TaskStatus.SUSPENDED and wake_at is not None)
    )
    assert transition.change.notify is notify


def test_leaving_without_fields_keeps_the_outcome_fields() -> None:
    flow = running(result=b"old", attempt=2, wake_at=7.0)

    suspended = leave_run(flow, TaskStatus.SUSPENDED, at=AT).flow

    assert suspended is not None
    assert (suspended.result, suspended.attempt, suspended.wake_at) == (b"old", 2, None)


def test_a_run_leaves_its_flow_with_its_last_records_in_one_change() -> None:
    records = (make_invocation(sequence=1), make_invocation(sequence=2))

    transition = leave_run(running(), TaskStatus.COMPLETE, at=AT, records=records)

    assert transition.change.records == records
    assert transition.change.signals == ()


def test_a_final_flow_leaving_again_wakes_no_parent() -> None:
    flow = make_flow(status=TaskStatus.COMPLETE, parent_flow_id="p", version=3)

    transition = leave_run(flow, TaskStatus.FAILED, at=AT)

    assert [write.flow_id for write in transition.change.writes] == ["flow-1"]


# -- cancel requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", FINAL)
def test_cancelling_a_final_flow_decides_nothing(status: TaskStatus) -> None:
    assert request_cancel(make_flow(status=status), at=AT) is None


def test_cancelling_a_running_flow_marks_it_and_notifies() -> None:
    flow = running()

    transition = request_cancel(flow, at=AT)

    assert transition is not None
    check_decided(flow, transition)
    assert only_write(transition).changes == {"cancel_requested": True, "updated_at": AT}
    assert transition.flow == flow.replace(cancel_requested=True, updated_at=AT, version=3)
    assert transition.change.notify
    assert request_cancel(flow.replace(cancel_requested=True), at=AT) is None


@pytest.mark.parametrize("status", WAITING)
@pytest.mark.parametrize("parent", [None, "p"])
def test_cancelling_a_waiting_flow_cancels_it_at_once(
    status: TaskStatus, parent: str | None
) -> None:
    flow = make_flow(status=status, wake_at=50.0, parent_flow_id=parent, attempt=2)

    transition = request_cancel(flow, at=AT)

    assert transition is not None
    check_decided(flow, transition)
    assert transition.flow == flow.replace(
        status=TaskStatus.CANCELLED, wake_at=None, updated_at=AT, version=2
    )
    assert transition.change.writes[1:] == ((wake("p", AT),) if parent else ())
    assert transition.change.notify is (parent is not None)


# -- signals --------------------------------------------------------------------------------------


def test_a_signal_for_a_flow_not_created_yet_needs_it_absent() -> None:
    transition = signal_arrival("flow-1", None, waits_for_it=False, at=AT)

    assert transition.flow is None
    assert transition.change == Change(writes=(FlowWrite("flow-1", expected_version=ABSENT),))


def test_a_signal_wakes_a_suspended_flow_waiting_for_it() -> None:
    flow = make_flow(status=TaskStatus.SUSPENDED, wake_at=50.0, version=3)

    transition = signal_arrival("flow-1", flow, waits_for_it=True, at=AT)

    check_decided(flow, transition)
    assert transition.flow == flow.replace(
        status=TaskStatus.PENDING, wake_at=None, updated_at=AT, version=4
    )
    assert transition.change.notify


@pytest.mark.parametrize(
    ("status", "waits"),
    [
        (TaskStatus.SUSPENDED, False),
        *((status, True) for status in TaskStatus if status is not TaskStatus.SUSPENDED),
    ],
)
def test_any_other_signal_only_touches_the_flow(status: TaskStatus, waits: bool) -> None:
    flow = make_flow(status=status, version=3)

    transition = signal_arrival("flow-1", flow, waits_for_it=waits, at=AT)

    assert transition.change == Change(writes=(FlowWrite("flow-1", expected_version=3),))
    assert transition.flow == flow.replace(version=4)


# -- requeues and wake-ups ------------------------------------------------------------------------


def test_a_requeue_from_another_status_decides_nothing() -> None:
    assert requeue(make_flow(status=TaskStatus.COMPLETE), from_statuses=[], at=AT) is None
    failed = make_flow(status=TaskStatus.FAILED)
    assert requeue(failed, from_statuses={TaskStatus.CANCELLED}, at=AT) is None


@pytest.mark.parametrize("status", [*FINAL, TaskStatus.SUSPENDED, TaskStatus.PENDING])
def test_a_requeue_makes_the_flow_pending_with_its_fields(status: TaskStatus) -> None:
    flow = make_flow(
        status=status, wake_at=9.0, cancel_requested=True, error=StoredError("x.E", "m")
    )

    transition = requeue(
        flow, from_statuses=set(TaskStatus), fields={"error": None, "attempt": 1}, at=AT
    )

    assert transition is not None
    check_decided(flow, transition)
    assert transition.flow == make_flow(updated_at=AT, version=2)
    assert transition.change.notify


def test_a_requeue_of_a_running_flow_asked_to_cancel_cancels_it() -> None:
    flow = running(cancel_requested=True, parent_flow_id="p")

    transition = requeue(flow, from_statuses={TaskStatus.RUNNING}, at=AT)

    assert transition is not None and transition.flow is not None
    assert transition.flow.status is TaskStatus.CANCELLED
    assert transition.change.writes[1:] == (wake("p", AT),)


def test_a_requeue_of_a_dead_workers_flow_counts_its_lost_lease() -> None:
    flow = running(lease_losses=1, last_lost_by="worker-z", attempt=2)

    transition = requeue(flow, from_statuses={TaskStatus.RUNNING}, at=AT, lost_by="worker-a")

    assert transition is not None
    check_decided(flow, transition)
    assert transition.flow == make_flow(
        attempt=2,
        worker_id="worker-a",
        lease_losses=2,
        last_lost_by="worker-a",
        updated_at=AT,
        version=3,
    )
    assert transition.change.notify


def test_a_requeue_for_a_dead_worker_leaves_a_flow_another_worker_holds() -> None:
    taken = running(lease_owner="worker-b", worker_id="worker-b")

    assert requeue(taken, from_statuses={TaskStatus.RUNNING}, at=AT, lost_by="worker-a") is None
    direct = running(lease_owner=None, lease_token=None, lease_expires_at=None)
    assert requeue(direct, from_statuses={TaskStatus.RUNNING}, at=AT, lost_by="worker-a") is None


@pytest.mark.parametrize("status", NOT_RUNNING)
def test_a_requeue_for_a_dead_worker_counts_no_loss_of_a_flow_not_running(
    status: TaskStatus,
) -> None:
    flow = make_flow(status=status, lease_losses=1, last_lost_by="worker-z")

    transition = requeue(flow, from_statuses=set(TaskStatus), at=AT, lost_by="worker-a")

    assert transition is not None and transition.flow is not None
    assert (transition.flow.lease_losses, transition.flow.last_lost_by) == (1, "worker-z")


def test_a_retry_keeps_the_count_of_lost_leases() -> None:
    flow = make_flow(status=TaskStatus.FAILED, lease_losses=2, last_lost_by="worker-a")

    transition = requeue(
        flow, from_statuses={TaskStatus.FAILED}, fields={"error": None, "attempt": 1}, at=AT
    )

    assert transition is not None and transition.flow is not None
    assert (transition.flow.lease_losses, transition.flow.last_lost_by) == (2, "worker-a")


def test_wake_makes_only_a_suspended_flow_pending() -> None:
    write = wake("p", AT)

    assert (write.flow_id, write.expected_version) == ("p", None)
    assert write.only_if_status == frozenset({TaskStatus.SUSPENDED})
    asleep = make_flow("p", status=TaskStatus.SUSPENDED, wake_at=9.0, cancel_requested=True)
    assert write.applied_to(asleep) == make_flow("p", updated_at=AT, version=2)
    for status in NOT_RUNNING:
        if status is not TaskStatus.SUSPENDED:
            other = make_flow("p", status=status, wake_at=9.0)
            assert write.applied_to(other) == other.replace(version=2)
    assert write.applied_to(running("p")) == running("p", version=3)


def test_a_run_end_holds_a_status_and_fields() -> None:
    end = RunEnd(TaskStatus.COMPLETE)

    assert (end.status, dict(end.fields)) == (TaskStatus.COMPLETE, {})
