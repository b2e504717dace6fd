"""The contract for events from outside a run: cancel requests, signals and requeues.

Each goes through :mod:`pyergon.storage._flows`, so a backend is proven to apply the state
machine's decision the same way as every other backend.
"""

from __future__ import annotations

import asyncio

import pytest

from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.storage._flows import (
    HeldFlow,
    deliver_signal,
    request_cancel,
    requeue,
    start_direct_run,
)
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import (
    FINAL,
    NO_LEASE,
    claim,
    done,
    drain,
    hold,
    lease_of,
    store,
    stored,
    take,
    waiting_for,
)
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["EventContract"]


class EventContract:
    """Cancel requests, signals and requeues decided by the state machine, applied by storage."""

    # -- cancel requests -----------------------------------------------------------------------

    async def test_cancelling_a_pending_flow_cancels_it_at_once(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())

        cancelled = await request_cancel(storage, "flow-1")

        assert cancelled is not None
        assert (cancelled.status, cancelled.version) == (TaskStatus.CANCELLED, 2)
        assert await storage.get_flow("flow-1") == cancelled
        assert await claim(storage, now=1_000) == []

    async def test_cancelling_a_sleeping_flow_clears_its_wake_time(
        self, storage: ExecutionLog
    ) -> None:
        error = StoredError("builtins.ValueError", "bad card", "", None)
        await storage.create_flow(
            make_flow(status=TaskStatus.SUSPENDED, wake_at=1_100.0, error=error, attempt=2)
        )

        cancelled = await request_cancel(storage, "flow-1")

        assert cancelled is not None
        assert (cancelled.status, cancelled.wake_at) == (TaskStatus.CANCELLED, None)
        assert (cancelled.error, cancelled.attempt) == (error, 2)  # left as they were
        assert lease_of(cancelled) == NO_LEASE
        assert await storage.get_flow("flow-1") == cancelled
        assert await storage.next_wake_at() is None
        assert await claim(storage, now=9_999) == []

    async def test_cancelling_a_running_flow_asks_its_worker(self, storage: ExecutionLog) -> None:
        held = await hold(storage)
        token = held.lease_token or ""

        requested = await request_cancel(storage, "flow-1")

        assert requested is not None
        assert (requested.status, requested.cancel_requested) == (TaskStatus.RUNNING, True)
        assert lease_of(requested) == lease_of(held.flow)
        assert await storage.get_flow("flow-1") == requested
        assert await request_cancel(storage, "flow-1") == requested  # asked once is enough
        assert await storage.renew_leases({"flow-1": token}, lease_seconds=30, now=1_010) == {
            "flow-1"
        }

    async def test_cancelling_a_running_flow_wakes_waiting_workers(
        self, storage: ExecutionLog
    ) -> None:
        await hold(storage)
        await drain(storage)
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        await request_cancel(storage, "flow-1")

        assert await waiter is True

    @pytest.mark.parametrize("asked_for", [TaskStatus.SUSPENDED, TaskStatus.PENDING])
    async def test_a_running_flow_asked_to_cancel_ends_cancelled_instead_of_waiting(
        self, storage: ExecutionLog, asked_for: TaskStatus
    ) -> None:
        held = await hold(storage)
        await request_cancel(storage, "flow-1")
        record = done(1)

        applied = await held.leave([record], RunEnd(asked_for, {"wake_at": 2_000.0}))

        assert applied.complete and not held.lost
        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.wake_at) == (TaskStatus.CANCELLED, None)
        assert lease_of(flow) == NO_LEASE
        assert flow == held.flow
        assert await storage.load_invocations("flow-1") == [record]
        assert await storage.cancel_requests(["flow-1"]) == set()
        assert await claim(storage, "worker-b", now=9_999) == []

    @pytest.mark.parametrize("asked_for", [TaskStatus.SUSPENDED, TaskStatus.PENDING])
    async def test_a_direct_run_asked_to_cancel_ends_cancelled_instead_of_waiting(
        self, storage: ExecutionLog, asked_for: TaskStatus
    ) -> None:
        await storage.create_flow(make_flow())
        running = await start_direct_run(storage, "flow-1")
        assert running is not None
        await request_cancel(storage, "flow-1")

        await HeldFlow(storage, running, None).leave([], RunEnd(asked_for))

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.lease_token) == (TaskStatus.CANCELLED, None)

    @pytest.mark.parametrize("final", [TaskStatus.COMPLETE, TaskStatus.FAILED])
    async def test_a_running_flow_asked_to_cancel_may_still_finish(
        self, storage: ExecutionLog, final: TaskStatus
    ) -> None:
        held = await hold(storage)
        await request_cancel(storage, "flow-1")

        await held.leave([], RunEnd(final, {"result": b"receipt"}))

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.result) == (final, b"receipt")
        assert await storage.cancel_requests(["flow-1"]) == set()

    @pytest.mark.parametrize("final", FINAL)
    async def test_cancelling_a_finished_flow_changes_nothing(
        self, storage: ExecutionLog, final: TaskStatus
    ) -> None:
        finished = make_flow(status=final, result=b"receipt")
        await storage.create_flow(finished)

        assert await request_cancel(storage, "flow-1") == finished
        assert await storage.get_flow("flow-1") == finished
        assert await storage.cancel_requests(["flow-1"]) == set()

    async def test_cancelling_an_unknown_flow_is_none(self, storage: ExecutionLog) -> None:
        assert await request_cancel(storage, "missing") is None
        assert await storage.get_flow("missing") is None

    async def test_a_cancelled_waiting_child_wakes_its_suspended_parent(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9e3))
        await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="2"))
        await drain(storage)
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        await request_cancel(storage, "child")

        assert await waiter is True
        parent = await stored(storage, "parent")
        assert (parent.status, parent.wake_at) == (TaskStatus.PENDING, None)

    async def test_a_running_child_that_stops_on_a_cancel_wakes_its_suspended_parent(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9e3))
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="2")
        await request_cancel(storage, "child")

        await child.leave([], RunEnd(TaskStatus.SUSPENDED))

        assert (await stored(storage, "child")).status is TaskStatus.CANCELLED
        parent = await stored(storage, "parent")
        assert (parent.status, parent.wake_at) == (TaskStatus.PENDING, None)

    async def test_cancel_requests_names_the_running_flows_asked_to_cancel(
        self, storage: ExecutionLog
    ) -> None:
        await hold(storage, "asked")
        await request_cancel(storage, "asked")
        await hold(storage, "running")
        finished = await hold(storage, "finished")
        await request_cancel(storage, "finished")
        await finished.leave([], RunEnd(TaskStatus.COMPLETE))
        await storage.create_flow(make_flow("was-pending"))
        await request_cancel(storage, "was-pending")

        everything = ["asked", "running", "finished", "was-pending", "missing"]
        assert await storage.cancel_requests(everything) == {"asked"}
        assert await storage.cancel_requests([]) == set()
        many = [f"unknown-{index}" for index in range(1_200)] + ["asked"]
        assert await storage.cancel_requests(many) == {"asked"}

    async def test_a_cancel_request_survives_the_flow_being_claimed_again(
        self, storage: ExecutionLog
    ) -> None:
        await hold(storage)
        await request_cancel(storage, "flow-1")

        retaken = await take(storage, "flow-1", worker_id="worker-b", now=1_031.0)

        assert (retaken.flow.worker_id, retaken.flow.cancel_requested) == ("worker-b", True)
        assert await storage.cancel_requests(["flow-1"]) == {"flow-1"}

    # -- signals -------------------------------------------------------------------------------

    async def test_a_signal_is_delivered_once(self, storage: ExecutionLog) -> None:
        first = make_signal(payload=b"first")

        assert await deliver_signal(storage, first) is True
        assert await deliver_signal(storage, make_signal(payload=b"second")) is False
        assert await storage.list_signals("flow-1") == [first]

    async def test_a_signal_for_a_flow_not_created_yet_is_kept(self, storage: ExecutionLog) -> None:
        assert await deliver_signal(storage, make_signal()) is True

        assert await storage.get_flow("flow-1") is None
        assert await storage.list_signals("flow-1") == [make_signal()]

    async def test_a_signal_wakes_its_suspended_flow_waiting_for_it(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED, wake_at=5_000.0))
        await store(storage, waiting_for("approved"))
        await drain(storage)
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        assert await deliver_signal(storage, make_signal("approved")) is True

        assert await waiter is True
        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.wake_at, flow.version) == (TaskStatus.PENDING, None, 2)
        assert await claim(storage, now=1_000) != []

    @pytest.mark.parametrize(
        ("kind", "name", "status"),
        [
            pytest.param(
                OperationKind.SIGNAL, "rejected", InvocationStatus.WAITING_FOR_SIGNAL, id="other"
            ),
            pytest.param(OperationKind.SIGNAL, "approved", InvocationStatus.COMPLETE, id="got"),
            pytest.param(OperationKind.STEP, "approved", InvocationStatus.PENDING, id="a-step"),
        ],
    )
    async def test_a_signal_nobody_waits_for_leaves_a_suspended_flow_asleep(
        self,
        storage: ExecutionLog,
        kind: OperationKind,
        name: str,
        status: InvocationStatus,
    ) -> None:
        flow = make_flow(status=TaskStatus.SUSPENDED, wake_at=5_000.0)
        await storage.create_flow(flow)
        await store(storage, make_invocation(2, kind=kind, name=name, status=status))
        await drain(storage)

        assert await deliver_signal(storage, make_signal("approved")) is True

        assert await storage.get_flow("flow-1") == flow.replace(version=2)  # touched only
        assert await storage.wait_for_work(timeout=0.01) is False

    async def test_a_signal_only_touches_a_flow_that_is_not_suspended(
        self, storage: ExecutionLog
    ) -> None:
        flow = make_flow(status=TaskStatus.RUNNING, lease_token="t", lease_owner="w")
        await storage.create_flow(flow)

        await deliver_signal(storage, make_signal())

        assert await storage.get_flow("flow-1") == flow.replace(version=2)

    # -- requeues ------------------------------------------------------------------------------

    async def test_requeueing_a_flow_forgets_an_old_cancel_request(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        await request_cancel(storage, "flow-1")
        await held.leave([], RunEnd(TaskStatus.FAILED))

        requeued = await requeue(storage, "flow-1", from_statuses={TaskStatus.FAILED})

        assert requeued is not None and requeued == await storage.get_flow("flow-1")
        assert (requeued.status, requeued.cancel_requested) == (TaskStatus.PENDING, False)
        assert [run.flow.flow_id for run in await claim(storage, "worker-b", now=2e3)] == ["flow-1"]
        assert await storage.cancel_requests(["flow-1"]) == set()

    async def test_a_retry_requeues_with_its_fields_and_wakes_a_worker(
        self, storage: ExecutionLog
    ) -> None:
        error = StoredError("builtins.OSError", "down")
        await storage.create_flow(make_flow(status=TaskStatus.FAILED, error=error, attempt=3))
        await drain(storage)
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        requeued = await requeue(
            storage,
            "flow-1",
            from_statuses={TaskStatus.FAILED},
            fields={"error": None, "result": None, "attempt": 1},
        )

        assert await waiter is True
        assert requeued is not None
        assert requeued == make_flow(updated_at=requeued.updated_at, version=2)
        assert await storage.get_flow("flow-1") == requeued

    async def test_a_requeue_of_a_dead_workers_flow_counts_its_lost_lease(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage, worker_id="worker-a")
        running = {TaskStatus.RUNNING}

        requeued = await requeue(storage, "flow-1", from_statuses=running, lost_by="worker-a")

        assert requeued is not None and requeued == await storage.get_flow("flow-1")
        assert requeued == held.flow.replace(
            status=TaskStatus.PENDING,
            updated_at=requeued.updated_at,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            lease_losses=1,
            last_lost_by="worker-a",
            version=held.flow.version + 1,
        )
        assert await requeue(storage, "flow-1", from_statuses=running, lost_by="worker-a") is None

    async def test_a_requeue_for_a_dead_worker_leaves_a_flow_another_worker_holds(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage, worker_id="worker-b")

        assert (
            await requeue(storage, "flow-1", from_statuses={TaskStatus.RUNNING}, lost_by="worker-a")
            is None
        )
        assert await storage.get_flow("flow-1") == held.flow

    async def test_a_requeue_from_another_status_changes_nothing(
        self, storage: ExecutionLog
    ) -> None:
        finished = make_flow(status=TaskStatus.COMPLETE)
        await storage.create_flow(finished)

        assert await requeue(storage, "flow-1", from_statuses={TaskStatus.FAILED}) is None
        assert await requeue(storage, "missing", from_statuses={TaskStatus.FAILED}) is None
        assert await storage.get_flow("flow-1") == finished
