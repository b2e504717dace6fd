"""The contract under contention: concurrent callers, and events that meet between read and apply.

An interleaving is forced, the same on every backend, by a storage wrapper that runs another
event to its end just before the first change of a decision is applied: the decision was made
on a flow that has since moved on, so the guard refuses it and it is decided again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping

from pyergon.core.changes import Applied, Change
from pyergon.core.query import ClaimRequest, FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.storage._flows import HeldFlow, deliver_signal, request_cancel, requeue
from pyergon.storage.base import ClaimedRun, ExecutionLog
from pyergon.testing._support import (
    NO_LEASE,
    claim,
    done,
    hold,
    lease_of,
    stored,
    take,
    waiting_for,
)
from pyergon.testing.factories import make_flow, make_signal

__all__ = ["RaceContract"]

Event = Callable[[], Awaitable[object]]
FOR_APPROVAL = RunEnd(TaskStatus.SUSPENDED, waiting_signals=("approved",))


class _Meanwhile:
    """Storage on which ``event`` runs to its end just before the first change is applied."""

    def __init__(self, storage: ExecutionLog, event: Event) -> None:
        self._storage = storage
        self._event: Event | None = event

    async def apply(self, change: Change) -> Applied:
        if self._event is not None:
            event, self._event = self._event, None
            await event()
        return await self._storage.apply(change)

    async def connect(self) -> None:
        await self._storage.connect()

    async def close(self) -> None:
        await self._storage.close()

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        return await self._storage.create_flow(flow)

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        return await self._storage.claim(request)

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        return await self._storage.renew_leases(leases, lease_seconds=lease_seconds, now=now)

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        return await self._storage.cancel_requests(flow_ids)

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        return await self._storage.next_wake_at(flow_types)

    async def wait_for_work(self, timeout: float) -> bool:
        return await self._storage.wait_for_work(timeout)

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        return await self._storage.get_flow(flow_id)

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        return await self._storage.load_invocations(flow_id)

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        return await self._storage.list_signals(flow_id)

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        return await self._storage.list_flows(query)

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        return await self._storage.count_flows(
            flow_type=flow_type, created_after=created_after, flow_ids=flow_ids
        )

    async def artifact_references(self) -> set[str]:
        return await self._storage.artifact_references()

    async def delete_flow(self, flow_id: str) -> bool:
        return await self._storage.delete_flow(flow_id)

    async def reset(self) -> None:
        await self._storage.reset()


def meanwhile(storage: ExecutionLog, event: Event) -> ExecutionLog:
    """``storage``, on which ``event`` runs just before the first change is applied."""
    return _Meanwhile(storage, event)


def leaving(held: HeldFlow, storage: ExecutionLog) -> HeldFlow:
    """The run of ``held``, as it knows its flow, applying its changes to ``storage``."""
    return HeldFlow(storage, held.flow, held.lease_token)


class RaceContract:
    """Whichever of two events is applied first, the flow ends as the state machine says."""

    # -- a run leaving and a cancel request ----------------------------------------------------

    async def test_a_cancel_decided_before_a_run_suspends_cancels_it(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)

        async def suspend() -> None:
            await held.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 2_000.0}))

        cancelled = await request_cancel(meanwhile(storage, suspend), "flow-1")

        assert cancelled is not None and cancelled == await storage.get_flow("flow-1")
        assert (cancelled.status, cancelled.wake_at) == (TaskStatus.CANCELLED, None)
        assert cancelled.version == 4  # claim, suspend, cancel

    async def test_a_run_that_decided_to_suspend_before_a_cancel_ends_cancelled(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        run = leaving(held, meanwhile(storage, lambda: request_cancel(storage, "flow-1")))

        applied = await run.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 2_000.0}))

        assert applied.complete and not run.lost
        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.wake_at, lease_of(flow)) == (TaskStatus.CANCELLED, None, NO_LEASE)
        assert flow == run.flow

    async def test_a_run_finishing_as_a_cancel_arrives_stays_finished(
        self, storage: ExecutionLog
    ) -> None:
        first = await hold(storage, "first")
        second = await hold(storage, "second")

        async def finish_first() -> None:
            await first.leave([], RunEnd(TaskStatus.COMPLETE, {"result": b"ok"}))

        await request_cancel(meanwhile(storage, finish_first), "first")
        run = leaving(second, meanwhile(storage, lambda: request_cancel(storage, "second")))
        await run.leave([], RunEnd(TaskStatus.COMPLETE, {"result": b"ok"}))

        for flow_id in ("first", "second"):
            flow = await stored(storage, flow_id)
            assert (flow.status, flow.result) == (TaskStatus.COMPLETE, b"ok")
        assert await storage.cancel_requests(["first", "second"]) == set()

    async def test_concurrent_suspends_and_cancels_all_end_cancelled(
        self, storage: ExecutionLog
    ) -> None:
        held = [await hold(storage, f"flow-{index}") for index in range(8)]

        await asyncio.gather(
            *(run.leave([], RunEnd(TaskStatus.SUSPENDED)) for run in held),
            *(request_cancel(storage, run.flow_id) for run in held),
        )

        for run in held:
            flow = await stored(storage, run.flow_id)
            assert (flow.status, lease_of(flow)) == (TaskStatus.CANCELLED, NO_LEASE)

    async def test_a_claim_between_a_cancel_decision_and_its_apply_marks_the_run(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())
        claims: list[ClaimedRun] = []

        async def claim_it() -> None:
            claims.extend(await claim(storage, now=1_000.0))

        requested = await request_cancel(meanwhile(storage, claim_it), "flow-1")

        assert requested is not None
        assert (requested.status, requested.cancel_requested) == (TaskStatus.RUNNING, True)
        run = HeldFlow(storage, claims[0].flow, claims[0].flow.lease_token)
        await run.leave([], RunEnd(TaskStatus.PENDING))
        assert (await stored(storage, "flow-1")).status is TaskStatus.CANCELLED

    async def test_a_run_whose_flow_is_claimed_again_as_it_leaves_loses_it(
        self, storage: ExecutionLog
    ) -> None:
        first = await hold(storage, now=1_000.0)
        taken: list[HeldFlow] = []

        async def claim_again() -> None:  # the first lease ran out meanwhile
            taken.append(await take(storage, "flow-1", worker_id="worker-b", now=1_031.0))

        run = leaving(first, meanwhile(storage, claim_again))
        applied = await run.leave([done(1)], RunEnd(TaskStatus.COMPLETE, {"result": b"late"}))

        assert run.lost and applied == Applied(moved="flow-1")
        assert await storage.get_flow("flow-1") == taken[0].flow
        assert await storage.load_invocations("flow-1") == []  # nothing of the lost run
        await taken[0].leave([done(1, b"theirs")], RunEnd(TaskStatus.FAILED))
        assert (await stored(storage, "flow-1")).status is TaskStatus.FAILED
        assert await storage.load_invocations("flow-1") == [done(1, b"theirs")]

    # -- a child finishing and its parent suspending -------------------------------------------

    async def test_a_parent_that_decided_to_suspend_before_its_child_finished_is_requeued(
        self, storage: ExecutionLog
    ) -> None:
        parent = await hold(storage, "parent")
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="1")
        run = leaving(
            parent, meanwhile(storage, lambda: child.leave([], RunEnd(TaskStatus.COMPLETE)))
        )

        await run.leave([], RunEnd(TaskStatus.SUSPENDED, waiting_children=("child",)))

        flow = await stored(storage, "parent")
        assert (flow.status, lease_of(flow)) == (TaskStatus.PENDING, NO_LEASE)

    async def test_a_child_that_decided_to_finish_before_its_parent_suspended_wakes_it(
        self, storage: ExecutionLog
    ) -> None:
        parent = await hold(storage, "parent")
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="1")
        for_child = RunEnd(TaskStatus.SUSPENDED, waiting_children=("child",))
        run = leaving(child, meanwhile(storage, lambda: parent.leave([], for_child)))

        await run.leave([], RunEnd(TaskStatus.FAILED))

        assert (await stored(storage, "child")).status is TaskStatus.FAILED
        assert (await stored(storage, "parent")).status is TaskStatus.PENDING

    async def test_two_cancels_of_a_child_wake_its_parent_once(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED))
        await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="1"))

        cancelled = await request_cancel(
            meanwhile(storage, lambda: request_cancel(storage, "child")), "child"
        )

        assert cancelled is not None and cancelled.status is TaskStatus.CANCELLED
        assert cancelled.version == 2
        assert await storage.get_flow("parent") == make_flow(
            "parent", updated_at=cancelled.updated_at, version=2
        )

    # -- signals -------------------------------------------------------------------------------

    async def test_a_signal_decided_before_its_flow_suspends_for_it_wakes_the_flow(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)

        async def suspend() -> None:
            await held.leave([waiting_for("approved")], FOR_APPROVAL)

        assert await deliver_signal(meanwhile(storage, suspend), make_signal("approved"))

        assert (await stored(storage, "flow-1")).status is TaskStatus.PENDING
        assert await storage.list_signals("flow-1") == [make_signal("approved")]

    async def test_a_flow_that_decided_to_suspend_before_its_signal_arrived_is_requeued(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        run = leaving(
            held, meanwhile(storage, lambda: deliver_signal(storage, make_signal("approved")))
        )

        await run.leave([waiting_for("approved")], FOR_APPROVAL)

        assert (await stored(storage, "flow-1")).status is TaskStatus.PENDING

    async def test_one_of_concurrent_signals_of_a_name_is_delivered(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
        signals = [make_signal(payload=f"value-{n}".encode()) for n in range(10)]

        delivered = await asyncio.gather(*(deliver_signal(storage, s) for s in signals))

        assert sum(delivered) == 1
        assert await storage.list_signals("flow-1") == [signals[delivered.index(True)]]

    async def test_a_signal_decided_before_its_flow_exists_is_decided_again(
        self, storage: ExecutionLog
    ) -> None:
        async def create() -> None:
            await storage.create_flow(make_flow(status=TaskStatus.RUNNING))

        assert await deliver_signal(meanwhile(storage, create), make_signal())

        assert await storage.get_flow("flow-1") == make_flow(status=TaskStatus.RUNNING, version=2)
        assert await storage.list_signals("flow-1") == [make_signal()]

    # -- requeues and cancel requests ----------------------------------------------------------

    async def test_a_requeue_and_a_cancel_of_a_waiting_flow_end_cancelled(
        self, storage: ExecutionLog
    ) -> None:
        for flow_id in ("requeue-first", "cancel-first"):
            await storage.create_flow(make_flow(flow_id, status=TaskStatus.SUSPENDED, wake_at=9e3))
        waiting = {TaskStatus.SUSPENDED}

        async def cancel_it() -> None:
            await request_cancel(storage, "requeue-first")

        async def requeue_it() -> None:
            await requeue(storage, "cancel-first", from_statuses=waiting)

        assert (
            await requeue(meanwhile(storage, cancel_it), "requeue-first", from_statuses=waiting)
            is None
        )
        cancelled = await request_cancel(meanwhile(storage, requeue_it), "cancel-first")

        assert cancelled is not None and cancelled.version == 3
        for flow_id in ("requeue-first", "cancel-first"):
            assert (await stored(storage, flow_id)).status is TaskStatus.CANCELLED

    async def test_concurrent_cancels_of_a_running_flow_mark_it_once(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)

        results = await asyncio.gather(*(request_cancel(storage, "flow-1") for _ in range(10)))

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.cancel_requested) == (TaskStatus.RUNNING, True)
        assert flow.version == held.flow.version + 1
        assert all(result == flow for result in results)

    # -- a run's records and a claim taking its flow over ----------------------------------------

    async def test_records_under_a_lease_land_before_a_takeover_or_not_at_all(
        self, storage: ExecutionLog
    ) -> None:
        for round_ in range(10):
            await storage.reset()
            first = await hold(storage)
            assert first.lease_token is not None
            record = done(1, b"late")
            save = storage.apply(Change(records=(record,), held=("flow-1", first.lease_token)))
            takeover = claim(storage, "worker-b", now=1_031.0)
            if round_ % 2:
                applied, runs = await asyncio.gather(save, takeover)
            else:
                runs, applied = await asyncio.gather(takeover, save)
            if not runs:  # the claim skipped the flow while the save held it
                runs = await claim(storage, "worker-b", now=1_031.0)

            (run,) = runs
            assert run.flow.lease_owner == "worker-b"
            logs = [run.log, await storage.load_invocations("flow-1")]
            if applied.complete:  # stored first: the new holder reads it with its claim
                assert logs == [[record], [record]]
            else:
                assert applied == Applied(moved="flow-1") and logs == [[], []]
