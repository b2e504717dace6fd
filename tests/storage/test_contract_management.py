"""The storage contract for managing flows: filtered listings, counts, signals, cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyergon.core.records import FlowCursor, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import TaskStatus
from pyergon.storage.base import ExecutionLog

from .conftest import FlowFactory

FINAL = [TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED]


async def _hold(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    flow_id: str,
    *,
    worker_id: str = "worker-a",
    **fields: object,
) -> tuple[ScheduledFlow, str]:
    """Store a flow, let ``worker_id`` claim it (lease until 1_030); return it and the token."""
    await storage.create_flow(make_flow(flow_id, **fields))
    claimed = await storage.claim_flow(worker_id, ["Order"], lease_seconds=30, now=1_000.0)
    assert claimed is not None and claimed.flow_id == flow_id and claimed.lease_token
    return claimed, claimed.lease_token


async def _ids(storage: ExecutionLog, **filters: Any) -> list[str]:
    return [flow.flow_id for flow in await storage.list_flows(**filters)]


async def test_the_management_fields_round_trip(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    flow = make_flow(status=TaskStatus.RUNNING, worker_id="worker-a", cancel_requested=True)
    await storage.create_flow(flow)

    assert await storage.get_flow("flow-1") == flow


# -- listing ---------------------------------------------------------------------------------

# Newest first: refund (500), pending (400), child-b (300), child-a (200), parent (100).
MIX: list[tuple[str, dict[str, Any]]] = [
    ("parent", {"status": TaskStatus.COMPLETE, "created_at": 100.0}),
    (
        "child-a",
        {
            "status": TaskStatus.COMPLETE,
            "created_at": 200.0,
            "parent_flow_id": "parent",
            "parent_sequence": "1",
            "worker_id": "worker-a",
        },
    ),
    (
        "child-b",
        {
            "status": TaskStatus.FAILED,
            "created_at": 300.0,
            "flow_type": "Refund",
            "parent_flow_id": "parent",
            "parent_sequence": "2",
            "worker_id": "worker-b",
        },
    ),
    ("pending", {"created_at": 400.0}),
    (
        "refund",
        {
            "status": TaskStatus.SUSPENDED,
            "created_at": 500.0,
            "flow_type": "Refund",
            "worker_id": "worker-a",
        },
    ),
]


@pytest.fixture
async def mix(storage: ExecutionLog, make_flow: FlowFactory) -> ExecutionLog:
    """The storage holding :data:`MIX`, flows that differ in everything list_flows filters on."""
    for flow_id, fields in MIX:
        await storage.create_flow(make_flow(flow_id, **fields))
    return storage


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({}, ["refund", "pending", "child-b", "child-a", "parent"], id="none"),
        pytest.param({"status": TaskStatus.COMPLETE}, ["child-a", "parent"], id="status"),
        pytest.param(
            {"status": [TaskStatus.FAILED, TaskStatus.SUSPENDED]},
            ["refund", "child-b"],
            id="statuses",
        ),
        pytest.param({"status": []}, [], id="no-status"),
        pytest.param({"flow_type": "Refund"}, ["refund", "child-b"], id="type"),
        pytest.param(
            {"created_after": 300.0}, ["refund", "pending", "child-b"], id="created-after-inclusive"
        ),
        pytest.param(
            {"created_before": 300.0}, ["child-a", "parent"], id="created-before-exclusive"
        ),
        pytest.param({"worker_id": "worker-a"}, ["refund", "child-a"], id="worker"),
        pytest.param({"worker_id": "nobody"}, [], id="unknown-worker"),
        pytest.param({"parent_flow_id": "parent"}, ["child-b", "child-a"], id="parent"),
        pytest.param({"after": FlowCursor(300.0, "child-b")}, ["child-a", "parent"], id="after"),
        pytest.param(
            {"after": FlowCursor(300.0, "child-c")},
            ["child-b", "child-a", "parent"],
            id="after-a-position-of-no-flow",
        ),
    ],
)
async def test_list_flows_filters_by_each_field_alone(
    mix: ExecutionLog, filters: dict[str, Any], expected: list[str]
) -> None:
    assert await _ids(mix, **filters) == expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param(
            {"status": TaskStatus.COMPLETE, "parent_flow_id": "parent"}, ["child-a"], id="status"
        ),
        pytest.param({"flow_type": "Refund", "worker_id": "worker-b"}, ["child-b"], id="type"),
        pytest.param(
            {"created_after": 200.0, "created_before": 500.0},
            ["pending", "child-b", "child-a"],
            id="created-range",
        ),
        pytest.param(
            {"status": [TaskStatus.FAILED, TaskStatus.SUSPENDED], "worker_id": "worker-a"},
            ["refund"],
            id="statuses-and-worker",
        ),
        pytest.param(
            {"flow_type": "Order", "created_before": 450.0, "after": FlowCursor(400.0, "pending")},
            ["child-a", "parent"],
            id="type-range-and-after",
        ),
        pytest.param(
            {"created_before": 250.0, "after": FlowCursor(400.0, "pending")},
            ["child-a", "parent"],
            id="range-tighter-than-after",
        ),
        pytest.param(
            {"created_after": 200.0, "after": FlowCursor(400.0, "pending")},
            ["child-b", "child-a"],
            id="range-and-after",
        ),
        pytest.param(
            {"parent_flow_id": "parent", "flow_type": "Order", "status": TaskStatus.FAILED},
            [],
            id="nothing-matches",
        ),
    ],
)
async def test_list_flows_combines_filters(
    mix: ExecutionLog, filters: dict[str, Any], expected: list[str]
) -> None:
    assert await _ids(mix, **filters) == expected


async def test_keyset_paging_gives_every_flow_once_in_order(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    # Three flows share each created_at, and ids do not follow creation order.
    created = [
        make_flow(f"flow-{index * 7 % 25:02}", created_at=float(index // 3)) for index in range(25)
    ]
    for flow in created:
        await storage.create_flow(flow)
    newest_first = sorted(created, key=lambda flow: (flow.created_at, flow.flow_id), reverse=True)

    pages: list[list[ScheduledFlow]] = []
    cursor: FlowCursor | None = None
    while page := await storage.list_flows(limit=10, after=cursor):
        pages.append(page)
        cursor = FlowCursor.after(page[-1])

    assert [len(page) for page in pages] == [10, 10, 5]
    assert [flow for page in pages for flow in page] == newest_first


async def test_keyset_paging_keeps_the_filters(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    statuses = [TaskStatus.PENDING, TaskStatus.COMPLETE, TaskStatus.FAILED]
    for index in range(30):
        await storage.create_flow(
            make_flow(
                f"flow-{index:02}",
                created_at=float(index // 4),
                flow_type="Refund" if index % 2 else "Order",
                status=statuses[index % 3],
            )
        )
    filters: dict[str, Any] = {
        "flow_type": "Refund",
        "status": [TaskStatus.PENDING, TaskStatus.FAILED],
    }
    wanted = await _ids(storage, limit=1_000, **filters)

    paged: list[str] = []
    cursor: FlowCursor | None = None
    while page := await storage.list_flows(limit=3, after=cursor, **filters):
        paged += [flow.flow_id for flow in page]
        cursor = FlowCursor.after(page[-1])

    assert paged == wanted
    assert len(wanted) == 10  # odd indexes whose index % 3 is 0 or 2
    assert wanted == [f"flow-{index:02}" for index in (29, 27, 23, 21, 17, 15, 11, 9, 5, 3)]


async def test_offset_and_limit_apply_after_the_cursor(mix: ExecutionLog) -> None:
    page = await _ids(mix, after=FlowCursor(450.0, ""), offset=1, limit=2)

    assert page == ["child-b", "child-a"]
    assert await _ids(mix, limit=0) == []


@pytest.mark.parametrize(
    ("limit", "offset", "message"),
    [(-1, 0, "limit must be >= 0"), (10, -1, "offset must be >= 0")],
    ids=["limit", "offset"],
)
async def test_list_flows_refuses_a_negative_page(
    storage: ExecutionLog, limit: int, offset: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await storage.list_flows(limit=limit, offset=offset)


async def test_count_flows_counts_every_status(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    nothing = dict.fromkeys(TaskStatus, 0)
    assert await storage.count_flows() == nothing
    await storage.create_flow(make_flow("a"))
    await storage.create_flow(make_flow("b"))
    await storage.create_flow(make_flow("c", status=TaskStatus.COMPLETE))
    await storage.create_flow(make_flow("d", flow_type="Refund", status=TaskStatus.COMPLETE))
    await storage.create_flow(make_flow("e", flow_type="Refund", status=TaskStatus.FAILED))

    counts = await storage.count_flows()

    assert counts == nothing | {
        TaskStatus.PENDING: 2,
        TaskStatus.COMPLETE: 2,
        TaskStatus.FAILED: 1,
    }
    assert all(isinstance(status, TaskStatus) for status in counts)
    assert await storage.count_flows(flow_type="Refund") == nothing | {
        TaskStatus.COMPLETE: 1,
        TaskStatus.FAILED: 1,
    }
    assert await storage.count_flows(flow_type="Unknown") == nothing


# -- signals ---------------------------------------------------------------------------------


async def test_list_signals_is_oldest_first_then_by_name(storage: ExecutionLog) -> None:
    signals = [
        SignalRecord("flow-1", "late", b"3", 3.0),
        SignalRecord("flow-1", "b-tie", b"2b", 2.0),
        SignalRecord("flow-1", "early", b"1", 1.0),
        SignalRecord("flow-1", "a-tie", b"2a", 2.0),
        SignalRecord("another-flow", "early", b"0", 0.5),
    ]
    for signal in signals:
        await storage.store_signal(signal)

    listed = await storage.list_signals("flow-1")

    assert listed == [signals[2], signals[3], signals[1], signals[0]]
    assert await storage.list_signals("no-signals") == []


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_a_pending_flow_cancels_it_at_once(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow())

    cancelled = await storage.request_cancel("flow-1")

    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert await storage.get_flow("flow-1") == cancelled
    assert await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_000) is None


async def test_cancelling_a_sleeping_flow_clears_its_wake_time(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    error = StoredError("builtins.ValueError", "bad card", "", None)
    await storage.create_flow(
        make_flow(status=TaskStatus.SUSPENDED, wake_at=1_100.0, error=error, attempt=2)
    )

    cancelled = await storage.request_cancel("flow-1")

    assert cancelled is not None
    assert (cancelled.status, cancelled.wake_at) == (TaskStatus.CANCELLED, None)
    assert (cancelled.error, cancelled.attempt) == (error, 2)  # left as they were
    assert (cancelled.lease_owner, cancelled.lease_token, cancelled.lease_expires_at) == (
        None,
        None,
        None,
    )
    assert await storage.get_flow("flow-1") == cancelled
    assert await storage.next_wake_at() is None
    assert await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=9_999) is None


async def test_cancelling_a_running_flow_asks_its_worker(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    held, token = await _hold(storage, make_flow, "flow-1")

    requested = await storage.request_cancel("flow-1")

    assert requested is not None
    assert (requested.status, requested.cancel_requested) == (TaskStatus.RUNNING, True)
    assert (requested.lease_owner, requested.lease_token, requested.lease_expires_at) == (
        held.lease_owner,
        token,
        held.lease_expires_at,
    )
    assert await storage.get_flow("flow-1") == requested
    assert await storage.renew_lease("flow-1", token, lease_seconds=30, now=1_010)


async def test_cancelling_a_running_flow_wakes_waiting_workers(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await _hold(storage, make_flow, "flow-1")
    await storage.wait_for_work(timeout=0.05)  # consume the new flow's notification
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    await storage.request_cancel("flow-1")

    assert await waiter is True


@pytest.mark.parametrize("asked_for", [TaskStatus.SUSPENDED, TaskStatus.PENDING])
async def test_a_running_flow_asked_to_cancel_ends_cancelled_instead_of_waiting(
    storage: ExecutionLog, make_flow: FlowFactory, asked_for: TaskStatus
) -> None:
    _, token = await _hold(storage, make_flow, "flow-1")
    await storage.request_cancel("flow-1")

    released = await storage.release_flow("flow-1", token, status=asked_for)

    assert released is not None
    assert released.status is TaskStatus.CANCELLED
    assert released.lease_token is None
    assert await storage.get_flow("flow-1") == released
    assert await storage.cancel_requests(["flow-1"]) == set()
    assert await storage.claim_flow("worker-b", ["Order"], lease_seconds=30, now=9_999) is None


@pytest.mark.parametrize("final", [TaskStatus.COMPLETE, TaskStatus.FAILED])
async def test_a_running_flow_asked_to_cancel_may_still_finish(
    storage: ExecutionLog, make_flow: FlowFactory, final: TaskStatus
) -> None:
    _, token = await _hold(storage, make_flow, "flow-1")
    await storage.request_cancel("flow-1")

    released = await storage.release_flow("flow-1", token, status=final, result=b"receipt")

    assert released is not None
    assert (released.status, released.result) == (final, b"receipt")


@pytest.mark.parametrize("final", FINAL)
async def test_cancelling_a_finished_flow_changes_nothing(
    storage: ExecutionLog, make_flow: FlowFactory, final: TaskStatus
) -> None:
    finished = make_flow(status=final, result=b"receipt")
    await storage.create_flow(finished)

    assert await storage.request_cancel("flow-1") == finished
    assert await storage.get_flow("flow-1") == finished
    assert await storage.cancel_requests(["flow-1"]) == set()


async def test_cancelling_an_unknown_flow_is_none(storage: ExecutionLog) -> None:
    assert await storage.request_cancel("missing") is None


async def test_a_cancelled_waiting_child_wakes_its_suspended_parent(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9_999.0))
    await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="2"))
    await storage.wait_for_work(timeout=0.05)  # consume the new child's notification
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    await storage.request_cancel("child")

    assert await waiter is True
    parent = await storage.get_flow("parent")
    assert parent is not None
    assert (parent.status, parent.wake_at) == (TaskStatus.PENDING, None)


async def test_a_running_child_that_stops_on_a_cancel_wakes_its_suspended_parent(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9_999.0))
    _, token = await _hold(
        storage, make_flow, "child", parent_flow_id="parent", parent_sequence="2"
    )
    await storage.request_cancel("child")

    await storage.release_flow("child", token, status=TaskStatus.SUSPENDED)

    parent = await storage.get_flow("parent")
    assert parent is not None
    assert (parent.status, parent.wake_at) == (TaskStatus.PENDING, None)


async def test_cancel_requests_names_the_running_flows_asked_to_cancel(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await _hold(storage, make_flow, "asked")
    await storage.request_cancel("asked")
    await _hold(storage, make_flow, "running")
    _, token = await _hold(storage, make_flow, "finished")
    await storage.request_cancel("finished")
    await storage.release_flow("finished", token, status=TaskStatus.COMPLETE)
    await storage.create_flow(make_flow("was-pending"))
    await storage.request_cancel("was-pending")

    everything = ["asked", "running", "finished", "was-pending", "missing"]
    assert await storage.cancel_requests(everything) == {"asked"}
    assert await storage.cancel_requests([]) == set()
    many = [f"unknown-{index}" for index in range(1_200)] + ["asked"]
    assert await storage.cancel_requests(many) == {"asked"}


async def test_a_cancel_request_survives_the_flow_being_claimed_again(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await _hold(storage, make_flow, "flow-1")
    await storage.request_cancel("flow-1")

    retaken = await storage.claim_flow("worker-b", ["Order"], lease_seconds=30, now=1_031.0)

    assert retaken is not None
    assert (retaken.worker_id, retaken.cancel_requested) == ("worker-b", True)
    assert await storage.cancel_requests(["flow-1"]) == {"flow-1"}


# -- workers and state changes ---------------------------------------------------------------


async def test_the_last_claiming_worker_is_kept_after_it_lets_go(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    held, token = await _hold(storage, make_flow, "flow-1", worker_id="worker-a")
    assert held.worker_id == "worker-a"

    released = await storage.release_flow(
        "flow-1", token, status=TaskStatus.SUSPENDED, wake_at=1_010.0
    )

    assert released is not None
    assert (released.worker_id, released.lease_owner) == ("worker-a", None)
    assert await _ids(storage, worker_id="worker-a") == ["flow-1"]

    retaken = await storage.claim_flow("worker-b", ["Order"], lease_seconds=30, now=1_020.0)
    assert retaken is not None
    assert retaken.worker_id == "worker-b"
    finished = await storage.update_flow("flow-1", status=TaskStatus.COMPLETE)
    assert finished is not None
    assert finished.worker_id == "worker-b"
    assert await _ids(storage, worker_id="worker-a") == []
    assert await _ids(storage, worker_id="worker-b") == ["flow-1"]


@pytest.mark.parametrize("asked_for", [TaskStatus.SUSPENDED, TaskStatus.PENDING])
async def test_update_flow_cancels_a_running_flow_asked_to_cancel(
    storage: ExecutionLog, make_flow: FlowFactory, asked_for: TaskStatus
) -> None:
    await _hold(storage, make_flow, "flow-1")
    await storage.request_cancel("flow-1")

    updated = await storage.update_flow("flow-1", status=asked_for)

    assert updated is not None
    assert (updated.status, updated.lease_token) == (TaskStatus.CANCELLED, None)
    assert await storage.get_flow("flow-1") == updated


async def test_requeueing_a_flow_forgets_an_old_cancel_request(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    _, token = await _hold(storage, make_flow, "flow-1")
    await storage.request_cancel("flow-1")
    await storage.release_flow("flow-1", token, status=TaskStatus.FAILED)

    requeued = await storage.update_flow("flow-1", status=TaskStatus.PENDING)

    assert requeued is not None
    assert (requeued.status, requeued.cancel_requested) == (TaskStatus.PENDING, False)
    assert await storage.claim_flow("worker-b", ["Order"], lease_seconds=30, now=2_000.0)
    assert await storage.cancel_requests(["flow-1"]) == set()


@pytest.mark.parametrize("final", FINAL)
async def test_update_flow_to_a_final_status_wakes_a_suspended_parent(
    storage: ExecutionLog, make_flow: FlowFactory, final: TaskStatus
) -> None:
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9_999.0))
    await storage.create_flow(
        make_flow("child", status=TaskStatus.RUNNING, parent_flow_id="parent", parent_sequence="2")
    )
    await storage.wait_for_work(timeout=0.05)  # consume anything creating the flows notified
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

    await storage.update_flow("child", status=final)

    assert await waiter is True
    parent = await storage.get_flow("parent")
    assert parent is not None
    assert (parent.status, parent.wake_at) == (TaskStatus.PENDING, None)
