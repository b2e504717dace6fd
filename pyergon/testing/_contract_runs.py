"""The contract for a run leaving its flow, applied through :mod:`pyergon.storage._flows`.

A backend holds no flow rule; these tests prove it applies the state machine's changes so that
every rule comes out the same on it: the lease is dropped, a woken flow is requeued, a final
child wakes its parent, a run that lost its flow writes nothing more, not even its records.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pyergon.core.changes import Applied, Change, FlowWrite, Forget
from pyergon.core.query import FlowQuery
from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.storage._flows import HeldFlow, deliver_signal, save_records, start_direct_run
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
    with_output,
)
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["RunContract"]


def under(held: HeldFlow) -> tuple[str, str]:
    """The ``held`` guard of a change sent by the run of ``held``: its flow and lease token."""
    assert held.lease_token is not None  # claimed
    return held.flow_id, held.lease_token


_ENDS = [
    pytest.param(RunEnd(TaskStatus.COMPLETE, {"result": b"ok"}), id="complete"),
    pytest.param(RunEnd(TaskStatus.SUSPENDED, {"wake_at": 2_000.0}), id="timer"),
    pytest.param(RunEnd(TaskStatus.PENDING), id="requeue"),
]
_FOR_APPROVAL = RunEnd(TaskStatus.SUSPENDED, waiting_signals=("approved",))


class RunContract:
    """A held flow leaves with its last records in one change, as the state machine decides."""

    async def test_leaving_stores_the_records_and_the_outcome_and_drops_the_lease(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        token = held.lease_token or ""
        records = [done(1, b"r1"), done(2, b"r2")]

        applied = await held.leave(records, RunEnd(TaskStatus.COMPLETE, {"result": b"receipt"}))

        assert applied.complete and applied.records == records
        assert not held.lost
        flow = await stored(storage, "flow-1")
        assert flow == held.flow
        assert (flow.status, flow.result, flow.version) == (TaskStatus.COMPLETE, b"receipt", 3)
        assert lease_of(flow) == NO_LEASE
        assert await storage.load_invocations("flow-1") == records
        assert await storage.renew_leases({"flow-1": token}, lease_seconds=30, now=1_001) == set()

    @pytest.mark.parametrize("end", _ENDS)
    async def test_a_held_flow_saves_its_last_record_with_its_end(
        self, storage: ExecutionLog, end: RunEnd
    ) -> None:
        held = await hold(storage)
        record = done(1)

        applied = await held.leave([record], end)

        assert applied.records == [record] and applied.complete
        flow = await stored(storage, "flow-1")
        assert flow == held.flow
        expected_result = b"ok" if end.status is TaskStatus.COMPLETE else None
        assert (flow.status, flow.result) == (end.status, expected_result)
        assert flow.wake_at == (2_000.0 if end.status is TaskStatus.SUSPENDED else None)
        assert lease_of(flow) == NO_LEASE
        assert await storage.load_invocations("flow-1") == [record]

    @pytest.mark.parametrize(
        "error",
        [StoredError("builtins.ValueError", "bad", "Traceback ...", b"\x80\x04payload"), None],
        ids=["error", "no-error"],
    )
    async def test_a_failed_run_stores_its_error(
        self, storage: ExecutionLog, error: StoredError | None
    ) -> None:
        held = await hold(storage)

        await held.leave([], RunEnd(TaskStatus.FAILED, {"error": error, "attempt": 3}))

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.error, flow.attempt) == (TaskStatus.FAILED, error, 3)
        assert flow == held.flow

    async def test_the_last_claiming_worker_is_kept_after_it_lets_go(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage, worker_id="worker-a")
        assert held.flow.worker_id == "worker-a"

        await held.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 1_010.0}))

        assert (held.flow.worker_id, held.flow.lease_owner) == ("worker-a", None)
        assert [
            flow.flow_id for flow in await storage.list_flows(FlowQuery(worker_id="worker-a"))
        ] == ["flow-1"]
        again = await take(storage, "flow-1", worker_id="worker-b", now=1_020.0)
        assert again.flow.worker_id == "worker-b"
        await again.leave([], RunEnd(TaskStatus.COMPLETE))
        assert (await stored(storage, "flow-1")).worker_id == "worker-b"
        assert await storage.list_flows(FlowQuery(worker_id="worker-a")) == []
        assert [
            flow.flow_id for flow in await storage.list_flows(FlowQuery(worker_id="worker-b"))
        ] == ["flow-1"]

    async def test_suspending_with_a_timer_wakes_a_waiting_worker(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        await drain(storage)
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        await held.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 5.0}))

        assert await waiter is True
        assert await storage.next_wake_at() == 5.0

    # -- a run that no longer holds its flow ---------------------------------------------------

    async def test_leaving_needs_the_lease_token(self, storage: ExecutionLog) -> None:
        held = await hold(storage)
        record = done(1)
        stolen = HeldFlow(storage, held.flow, "stolen")

        applied = await stolen.leave([record], RunEnd(TaskStatus.COMPLETE))

        assert stolen.lost and applied == Applied(moved="flow-1")
        assert await storage.get_flow("flow-1") == held.flow
        assert await storage.load_invocations("flow-1") == []

        await held.leave([], RunEnd(TaskStatus.COMPLETE))
        finished = await stored(storage, "flow-1")
        await held.leave([], RunEnd(TaskStatus.FAILED))
        assert held.lost
        assert await storage.get_flow("flow-1") == finished

    async def test_a_run_whose_lease_was_taken_over_writes_nothing(
        self, storage: ExecutionLog
    ) -> None:
        first = await hold(storage, now=1_000.0)
        second = await take(storage, "flow-1", worker_id="worker-b", now=1_031.0)
        record = done(1, b"late")

        applied = await first.leave([record], RunEnd(TaskStatus.COMPLETE, {"result": b"late"}))

        assert first.lost and applied == Applied(moved="flow-1")
        assert await storage.get_flow("flow-1") == second.flow
        assert await storage.load_invocations("flow-1") == []
        theirs = done(1, b"theirs")
        assert (await second.leave([theirs], RunEnd(TaskStatus.COMPLETE))).complete
        assert (await stored(storage, "flow-1")).status is TaskStatus.COMPLETE
        assert await storage.load_invocations("flow-1") == [theirs]

    async def test_a_run_of_a_deleted_flow_creates_nothing(self, storage: ExecutionLog) -> None:
        held = await hold(storage)
        await storage.delete_flow("flow-1")

        await held.leave([], RunEnd(TaskStatus.COMPLETE))

        assert held.lost
        assert await storage.get_flow("flow-1") is None

    async def test_a_conflicting_last_record_leaves_the_flow_held(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        claimed = held.flow
        theirs = done(1, b"theirs")
        await store(storage, theirs)

        applied = await held.leave([done(1, b"mine")], RunEnd(TaskStatus.COMPLETE))

        assert applied.record_conflict and applied.records == [theirs]
        assert (held.flow, held.lost) == (claimed, False)
        assert await storage.get_flow("flow-1") == claimed
        assert await storage.load_invocations("flow-1") == [theirs]

    async def test_an_equal_record_stored_first_lets_the_run_leave(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        theirs = done(1, b"same").replace(attempts=2)
        await store(storage, theirs)

        applied = await held.leave([done(1, b"same")], RunEnd(TaskStatus.COMPLETE))

        assert applied.complete and applied.records == [theirs]
        assert (await stored(storage, "flow-1")).status is TaskStatus.COMPLETE

    @pytest.mark.parametrize("count", [1, 5], ids=["one-record", "records"])
    async def test_leaving_stores_the_output_and_progress_of_its_records(
        self, storage: ExecutionLog, count: int
    ) -> None:
        held = await hold(storage)
        records = with_output()[:count]  # one record: unicode output and a full report

        applied = await held.leave(records, RunEnd(TaskStatus.COMPLETE, {"result": b"ok"}))

        assert applied.complete and applied.records == list(records)
        assert await storage.load_invocations("flow-1") == list(records)

    # -- writes sent under the lease -----------------------------------------------------------

    @pytest.mark.parametrize("count", [1, 4], ids=["one-record", "records"])
    async def test_records_under_the_lease_keep_their_output_and_progress(
        self, storage: ExecutionLog, count: int
    ) -> None:
        held = await hold(storage)
        records = with_output()[1 : 1 + count]  # one record: 64 KiB of output

        applied = await storage.apply(Change(records=records, held=under(held)))

        assert applied.complete and applied.records == list(records)
        assert await storage.load_invocations("flow-1") == list(records)

    @pytest.mark.parametrize("count", [1, 3], ids=["one-record", "records"])
    async def test_records_under_the_lease_are_stored_while_the_run_holds_its_flow(
        self, storage: ExecutionLog, count: int
    ) -> None:
        held = await hold(storage)
        records = tuple(done(sequence) for sequence in range(1, count + 1))

        applied = await storage.apply(Change(records=records, held=under(held)))

        assert applied.complete and applied.records == list(records)
        assert await storage.load_invocations("flow-1") == list(records)
        assert await storage.get_flow("flow-1") == held.flow  # the flow is left as it is

    async def test_records_under_the_lease_stand_behind_a_final_record(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        theirs = done(1, b"theirs")
        await store(storage, theirs)

        same = await storage.apply(Change(records=(done(1, b"theirs"),), held=under(held)))
        other = await storage.apply(Change(records=(done(1, b"mine"),), held=under(held)))

        assert same.complete and same.records == [theirs]
        assert other.record_conflict and other.records == [theirs]
        assert await storage.load_invocations("flow-1") == [theirs]

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(Change(records=(done(1),)), id="one-record"),
            pytest.param(Change(records=(done(1), done(2), done(3))), id="records"),
            pytest.param(
                Change(
                    records=(done(1), done(1, flow_id="flow-2")),
                    signals=(make_signal("approved"),),
                    writes=(FlowWrite("flow-2", {"attempt": 5}),),
                    forget_failed=("flow-1",),
                    notify=True,
                ),
                id="everything",
            ),
            pytest.param(Change(forget_failed=("flow-1",)), id="forget-failed"),
            pytest.param(Change(forget=(Forget("flow-1", frozenset({5})),)), id="forget"),
            pytest.param(
                Change(records=(done(1),), forget=(Forget("flow-1", frozenset({5})),)),
                id="records-and-forget",
            ),
            pytest.param(Change(signals=(make_signal("approved"),)), id="signal"),
        ],
    )
    @pytest.mark.parametrize("holder", ["another-token", "ended", "taken-over", "missing"])
    async def test_a_change_under_a_lease_that_is_gone_is_refused_whole(
        self, storage: ExecutionLog, change: Change, holder: str
    ) -> None:
        held = await hold(storage)
        await storage.create_flow(make_flow("flow-2"))
        failed = make_invocation(5, status=InvocationStatus.FAILED)
        await store(storage, failed)
        lease = under(held)
        if holder == "another-token":
            lease = ("flow-1", "another-token")
        elif holder == "ended":
            await held.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 2_000.0}))
        elif holder == "taken-over":
            await take(storage, "flow-1", worker_id="worker-b", now=1_031.0)
        else:
            lease = ("missing", lease[1])
        flows = [await storage.get_flow(flow_id) for flow_id in ("flow-1", "flow-2")]
        await drain(storage)

        applied = await storage.apply(dataclasses.replace(change, held=lease))

        assert applied == Applied(moved=lease[0])
        assert [await storage.get_flow(flow_id) for flow_id in ("flow-1", "flow-2")] == flows
        assert await storage.load_invocations("flow-1") == [failed]
        assert await storage.load_invocations("flow-2") == []
        assert await storage.list_signals("flow-1") == []
        assert await storage.wait_for_work(timeout=0.01) is False

    @pytest.mark.parametrize("version", ["expected", "moved"])
    @pytest.mark.parametrize("token", ["held", "another-token"])
    @pytest.mark.parametrize("flow_id", ["flow-1", "flow-2"], ids=["its-flow", "another-flow"])
    async def test_a_change_under_a_lease_with_a_version_guard_checks_both(
        self, storage: ExecutionLog, version: str, token: str, flow_id: str
    ) -> None:
        held = await hold(storage)
        await storage.create_flow(make_flow("flow-2"))
        written = await stored(storage, flow_id)
        expected = written.version + (version == "moved")
        lease = under(held) if token == "held" else ("flow-1", token)
        record = done(1)
        change = Change(
            records=(record,),
            writes=(FlowWrite(flow_id, {"attempt": 7}, expected_version=expected),),
            held=lease,
        )

        applied = await storage.apply(change)

        if (version, token) == ("expected", "held"):
            assert applied.complete and applied.records == [record]
            assert await storage.load_invocations("flow-1") == [record]
            after = await stored(storage, flow_id)
            assert (after.attempt, after.version) == (7, written.version + 1)
        else:
            assert applied == Applied(moved=flow_id if version == "moved" else "flow-1")
            assert await storage.load_invocations("flow-1") == []
            assert await storage.get_flow(flow_id) == written

    # -- woken while running -------------------------------------------------------------------

    async def test_suspending_after_its_signal_arrived_requeues_the_flow(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        assert await deliver_signal(storage, make_signal("approved")) is True

        await held.leave([waiting_for("approved")], _FOR_APPROVAL)

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.wake_at) == (TaskStatus.PENDING, None)
        assert lease_of(flow) == NO_LEASE
        assert await storage.load_invocations("flow-1") == [waiting_for("approved")]

    async def test_suspending_on_a_signal_that_did_not_arrive_suspends(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        await deliver_signal(storage, make_signal("approved", flow_id="another-flow"))

        await held.leave([waiting_for("approved")], _FOR_APPROVAL)

        assert (await stored(storage, "flow-1")).status is TaskStatus.SUSPENDED

    async def test_a_flow_touched_while_it_suspends_still_suspends(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)
        await deliver_signal(storage, make_signal("rejected"))  # moves the flow on

        await held.leave([waiting_for("approved")], _FOR_APPROVAL)

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.version) == (TaskStatus.SUSPENDED, 4)
        assert lease_of(flow) == NO_LEASE

    @pytest.mark.parametrize(
        ("child_end", "expected"),
        [(TaskStatus.COMPLETE, TaskStatus.PENDING), (TaskStatus.SUSPENDED, TaskStatus.SUSPENDED)],
    )
    async def test_suspending_after_its_child_finished_requeues_the_flow(
        self, storage: ExecutionLog, child_end: TaskStatus, expected: TaskStatus
    ) -> None:
        parent = await hold(storage, "parent")
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="1")
        await child.leave([], RunEnd(child_end))

        await parent.leave([], RunEnd(TaskStatus.SUSPENDED, waiting_children=("child",)))

        assert (await stored(storage, "parent")).status is expected

    async def test_suspending_for_another_child_suspends(self, storage: ExecutionLog) -> None:
        parent = await hold(storage, "parent")
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="1")
        await child.leave([], RunEnd(TaskStatus.COMPLETE))

        await parent.leave([], RunEnd(TaskStatus.SUSPENDED, waiting_children=("other-child",)))

        assert (await stored(storage, "parent")).status is TaskStatus.SUSPENDED

    @pytest.mark.parametrize("final", FINAL)
    async def test_a_finished_child_wakes_its_suspended_parent(
        self, storage: ExecutionLog, final: TaskStatus
    ) -> None:
        await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=9e3))
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="2")
        await drain(storage)
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        await child.leave([], RunEnd(final))

        assert await waiter is True
        parent = await stored(storage, "parent")
        assert (parent.status, parent.wake_at, parent.version) == (TaskStatus.PENDING, None, 2)
        assert parent.cancel_requested is False

    async def test_a_finished_child_only_touches_a_parent_that_does_not_wait(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("parent", status=TaskStatus.COMPLETE))
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="2")

        await child.leave([], RunEnd(TaskStatus.COMPLETE))

        assert await storage.get_flow("parent") == make_flow(
            "parent", status=TaskStatus.COMPLETE, version=2
        )

    async def test_a_suspending_child_leaves_its_parent_alone(self, storage: ExecutionLog) -> None:
        parent = make_flow("parent", status=TaskStatus.SUSPENDED)
        await storage.create_flow(parent)
        child = await hold(storage, "child", parent_flow_id="parent", parent_sequence="2")

        await child.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 2_000.0}))

        assert await storage.get_flow("parent") == parent

    # -- direct runs and records alone ---------------------------------------------------------

    async def test_a_direct_run_holds_its_flow_without_a_lease(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow())

        running = await start_direct_run(storage, "flow-1")

        assert running is not None and running == await storage.get_flow("flow-1")
        assert (running.status, running.version, lease_of(running)) == (
            TaskStatus.RUNNING,
            2,
            NO_LEASE,
        )
        assert await claim(storage, now=9_999.0) == []
        direct = HeldFlow(storage, running, None)
        await direct.leave([done(1)], RunEnd(TaskStatus.COMPLETE, {"result": b"ok"}))
        assert (await stored(storage, "flow-1")).status is TaskStatus.COMPLETE

    async def test_a_direct_run_takes_a_final_or_running_flow_as_it_is(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
        held = await hold(storage)

        assert await start_direct_run(storage, "done") == make_flow(
            "done", status=TaskStatus.COMPLETE
        )
        assert await start_direct_run(storage, "flow-1") == held.flow
        assert await start_direct_run(storage, "missing") is None
        assert await storage.get_flow("flow-1") == held.flow

    async def test_records_alone_leave_the_flow_as_it_is(self, storage: ExecutionLog) -> None:
        created, _ = await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        record = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"r")

        applied = await save_records(storage, [record])

        assert applied.records == [record] and applied.complete
        assert await storage.get_flow("flow-1") == created
