"""The contract for the queue: claims with their logs, leases, timers and wake-ups."""

from __future__ import annotations

import asyncio

import pytest

from pyergon.core.changes import Change
from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import RunEnd, takeover_changes
from pyergon.storage._flows import HeldFlow, requeue
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import claim, claim_ids, hold, lease_of, store, stored, write
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["QueueContract"]

ORDERS_AND_REFUNDS = ("Order", "Refund")


async def _store_queue(storage: ExecutionLog) -> list[str]:
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
    dead = await claim_ids(storage, "dead-worker", limit=1, lease_seconds=10, now=1_000.0)
    assert dead == ["older-a"]  # oldest first; its lease expires at 1_010
    return ["refund", "older-a", "older-b", "orphaned", "newer", "due-early", "due-late"]


class QueueContract:
    """Claims follow ``is_runnable`` and ``queue_order``; each flow goes to one claimer."""

    # -- claims --------------------------------------------------------------------------------

    async def test_a_claim_takes_a_pending_flow_under_a_fresh_lease(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())

        runs = await claim(storage, "worker-a", limit=1, lease_seconds=30, now=1_200.0)

        assert len(runs) == 1
        flow = runs[0].flow
        assert flow.status is TaskStatus.RUNNING
        assert (flow.lease_owner, flow.worker_id, flow.lease_expires_at) == (
            "worker-a",
            "worker-a",
            1_230.0,
        )
        assert flow.lease_token
        assert flow.version == 2
        assert flow.updated_at >= 1_000.0
        assert runs[0].log == []
        assert await storage.get_flow("flow-1") == flow

    async def test_a_claim_sets_the_claim_changes_and_nothing_else(
        self, storage: ExecutionLog
    ) -> None:
        created = make_flow(result=b"r", attempt=3, parent_flow_id="p", parent_sequence="1")
        await storage.create_flow(created)

        [run] = await claim(storage, "worker-a", lease_seconds=30, now=1_200.0)

        assert run.flow == created.replace(
            status=TaskStatus.RUNNING,
            updated_at=run.flow.updated_at,
            lease_owner="worker-a",
            lease_token=run.flow.lease_token,
            lease_expires_at=1_230.0,
            worker_id="worker-a",
            version=2,
        )

    async def test_a_claim_finds_nothing_to_run(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
        await storage.create_flow(make_flow("failed", status=TaskStatus.FAILED))
        await storage.create_flow(make_flow("cancelled", status=TaskStatus.CANCELLED))
        await storage.create_flow(make_flow("asleep", status=TaskStatus.SUSPENDED, wake_at=5e3))
        await storage.create_flow(make_flow("waiting", status=TaskStatus.SUSPENDED))
        await storage.create_flow(make_flow("direct", status=TaskStatus.RUNNING))
        await storage.create_flow(make_flow("other-type", flow_type="Refund"))

        assert await claim(storage, now=1_200.0) == []
        assert await claim(storage, flow_types=[], now=1_200.0) == []

    async def test_claims_take_the_oldest_ready_flow_first(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow("due-late", status=TaskStatus.SUSPENDED, wake_at=1_100))
        await storage.create_flow(
            make_flow("due-early", status=TaskStatus.SUSPENDED, wake_at=1_050)
        )
        await storage.create_flow(make_flow("newer", created_at=1_010.0))
        await storage.create_flow(make_flow("older-b", created_at=1_005.0))
        await storage.create_flow(make_flow("older-a", created_at=1_005.0))
        await storage.create_flow(make_flow("refund", flow_type="Refund", created_at=1_001.0))

        order = []
        while claimed := await claim_ids(storage, flow_types=ORDERS_AND_REFUNDS, limit=1, now=2e3):
            order += claimed

        assert order == ["refund", "older-a", "older-b", "newer", "due-early", "due-late"]

    async def test_a_claim_retakes_a_flow_whose_lease_expired(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow())
        [first] = await claim(storage, "worker-a", lease_seconds=10, now=1_000.0)

        assert await claim(storage, "worker-b", lease_seconds=10, now=1_010.0) == []
        [second] = await claim(storage, "worker-b", lease_seconds=10, now=1_010.5)

        assert (second.flow.lease_owner, second.flow.worker_id) == ("worker-b", "worker-b")
        assert second.flow.lease_token != first.flow.lease_token
        assert second.flow.lease_expires_at == 1_020.5
        assert second.flow.version == 3

    async def test_claims_take_up_to_the_limit_in_queue_order(self, storage: ExecutionLog) -> None:
        expected = await _store_queue(storage)

        first = await claim(storage, flow_types=ORDERS_AND_REFUNDS, limit=3, now=2_000.0)
        rest = await claim(storage, flow_types=ORDERS_AND_REFUNDS, limit=50, now=2_000.0)

        assert [run.flow.flow_id for run in first] == expected[:3]
        assert [run.flow.flow_id for run in rest] == expected[3:]
        claimed = [run.flow for run in first + rest]
        assert len({flow.lease_token for flow in claimed}) == len(claimed)
        for flow in claimed:
            assert (flow.status, flow.lease_owner, flow.worker_id) == (
                TaskStatus.RUNNING,
                "worker-a",
                "worker-a",
            )
            assert flow.lease_expires_at == 2_030.0
            assert await storage.get_flow(flow.flow_id) == flow
        assert await claim(storage, limit=5, now=2_000.0) == []

    async def test_each_claim_moves_the_version_on_by_one(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow("a", version=1))
        await storage.create_flow(make_flow("b", version=5, created_at=1_001.0))

        runs = await claim(storage, now=1_000.0)

        assert [(run.flow.flow_id, run.flow.version) for run in runs] == [("a", 2), ("b", 6)]

    async def test_claims_take_only_the_given_types(self, storage: ExecutionLog) -> None:
        await _store_queue(storage)

        assert await claim_ids(storage, flow_types=["Refund"], now=2_000) == ["refund"]
        assert await claim_ids(storage, flow_types=["Invoice"], now=2_000) == ["other-type"]
        assert await claim_ids(storage, flow_types=[], now=2_000) == []
        assert await claim_ids(storage, flow_types=["Nothing"], now=2_000) == []

    async def test_flows_due_at_the_same_time_are_claimed_by_age(
        self, storage: ExecutionLog
    ) -> None:
        for flow_id, created_at in (("a", 1_003.0), ("b", 1_001.0), ("c", 1_002.0), ("d", 1e3)):
            await storage.create_flow(
                make_flow(
                    flow_id, status=TaskStatus.SUSPENDED, wake_at=1_500.0, created_at=created_at
                )
            )

        first = await claim_ids(storage, limit=2, now=2_000)
        rest = await claim_ids(storage, limit=2, now=2_000)

        assert first + rest == ["d", "b", "c", "a"]

    async def test_a_claim_gives_each_flow_its_log_in_queue_order(
        self, storage: ExecutionLog
    ) -> None:
        for flow_id, created_at in (("new", 1_001.0), ("resumed", 1_000.0), ("later", 1_002.0)):
            await storage.create_flow(make_flow(flow_id, created_at=created_at))
        records = [
            make_invocation(
                sequence,
                flow_id="resumed",
                status=InvocationStatus.COMPLETE,
                result=b"%d" % sequence,
            )
            for sequence in (2, 1)
        ]
        await store(storage, *records)
        await store(storage, make_invocation(1, flow_id="later"))

        runs = await claim(storage, "w", limit=2, now=2_000.0)
        rest = await claim(storage, "w", limit=5, now=2_000.0)

        assert [(run.flow.flow_id, run.log) for run in runs] == [
            ("resumed", records[::-1]),
            ("new", []),
        ]
        assert [(run.flow.flow_id, run.log) for run in rest] == [
            ("later", [make_invocation(1, flow_id="later")])
        ]
        for run in runs + rest:
            assert run.flow.status is TaskStatus.RUNNING and run.flow.lease_owner == "w"
            assert await storage.get_flow(run.flow.flow_id) == run.flow
        assert await claim(storage, "w", limit=5, now=2_000) == []

    async def test_a_claim_takes_timers_due_by_a_later_time(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED, wake_at=2_000.010))

        early = await claim(storage, now=2_000.0)
        due = await claim(storage, now=2_000.0, due_by=2_000.020)

        assert early == []
        assert [run.flow.flow_id for run in due] == ["flow-1"]

    async def test_timers_due_by_a_later_time_but_no_live_lease(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("soon", status=TaskStatus.SUSPENDED, wake_at=1_005.0))
        await storage.create_flow(make_flow("later", status=TaskStatus.SUSPENDED, wake_at=1_020.0))
        await storage.create_flow(make_flow("held"))
        held = await claim(storage, "worker-a", lease_seconds=5, now=1_000.0)
        assert [run.flow.flow_id for run in held] == ["held"]  # its lease expires at 1_005.0

        claimed = await claim(storage, "worker-b", now=1_000.0, due_by=1_010.0)

        assert [run.flow.flow_id for run in claimed] == ["soon"]
        assert claimed[0].flow.wake_at == 1_005.0  # the worker waits for it before running
        assert (await stored(storage, "later")).status is TaskStatus.SUSPENDED

    async def test_each_flow_is_claimed_by_exactly_one_caller(self, storage: ExecutionLog) -> None:
        for index in range(3):
            await storage.create_flow(make_flow(f"flow-{index}"))

        claims = await asyncio.gather(
            *(claim_ids(storage, f"worker-{n}", limit=1, now=1_000.0) for n in range(10))
        )

        assert sorted(flow_id for ids in claims for flow_id in ids) == [
            "flow-0",
            "flow-1",
            "flow-2",
        ]

    async def test_each_flow_is_claimed_once_by_concurrent_batch_claims(
        self, storage: ExecutionLog
    ) -> None:
        for index in range(20):
            await storage.create_flow(make_flow(f"flow-{index:02}", created_at=1_000.0 + index))

        batches = await asyncio.gather(
            *(claim(storage, f"worker-{n}", limit=6, now=1_100.0) for n in range(6))
        )

        claimed = [run.flow for batch in batches for run in batch]
        assert sorted(flow.flow_id for flow in claimed) == [f"flow-{i:02}" for i in range(20)]
        assert len({flow.lease_token for flow in claimed}) == 20
        for batch in batches:
            ids = [run.flow.flow_id for run in batch]
            assert ids == sorted(ids)
        for flow in claimed:
            assert await storage.get_flow(flow.flow_id) == flow

    # -- leases --------------------------------------------------------------------------------

    async def test_renew_leases_extends_only_leases_held_with_their_token(
        self, storage: ExecutionLog
    ) -> None:
        for flow_id in ("flow-1", "flow-2", "stolen", "pending"):
            await storage.create_flow(make_flow(flow_id))
        runs = {
            run.flow.flow_id: run.flow
            for run in await claim(storage, limit=3, lease_seconds=10, now=1_000.0)
        }
        tokens = {flow_id: flow.lease_token or "" for flow_id, flow in runs.items()}
        assert sorted(tokens) == ["flow-1", "flow-2", "pending"]

        renewed = await storage.renew_leases(
            {
                "flow-1": tokens["flow-1"],
                "flow-2": tokens["flow-2"],
                "pending": "stolen",
                "stolen": tokens["flow-1"],
                "missing": tokens["flow-1"],
            },
            lease_seconds=10,
            now=1_008.0,
        )

        assert renewed == {"flow-1", "flow-2"}
        for flow_id in ("flow-1", "flow-2"):
            assert await storage.get_flow(flow_id) == runs[flow_id].replace(
                lease_expires_at=1_018.0
            )
        assert await storage.get_flow("pending") == runs["pending"]
        assert await storage.get_flow("stolen") == make_flow("stolen")
        assert await storage.renew_leases({}, lease_seconds=10, now=1_009.0) == set()

    async def test_a_write_that_keeps_the_flow_running_keeps_its_lease(
        self, storage: ExecutionLog
    ) -> None:
        held = await hold(storage)

        await write(storage, "flow-1", {"attempt": 2}, expected_version=held.flow.version)

        flow = await stored(storage, "flow-1")
        assert lease_of(flow) == lease_of(held.flow)
        assert flow == held.flow.replace(attempt=2, version=held.flow.version + 1)

    # -- lost leases ---------------------------------------------------------------------------

    async def test_a_claim_of_an_expired_running_flow_counts_the_loss_and_names_the_loser(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())
        [first] = await claim(storage, "worker-a", lease_seconds=10, now=1_000.0)

        [second] = await claim(storage, "worker-b", lease_seconds=10, now=1_011.0)
        [third] = await claim(storage, "worker-c", lease_seconds=10, now=1_022.0)

        assert (first.flow.lease_losses, first.flow.last_lost_by) == (0, None)
        assert (second.flow.lease_losses, second.flow.last_lost_by) == (1, "worker-a")
        # Nothing else changes but what any claim sets.
        assert third.flow == second.flow.replace(
            **takeover_changes(second.flow),
            updated_at=third.flow.updated_at,
            lease_owner="worker-c",
            lease_token=third.flow.lease_token,
            lease_expires_at=1_032.0,
            worker_id="worker-c",
            version=second.flow.version + 1,
        )
        assert (third.flow.lease_losses, third.flow.last_lost_by) == (2, "worker-b")
        assert await storage.get_flow("flow-1") == third.flow

    async def test_a_claim_of_a_waiting_flow_counts_no_loss(self, storage: ExecutionLog) -> None:
        lost_before = {"lease_losses": 2, "last_lost_by": "worker-z"}
        await storage.create_flow(make_flow("pending", **lost_before))
        await storage.create_flow(
            make_flow("due", status=TaskStatus.SUSPENDED, wake_at=1_000.0, **lost_before)
        )
        await storage.create_flow(make_flow("fresh", created_at=1_001.0))

        runs = await claim(storage, "worker-a", now=1_000.0)

        losses = {run.flow.flow_id: (run.flow.lease_losses, run.flow.last_lost_by) for run in runs}
        assert losses == {
            "pending": (2, "worker-z"),
            "due": (2, "worker-z"),
            "fresh": (0, None),
        }

    async def test_a_claim_takes_over_expired_flows_among_waiting_ones(
        self, storage: ExecutionLog
    ) -> None:
        await _store_queue(storage)  # worker "dead-worker" holds older-a until 1_010

        runs = await claim(storage, "worker-b", ("Order", "Refund"), limit=50, now=2_000.0)

        losses = {run.flow.flow_id: run.flow.lease_losses for run in runs if run.flow.lease_losses}
        assert losses == {"older-a": 1}
        assert (await stored(storage, "older-a")).last_lost_by == "dead-worker"

    async def test_the_count_of_lost_leases_stays_through_later_runs_and_a_retry(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())
        await claim(storage, "worker-a", lease_seconds=10, now=1_000.0)
        [taken] = await claim(storage, "worker-b", lease_seconds=10, now=1_011.0)

        held = HeldFlow(storage, taken.flow, taken.flow.lease_token)
        await held.leave([], RunEnd(TaskStatus.SUSPENDED, {"wake_at": 1_100.0}))
        [woken] = await claim(storage, "worker-c", now=1_100.0)
        held = HeldFlow(storage, woken.flow, woken.flow.lease_token)
        await held.leave([], RunEnd(TaskStatus.FAILED, {"error": StoredError("x.Down", "down")}))
        retried = await requeue(
            storage, "flow-1", from_statuses={TaskStatus.FAILED}, fields={"error": None}
        )

        assert (woken.flow.lease_losses, woken.flow.last_lost_by) == (1, "worker-a")
        assert retried is not None and retried == await storage.get_flow("flow-1")
        assert (retried.status, retried.lease_losses, retried.last_lost_by) == (
            TaskStatus.PENDING,
            1,
            "worker-a",
        )

    # -- timers and wake-ups -------------------------------------------------------------------

    async def test_next_wake_at_is_the_earliest_suspended_wake_time(
        self, storage: ExecutionLog
    ) -> None:
        assert await storage.next_wake_at() is None

        await storage.create_flow(make_flow("pending", wake_at=10.0))
        await storage.create_flow(make_flow("no-timer", status=TaskStatus.SUSPENDED))
        await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE, wake_at=5.0))
        assert await storage.next_wake_at() is None

        await storage.create_flow(make_flow("late", status=TaskStatus.SUSPENDED, wake_at=300.0))
        await storage.create_flow(make_flow("early", status=TaskStatus.SUSPENDED, wake_at=200.0))
        assert await storage.next_wake_at() == 200.0

    async def test_next_wake_at_of_some_types_looks_only_at_flows_of_those_types(
        self, storage: ExecutionLog
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

    async def test_wait_for_work_times_out_when_nothing_happens(
        self, storage: ExecutionLog
    ) -> None:
        assert await storage.wait_for_work(timeout=0.01) is False

    async def test_a_new_pending_flow_wakes_a_waiting_worker(self, storage: ExecutionLog) -> None:
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        await storage.create_flow(make_flow())

        assert await waiter is True
        assert await storage.wait_for_work(timeout=0.01) is False  # the wake-up was consumed

    async def test_a_change_with_notify_wakes_a_waiting_worker(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))

        await storage.apply(Change(notify=True))

        assert await waiter is True
        assert await storage.wait_for_work(timeout=0.01) is False

    async def test_wake_ups_come_from_work_not_from_every_write(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
        await storage.create_flow(make_flow("asleep", status=TaskStatus.SUSPENDED, wake_at=5.0))
        await store(storage, make_invocation(flow_id="done"))
        await write(storage, "done", {"status": TaskStatus.FAILED})
        await write(storage, "asleep", {"status": TaskStatus.PENDING, "wake_at": None})
        await storage.apply(Change(signals=(make_signal(flow_id="done"),)))
        assert await storage.wait_for_work(timeout=0.01) is False

        await write(storage, "done", {"status": TaskStatus.SUSPENDED, "wake_at": 5.0}, notify=True)
        assert await storage.wait_for_work(timeout=0.01) is True

    async def test_a_wait_cancelled_as_work_arrives_ends_cancelled(
        self, storage: ExecutionLog
    ) -> None:
        await storage.wait_for_work(timeout=0.01)  # consume anything setting up notified
        waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
        for _ in range(5):  # let it reach its wait (a backend may look at storage first)
            await asyncio.sleep(0)

        await storage.create_flow(make_flow())  # work arrives, at best in the pass of the cancel

        if waiter.cancel():  # a cancel that reached a wait that had not ended is never lost
            with pytest.raises(asyncio.CancelledError):
                await waiter
        else:
            assert waiter.result() is True
