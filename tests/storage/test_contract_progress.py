"""The storage contract for ``save_progress``: a run's records, then its flow's new state."""

from __future__ import annotations

import pytest

from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import ExecutionLog
from pyergon.storage.progress import FlowTransition

from .conftest import FlowFactory, InvocationFactory, SignalFactory


def complete(result: bytes = b"done") -> FlowTransition:
    return FlowTransition(TaskStatus.COMPLETE, result=result, wake_at=None, attempt=1)


async def test_records_and_a_transition_are_stored_in_order(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
    records = [
        make_invocation(n, status=InvocationStatus.COMPLETE, result=f"r{n}".encode())
        for n in (1, 2)
    ]

    saved = await storage.save_progress("flow-1", records, complete())

    assert not saved.conflict
    assert saved.records == records
    assert saved.flow is not None and saved.flow.status is TaskStatus.COMPLETE
    assert saved.flow.result == b"done"
    assert await storage.load_invocations("flow-1") == records
    assert await storage.get_flow("flow-1") == saved.flow


async def test_records_alone_leave_the_flow_as_it_is(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    created, _ = await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
    record = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"r")

    saved = await storage.save_progress("flow-1", [record])

    assert saved.records == [record] and not saved.conflict and saved.flow is None
    assert await storage.get_flow("flow-1") == created


async def test_a_conflicting_record_stops_the_rest_and_the_transition(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
    first = make_invocation(2, status=InvocationStatus.COMPLETE, result=b"theirs")
    await storage.record_invocation(first)
    mine = [
        make_invocation(1, status=InvocationStatus.COMPLETE, result=b"one"),
        make_invocation(2, status=InvocationStatus.COMPLETE, result=b"mine"),
        make_invocation(3, status=InvocationStatus.COMPLETE, result=b"three"),
    ]

    saved = await storage.save_progress("flow-1", mine, complete())

    assert saved.conflict
    assert saved.records == [mine[0], first]
    assert saved.flow is None
    assert await storage.load_invocations("flow-1") == [mine[0], first]
    stored = await storage.get_flow("flow-1")
    assert stored is not None and stored.status is TaskStatus.RUNNING


async def test_an_equal_final_record_stored_first_is_no_conflict(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
    theirs = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"same", attempts=2)
    await storage.record_invocation(theirs)
    mine = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"same", attempts=1)

    saved = await storage.save_progress("flow-1", [mine], complete())

    assert not saved.conflict
    assert saved.records == [theirs]
    assert saved.flow is not None and saved.flow.status is TaskStatus.COMPLETE


async def test_a_transition_with_a_lease_token_is_a_release(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow())
    claimed = await storage.claim_flow("w", ["Order"], lease_seconds=30, now=1_000.0)
    assert claimed is not None and claimed.lease_token is not None
    record = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"r")
    held = FlowTransition(TaskStatus.COMPLETE, result=b"ok", lease_token=claimed.lease_token)

    stolen = await storage.save_progress(
        "flow-1", [record], FlowTransition(TaskStatus.COMPLETE, lease_token="stolen")
    )
    saved = await storage.save_progress("flow-1", [], held)

    assert stolen.flow is None and not stolen.conflict  # the record stays: first writer wins
    assert await storage.get_invocation("flow-1", 1) == record
    assert saved.flow is not None and saved.flow.status is TaskStatus.COMPLETE
    assert saved.flow.lease_token is None and saved.flow.lease_owner is None


async def test_a_suspension_saved_with_its_signal_wait_wakes_for_a_signal_already_sent(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    await storage.create_flow(make_flow())
    claimed = await storage.claim_flow("w", ["Order"], lease_seconds=30, now=1_000.0)
    assert claimed is not None
    await storage.store_signal(make_signal(name="approved"))
    waiting = make_invocation(
        1, status=InvocationStatus.WAITING_FOR_SIGNAL, kind=OperationKind.SIGNAL, name="approved"
    )

    saved = await storage.save_progress(
        "flow-1",
        [waiting],
        FlowTransition(
            TaskStatus.SUSPENDED,
            lease_token=claimed.lease_token,
            waiting_signals=("approved",),
        ),
    )

    assert saved.flow is not None and saved.flow.status is TaskStatus.PENDING


@pytest.mark.parametrize(
    "error",
    [StoredError("builtins.ValueError", "bad", "Traceback ...", b"\x80\x04payload"), None],
)
async def test_a_failed_transition_stores_its_error(
    storage: ExecutionLog, make_flow: FlowFactory, error: StoredError | None
) -> None:
    await storage.create_flow(make_flow(status=TaskStatus.RUNNING))

    saved = await storage.save_progress(
        "flow-1", [], FlowTransition(TaskStatus.FAILED, error=error, attempt=3)
    )

    assert saved.flow is not None
    assert (saved.flow.status, saved.flow.error, saved.flow.attempt) == (
        TaskStatus.FAILED,
        error,
        3,
    )
    assert await storage.get_flow("flow-1") == saved.flow


async def test_a_transition_of_an_unknown_flow_changes_nothing(storage: ExecutionLog) -> None:
    saved = await storage.save_progress("nobody", [], complete())

    assert saved.flow is None and not saved.conflict
    assert await storage.get_flow("nobody") is None


async def claim(storage: ExecutionLog, flow_id: str = "flow-1") -> str:
    """Claim ``flow_id`` (created ``PENDING``) and return its lease token."""
    claimed = await storage.claim_flows("w", ["Order"], limit=10, lease_seconds=30, now=1_000.0)
    tokens = {flow.flow_id: flow.lease_token for flow in claimed}
    token = tokens.get(flow_id)
    assert token is not None, f"{flow_id} was not claimed"
    return token


@pytest.mark.parametrize(
    "transition",
    [
        FlowTransition(TaskStatus.COMPLETE, result=b"ok", wake_at=None),
        FlowTransition(TaskStatus.SUSPENDED, wake_at=2_000.0),
        FlowTransition(TaskStatus.PENDING),
    ],
    ids=["complete", "timer", "requeue"],
)
async def test_a_held_flow_saves_its_last_record_with_its_release(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    transition: FlowTransition,
) -> None:
    await storage.create_flow(make_flow())
    token = await claim(storage)
    record = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"r")
    held = FlowTransition(
        transition.status, result=transition.result, wake_at=transition.wake_at, lease_token=token
    )

    saved = await storage.save_progress("flow-1", [record], held)

    assert saved.records == [record] and not saved.conflict
    assert saved.flow is not None and saved.flow == await storage.get_flow("flow-1")
    expected_result = b"ok" if transition.status is TaskStatus.COMPLETE else None
    assert (saved.flow.status, saved.flow.result) == (transition.status, expected_result)
    assert saved.flow.wake_at == (2_000.0 if transition.status is TaskStatus.SUSPENDED else None)
    assert (saved.flow.lease_token, saved.flow.lease_owner) == (None, None)
    assert await storage.load_invocations("flow-1") == [record]


async def test_a_held_flow_whose_last_record_conflicts_keeps_its_lease(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow())
    token = await claim(storage)
    theirs = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"theirs")
    await storage.record_invocation(theirs)
    mine = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"mine")

    saved = await storage.save_progress(
        "flow-1", [mine], FlowTransition(TaskStatus.COMPLETE, result=b"ok", lease_token=token)
    )

    assert saved.conflict and saved.records == [theirs] and saved.flow is None
    stored = await storage.get_flow("flow-1")
    assert stored is not None and (stored.status, stored.lease_token) == (TaskStatus.RUNNING, token)
    assert await storage.load_invocations("flow-1") == [theirs]


async def test_a_held_child_saving_its_last_record_and_completion_wakes_its_parent(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED))
    await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="3"))
    token = await claim(storage, "child")
    record = make_invocation(1, flow_id="child", status=InvocationStatus.COMPLETE, result=b"r")

    saved = await storage.save_progress(
        "child", [record], FlowTransition(TaskStatus.COMPLETE, result=b"ok", lease_token=token)
    )

    assert saved.flow is not None and saved.flow.status is TaskStatus.COMPLETE
    assert await storage.load_invocations("child") == [record]
    parent = await storage.get_flow("parent")
    assert parent is not None and parent.status is TaskStatus.PENDING


async def test_a_held_flow_asked_to_cancel_ends_cancelled_instead_of_suspending(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    await storage.create_flow(make_flow())
    token = await claim(storage)
    await storage.request_cancel("flow-1")
    record = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"r")

    saved = await storage.save_progress(
        "flow-1", [record], FlowTransition(TaskStatus.SUSPENDED, wake_at=2_000.0, lease_token=token)
    )

    assert saved.flow is not None and saved.flow.status is TaskStatus.CANCELLED
    assert await storage.load_invocations("flow-1") == [record]
