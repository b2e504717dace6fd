"""The storage contract for the flow queue: claims, leases, releases and wake-ups."""

from __future__ import annotations

import asyncio

import pytest

from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import ExecutionLog

from .conftest import FlowFactory, InvocationFactory, SignalFactory

# -- claims and leases -----------------------------------------------------------------------


async def test_claim_flow_takes_a_pending_flow_with_a_fresh_lease(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow())

    claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_200.0)

    assert claimed is not None
    assert claimed.status is TaskStatus.RUNNING
    assert claimed.lease_owner == "worker-a"
    assert claimed.lease_token
    assert claimed.lease_expires_at == 1_230.0
    assert await storage.get_flow("flow-1") == claimed


async def test_claim_flow_finds_nothing_to_run(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
    await storage.create_flow(make_flow("failed", status=TaskStatus.FAILED))
    await storage.create_flow(make_flow("cancelled", status=TaskStatus.CANCELLED))
    await storage.create_flow(make_flow("asleep", status=TaskStatus.SUSPENDED, wake_at=5_000.0))
    await storage.create_flow(make_flow("waiting", status=TaskStatus.SUSPENDED))
    await storage.create_flow(make_flow("other-type", flow_type="Refund"))

    assert await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_200) is None
    assert await storage.claim_flow("worker-a", [], lease_seconds=30, now=1_200) is None


async def test_claim_flow_takes_the_oldest_ready_flow_first(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("due-late", status=TaskStatus.SUSPENDED, wake_at=1_100.0))
    await storage.create_flow(make_flow("due-early", status=TaskStatus.SUSPENDED, wake_at=1_050.0))
    await storage.create_flow(make_flow("newer", created_at=1_010.0))
    await storage.create_flow(make_flow("older-b", created_at=1_005.0))
    await storage.create_flow(make_flow("older-a", created_at=1_005.0))
    await storage.create_flow(make_flow("refund", flow_type="Refund", created_at=1_001.0))

    order = []
    while claimed := await storage.claim_flow(
        "worker-a", ["Order", "Refund"], lease_seconds=30, now=2_000.0
    ):
        order.append(claimed.flow_id)

    assert order == ["refund", "older-a", "older-b", "newer", "due-early", "due-late"]


async def test_claim_flow_retakes_a_flow_whose_lease_expired(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow())
    first = await storage.claim_flow("worker-a", ["Order"], lease_seconds=10, now=1_000.0)
    assert first is not None

    assert await storage.claim_flow("worker-b", ["Order"], lease_seconds=10, now=1_010.0) is None
    second = await storage.claim_flow("worker-b", ["Order"], lease_seconds=10, now=1_010.5)

    assert second is not None
    assert second.lease_owner == "worker-b"
    assert second.lease_token != first.lease_token


async def test_each_flow_is_claimed_by_exactly_one_caller(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    for index in range(3):
        await storage.create_flow(make_flow(f"flow-{index}"))

    claims = await asyncio.gather(
        *(
            storage.claim_flow(f"worker-{n}", ["Order"], lease_seconds=30, now=1_000.0)
            for n in range(10)
        )
    )

    claimed = sorted(flow.flow_id for flow in claims if flow is not None)
    assert claimed == ["flow-0", "flow-1", "flow-2"]


async def _store_queue(storage: ExecutionLog, make_flow: FlowFactory) -> list[str]:
    """Store runnable flows of every kind and others; return the runnable ids in queue order."""
    await storage.create_flow(make_flow("due-late", status=TaskStatus.SUSPENDED, wake_at=1_100.0))
    await storage.create_flow(make_flow("due-early", status=TaskStatus.SUSPENDED, wake_at=1_050.0))
    await storage.create_flow(make_flow("newer", created_at=1_010.0))
    await storage.create_flow(make_flow("older-b", created_at=1_005.0))
    await storage.create_flow(make_flow("older-a", created_at=1_005.0))
    await storage.create_flow(make_flow("refund", flow_type="Refund", created_at=1_001.0))
    await storage.create_flow(make_flow("asleep", status=TaskStatus.SUSPENDED, wake_at=5_000.0))
    await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
    await storage.create_flow(make_flow("other-type", flow_type="Invoice"))
    await storage.create_flow(make_flow("orphaned", created_at=1_007.0))
    dead = await storage.claim_flow("dead-worker", ["Order"], lease_seconds=10, now=1_000.0)
    assert dead is not None and dead.flow_id == "older-a"  # oldest first; its lease expires
    return ["refund", "older-a", "older-b", "orphaned", "newer", "due-early", "due-late"]


async def test_claim_flows_takes_up_to_the_limit_in_queue_order(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    expected = await _store_queue(storage, make_flow)

    first = await storage.claim_flows(
        "worker-a", ["Order", "Refund"], limit=3, lease_seconds=30, now=2_000.0
    )
    rest = await storage.claim_flows(
        "worker-a", ["Order", "Refund"], limit=50, lease_seconds=30, now=2_000.0
    )

    assert [flow.flow_id for flow in first] == expected[:3]
    assert [flow.flow_id for flow in rest] == expected[3:]
    claimed = first + rest
    assert len({flow.lease_token for flow in claimed}) == len(claimed)
    for flow in claimed:
        assert (flow.status, flow.lease_owner, flow.worker_id) == (
            TaskStatus.RUNNING,
            "worker-a",
            "worker-a",
        )
        assert flow.lease_expires_at == 2_030.0
        assert await storage.get_flow(flow.flow_id) == flow
    assert (
        await storage.claim_flows("worker-a", ["Order"], limit=5, lease_seconds=30, now=2_000) == []
    )


async def test_claim_flows_takes_only_the_given_types(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await _store_queue(storage, make_flow)

    refunds = await storage.claim_flows("w", ["Refund"], limit=10, lease_seconds=30, now=2_000)
    invoices = await storage.claim_flows("w", ["Invoice"], limit=10, lease_seconds=30, now=2_000)

    assert [flow.flow_id for flow in refunds] == ["refund"]
    assert [flow.flow_id for flow in invoices] == ["other-type"]
    assert await storage.claim_flows("w", [], limit=10, lease_seconds=30, now=2_000) == []
    assert await storage.claim_flows("w", ["Nothing"], limit=10, lease_seconds=30, now=2_000) == []


async def test_claim_flows_orders_flows_due_at_the_same_time_by_age(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    for flow_id, created_at in (("a", 1_003.0), ("b", 1_001.0), ("c", 1_002.0), ("d", 1_000.0)):
        await storage.create_flow(
            make_flow(flow_id, status=TaskStatus.SUSPENDED, wake_at=1_500.0, created_at=created_at)
        )

    first = await storage.claim_flows("w", ["Order"], limit=2, lease_seconds=30, now=2_000)
    rest = await storage.claim_flows("w", ["Order"], limit=2, lease_seconds=30, now=2_000)

    assert [flow.flow_id for flow in first + rest] == ["d", "b", "c", "a"]


async def test_claim_runs_gives_each_claimed_flow_its_log_in_queue_order(
    storage: ExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    for flow_id, created_at in (("new", 1_001.0), ("resumed", 1_000.0), ("later", 1_002.0)):
        await storage.create_flow(make_flow(flow_id, created_at=created_at))
    records = [
        make_invocation(
            sequence, flow_id="resumed", status=InvocationStatus.COMPLETE, result=b"%d" % sequence
        )
        for sequence in (2, 1)
    ]
    for record in records:
        await storage.record_invocation(record)
    await storage.record_invocation(make_invocation(1, flow_id="later"))

    runs = await storage.claim_runs("w", ["Order"], limit=2, lease_seconds=30, now=2_000.0)
    rest = await storage.claim_runs("w", ["Order"], limit=5, lease_seconds=30, now=2_000.0)

    assert [(run.flow.flow_id, run.log) for run in runs] == [
        ("resumed", records[::-1]),
        ("new", []),
    ]
    assert [run.flow.flow_id for run in rest] == ["later"]
    assert rest[0].log == [make_invocation(1, flow_id="later")]
    for run in runs + rest:
        assert run.flow.status is TaskStatus.RUNNING and run.flow.lease_owner == "w"
        assert await storage.get_flow(run.flow.flow_id) == run.flow
    assert await storage.claim_runs("w", ["Order"], limit=5, lease_seconds=30, now=2_000) == []


async def test_claim_runs_takes_timers_due_by_a_later_time(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED, wake_at=2_000.010))

    early = await storage.claim_runs("w", ["Order"], limit=5, lease_seconds=30, now=2_000.0)
    due = await storage.claim_runs(
        "w", ["Order"], limit=5, lease_seconds=30, now=2_000.0, due_by=2_000.020
    )

    assert early == []
    assert [run.flow.flow_id for run in due] == ["flow-1"]


async def test_claim_flows_refuses_a_limit_below_one(storage: ExecutionLog) -> None:
    with pytest.raises(ValueError, match="limit"):
        await storage.claim_flows("w", ["Order"], limit=0, lease_seconds=30, now=2_000)


async def test_each_flow_is_claimed_once_by_concurrent_batch_claims(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    for index in range(20):
        await storage.create_flow(make_flow(f"flow-{index:02}", created_at=1_000.0 + index))

    batches = await asyncio.gather(
        *(
            storage.claim_flows(f"worker-{n}", ["Order"], limit=6, lease_seconds=30, now=1_100.0)
            for n in range(6)
        )
    )

    claimed = [flow.flow_id for batch in batches for flow in batch]
    assert sorted(claimed) == [f"flow-{index:02}" for index in range(20)]
    for batch in batches:
        assert [flow.flow_id for flow in batch] == sorted(flow.flow_id for flow in batch)


async def test_renew_lease_extends_only_a_held_lease(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow())
    await storage.create_flow(make_flow("pending"))
    claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=10, now=1_000.0)
    assert claimed is not None and claimed.lease_token is not None
    token = claimed.lease_token

    assert await storage.renew_lease(claimed.flow_id, token, lease_seconds=10, now=1_008.0)
    renewed = await storage.get_flow(claimed.flow_id)
    assert renewed is not None and renewed.lease_expires_at == 1_018.0

    assert not await storage.renew_lease(claimed.flow_id, "stolen", lease_seconds=10, now=1_009)
    assert not await storage.renew_lease("pending", token, lease_seconds=10, now=1_009)
    assert not await storage.renew_lease("missing", token, lease_seconds=10, now=1_009)


async def test_leaving_running_drops_the_lease(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow())
    claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_000.0)
    assert claimed is not None

    still_running = await storage.update_flow("flow-1", status=TaskStatus.RUNNING, attempt=2)
    assert still_running is not None
    assert still_running.lease_token == claimed.lease_token

    suspended = await storage.update_flow("flow-1", status=TaskStatus.SUSPENDED)
    assert suspended is not None
    assert (suspended.lease_owner, suspended.lease_token, suspended.lease_expires_at) == (
        None,
        None,
        None,
    )


# -- releases --------------------------------------------------------------------------------


async def _claim(
    storage: ExecutionLog, make_flow: FlowFactory, flow_id: str, **fields: object
) -> str:
    """Store a flow, claim it and return its lease token."""
    await storage.create_flow(make_flow(flow_id, **fields))
    claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_000.0)
    assert claimed is not None and claimed.flow_id == flow_id and claimed.lease_token
    return claimed.lease_token


async def test_release_flow_writes_the_outcome_and_drops_the_lease(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    token = await _claim(storage, make_flow, "flow-1")

    released = await storage.release_flow(
        "flow-1", token, status=TaskStatus.COMPLETE, result=b"receipt"
    )

    assert released is not None
    assert (released.status, released.result, released.lease_token) == (
        TaskStatus.COMPLETE,
        b"receipt",
        None,
    )
    assert await storage.get_flow("flow-1") == released


async def test_release_flow_needs_the_lease_token(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    token = await _claim(storage, make_flow, "flow-1")
    held = await storage.get_flow("flow-1")

    assert await storage.release_flow("flow-1", "stolen", status=TaskStatus.COMPLETE) is None
    assert await storage.get_flow("flow-1") == held

    await storage.release_flow("flow-1", token, status=TaskStatus.COMPLETE)
    assert await storage.release_flow("flow-1", token, status=TaskStatus.FAILED) is None
    assert await storage.release_flow("missing", token, status=TaskStatus.FAILED) is None


async def test_suspending_on_a_signal_that_already_arrived_leaves_the_flow_pending(
    storage: ExecutionLog, make_flow: FlowFactory, make_signal: SignalFactory
) -> None:
    token = await _claim(storage, make_flow, "flow-1")
    await storage.store_signal(make_signal("approved"))

    released = await storage.release_flow(
        "flow-1", token, status=TaskStatus.SUSPENDED, waiting_signals=["rejected", "approved"]
    )

    assert released is not None
    assert released.status is TaskStatus.PENDING


async def test_suspending_on_a_missing_signal_suspends(
    storage: ExecutionLog, make_flow: FlowFactory, make_signal: SignalFactory
) -> None:
    token = await _claim(storage, make_flow, "flow-1")
    await storage.store_signal(make_signal("approved", flow_id="another-flow"))

    released = await storage.release_flow(
        "flow-1", token, status=TaskStatus.SUSPENDED, waiting_signals=["approved"]
    )

    assert released is not None
    assert released.status is TaskStatus.SUSPENDED


@pytest.mark.parametrize(
    ("child_status", "expected"),
    [(TaskStatus.COMPLETE, TaskStatus.PENDING), (TaskStatus.RUNNING, TaskStatus.SUSPENDED)],
)
async def test_suspending_on_a_finished_child_leaves_the_flow_pending(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    child_status: TaskStatus,
    expected: TaskStatus,
) -> None:
    token = await _claim(storage, make_flow, "parent")
    await storage.create_flow(make_flow("child", flow_type="Child", status=child_status))

    released = await storage.release_flow(
        "parent", token, status=TaskStatus.SUSPENDED, waiting_children=["child"]
    )

    assert released is not None
    assert released.status is expected


@pytest.mark.parametrize("final", [TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED])
async def test_a_finished_child_wakes_its_suspended_parent(
    storage: ExecutionLog, make_flow: FlowFactory, final: TaskStatus
) -> None:
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9_999.0))
    token = await _claim(storage, make_flow, "child", parent_flow_id="parent", parent_sequence="2")

    await storage.release_flow("child", token, status=final)

    parent = await storage.get_flow("parent")
    assert parent is not None
    assert (parent.status, parent.wake_at) == (TaskStatus.PENDING, None)


async def test_a_suspending_child_leaves_its_parent_alone(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    parent = make_flow("parent", status=TaskStatus.SUSPENDED)
    await storage.create_flow(parent)
    token = await _claim(storage, make_flow, "child", parent_flow_id="parent", parent_sequence="2")

    await storage.release_flow("child", token, status=TaskStatus.SUSPENDED, wake_at=2_000.0)

    assert await storage.get_flow("parent") == parent


# -- wake-ups --------------------------------------------------------------------------------


async def test_next_wake_at_is_the_earliest_suspended_wake_time(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    assert await storage.next_wake_at() is None

    await storage.create_flow(make_flow("pending", wake_at=10.0))
    await storage.create_flow(make_flow("no-timer", status=TaskStatus.SUSPENDED))
    assert await storage.next_wake_at() is None

    await storage.create_flow(make_flow("late", status=TaskStatus.SUSPENDED, wake_at=300.0))
    await storage.create_flow(make_flow("early", status=TaskStatus.SUSPENDED, wake_at=200.0))
    assert await storage.next_wake_at() == 200.0


async def test_next_wake_at_of_some_types_looks_only_at_flows_of_those_types(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("order", status=TaskStatus.SUSPENDED, wake_at=300.0))
    await storage.create_flow(
        make_flow("refund", flow_type="Refund", status=TaskStatus.SUSPENDED, wake_at=200.0)
    )
    await storage.create_flow(
        make_flow("invoice", flow_type="Invoice", status=TaskStatus.SUSPENDED, wake_at=100.0)
    )

    assert await storage.next_wake_at(["Order"]) == 300.0
    assert await storage.next_wake_at(["Order", "Refund"]) == 200.0
    assert await storage.next_wake_at(["Other"]) is None
    assert await storage.next_wake_at([]) is None
    assert await storage.next_wake_at() == 100.0


async def test_wait_for_work_times_out_when_nothing_happens(storage: ExecutionLog) -> None:
    assert await storage.wait_for_work(timeout=0.01) is False


async def test_a_new_pending_flow_wakes_a_waiting_worker(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    await storage.create_flow(make_flow())

    assert await waiter is True
    assert await storage.wait_for_work(timeout=0.01) is False  # the notification was consumed


async def test_wake_ups_come_from_work_not_from_every_write(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
    await storage.record_invocation(make_invocation(flow_id="done"))
    await storage.update_flow("done", status=TaskStatus.FAILED)
    await storage.store_signal(make_signal(flow_id="done"))
    assert await storage.wait_for_work(timeout=0.01) is False

    await storage.update_flow("done", status=TaskStatus.SUSPENDED, wake_at=5.0)
    assert await storage.wait_for_work(timeout=0.01) is True


async def test_a_signal_wakes_its_suspended_flow_waiting_for_it(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    await storage.record_invocation(
        make_invocation(
            2,
            kind=OperationKind.SIGNAL,
            name="approved",
            status=InvocationStatus.WAITING_FOR_SIGNAL,
        )
    )
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    assert await storage.store_signal(make_signal("approved")) is True

    assert await waiter is True
    flow = await storage.get_flow("flow-1")
    assert flow is not None
    assert (flow.status, flow.wake_at) == (TaskStatus.PENDING, None)


@pytest.mark.parametrize(
    ("kind", "name", "status"),
    [
        pytest.param(
            OperationKind.SIGNAL, "rejected", InvocationStatus.WAITING_FOR_SIGNAL, id="other-name"
        ),
        pytest.param(OperationKind.SIGNAL, "approved", InvocationStatus.COMPLETE, id="received"),
        pytest.param(OperationKind.STEP, "approved", InvocationStatus.PENDING, id="a-step"),
    ],
)
async def test_a_signal_nobody_waits_for_leaves_a_suspended_flow_asleep(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    kind: OperationKind,
    name: str,
    status: InvocationStatus,
    make_signal: SignalFactory,
) -> None:
    flow = make_flow(status=TaskStatus.SUSPENDED, wake_at=5_000.0)
    await storage.create_flow(flow)
    await storage.record_invocation(make_invocation(2, kind=kind, name=name, status=status))

    assert await storage.store_signal(make_signal("approved")) is True

    assert await storage.get_flow("flow-1") == flow
    assert await storage.wait_for_work(timeout=0.01) is False


async def test_claim_flows_takes_timers_due_by_a_later_time_but_no_live_lease(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("soon", status=TaskStatus.SUSPENDED, wake_at=1_005.0))
    await storage.create_flow(make_flow("later", status=TaskStatus.SUSPENDED, wake_at=1_020.0))
    await storage.create_flow(make_flow("held", status=TaskStatus.PENDING))
    held = await storage.claim_flow("worker-a", ["Order"], lease_seconds=5, now=1_000.0)
    assert held is not None and held.flow_id == "held"  # its lease expires at 1_005.0

    claimed = await storage.claim_flows(
        "worker-b", ["Order"], limit=10, lease_seconds=30, now=1_000.0, due_by=1_010.0
    )

    assert [flow.flow_id for flow in claimed] == ["soon"]
    assert claimed[0].wake_at == 1_005.0  # the worker waits for it before running the flow
    later = await storage.get_flow("later")
    assert later is not None and later.status is TaskStatus.SUSPENDED


async def test_a_wait_cancelled_as_work_arrives_ends_cancelled(storage: ExecutionLog) -> None:
    await storage.wait_for_work(timeout=0.01)  # consume anything setting up notified
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
    for _ in range(5):  # let it reach its wait (a backend may look at storage first)
        await asyncio.sleep(0)
    woken = getattr(storage, "_work", None)
    assert isinstance(woken, asyncio.Event)  # every backend here wakes its waits with one
    woken.set()  # work arrives in the same pass as the cancel
    waiter.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiter
