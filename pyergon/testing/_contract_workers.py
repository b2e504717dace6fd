"""The contract for worker records: registration as compare-and-set, heartbeats, listing.

A beat stores what the worker runs at that moment, for other processes to show.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from pyergon.core.records import StepProgress
from pyergon.core.status import TaskStatus
from pyergon.core.workers import StepActivity, WorkerRecord
from pyergon.storage.base import WorkerRegistry
from pyergon.testing._support import claim
from pyergon.testing.factories import make_flow

__all__ = ["WorkerRegistryContract", "make_worker"]


def running_steps() -> tuple[StepActivity, ...]:
    """Steps a worker runs: with a full progress report, a bare count and none, oldest first."""
    return (
        StepActivity(
            "flow-1", "3", "load", 1_000.5, StepProgress(37, 100, "loading Jan ✓", 1_000.9)
        ),
        StepActivity("flöw/2 ✓", "4.1", "train", 1_000.75, StepProgress(12, at=1_000.8)),
        StepActivity("flow-1", "5", "score", 1_000.875),
    )


def make_worker(worker_id: str = "worker-a", **fields: Any) -> WorkerRecord:
    """A worker record with test defaults; ``fields`` override them."""
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "incarnation": f"{worker_id}-first",
        "host": "host-1",
        "pid": 4242,
        "started_at": 1_000.25,
        "flow_types": ("Order", "Refund"),
        "lease_seconds": 2.0,
        "last_beat": 1_000.25,
        "stopped_at": None,
        "activity": (),
    }
    values.update(fields)
    return WorkerRecord(**values)


class WorkerRegistryContract:
    """A backend with :class:`~pyergon.storage.base.WorkerRegistry` keeps worker records.

    The ``storage`` fixture must yield a connected, empty backend that has the capability.
    """

    async def test_a_worker_is_stored_whole_and_read_back(self, storage: WorkerRegistry) -> None:
        worker = make_worker(
            "wörker/1 ✓",
            host="hôst.example",
            flow_types=("A", "Bé", "c.d"),
            started_at=1_733_450_123.456789,
            last_beat=1_733_450_124.000001,
            pid=2**31 - 1,
        )

        assert await storage.put_worker(worker, replacing=None)

        assert await storage.get_worker(worker.worker_id) == worker
        assert await storage.get_worker("nobody") is None

    async def test_a_stopped_worker_keeps_its_stop_time(self, storage: WorkerRegistry) -> None:
        worker = make_worker()
        await storage.put_worker(worker, replacing=None)

        stopped = worker.stopping(1_010.5)
        assert await storage.put_worker(stopped, replacing=worker.incarnation)

        assert await storage.get_worker("worker-a") == stopped

    async def test_registration_is_a_compare_and_set_on_the_incarnation(
        self, storage: WorkerRegistry
    ) -> None:
        first = make_worker()
        second = make_worker(incarnation="second", pid=5)
        third = make_worker(incarnation="third", pid=6)
        assert await storage.put_worker(first, replacing=None)

        assert not await storage.put_worker(second, replacing=None)
        assert not await storage.put_worker(second, replacing="someone-else")
        assert await storage.get_worker("worker-a") == first

        assert await storage.put_worker(second, replacing=first.incarnation)
        assert not await storage.put_worker(third, replacing=first.incarnation)
        assert await storage.get_worker("worker-a") == second

    async def test_of_two_registrations_over_one_record_one_wins(
        self, storage: WorkerRegistry
    ) -> None:
        first = make_worker()
        await storage.put_worker(first, replacing=None)
        rivals = [make_worker(incarnation=f"rival-{n}", pid=n) for n in range(8)]

        won = await asyncio.gather(
            *(storage.put_worker(rival, replacing=first.incarnation) for rival in rivals)
        )

        assert sum(won) == 1
        winner = rivals[won.index(True)]
        assert await storage.get_worker("worker-a") == winner

    async def test_a_beat_renews_held_leases_and_the_record(self, storage: Any) -> None:
        await storage.create_flow(make_flow("held"))
        await storage.create_flow(make_flow("taken"))
        await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
        runs = await claim(storage, "worker-a", limit=2, lease_seconds=2.0, now=1_000.0)
        tokens = {run.flow.flow_id: run.flow.lease_token for run in runs}
        worker = make_worker()
        await storage.put_worker(worker, replacing=None)

        beat = await storage.beat(
            worker.beating(1_001.5, ("Order",)),
            {"held": tokens["held"], "taken": "another-token", "done": "x", "missing": "y"},
            lease_seconds=2.0,
            now=1_001.5,
        )

        assert beat.registered
        assert beat.held == frozenset({"held"})
        assert (await storage.get_flow("held")).lease_expires_at == 1_003.5
        assert (await storage.get_flow("taken")).lease_expires_at == 1_002.0
        assert await storage.get_worker("worker-a") == replace(
            worker, last_beat=1_001.5, flow_types=("Order",)
        )

    async def test_a_beat_stores_the_running_steps_and_an_empty_one_clears_them(
        self, storage: WorkerRegistry
    ) -> None:
        worker = make_worker()
        await storage.put_worker(worker, replacing=None)
        running = worker.beating(1_001.0, activity=running_steps())

        assert (await storage.beat(running, {}, lease_seconds=2.0, now=1_001.0)).registered

        assert await storage.get_worker("worker-a") == running
        assert await storage.list_workers() == [running]
        idle = running.beating(1_002.0, activity=())
        assert (await storage.beat(idle, {}, lease_seconds=2.0, now=1_002.0)).registered
        assert await storage.get_worker("worker-a") == replace(worker, last_beat=1_002.0)

    async def test_a_worker_is_stored_whole_with_its_running_steps(
        self, storage: WorkerRegistry
    ) -> None:
        worker = make_worker(activity=running_steps())
        assert await storage.put_worker(worker, replacing=None)
        assert await storage.get_worker("worker-a") == worker
        assert await storage.list_workers() == [worker]

        stopped = worker.stopping(1_010.0)
        assert await storage.put_worker(stopped, replacing=worker.incarnation)

        assert await storage.get_worker("worker-a") == stopped
        assert stopped.activity == ()

    async def test_a_beat_of_a_replaced_incarnation_changes_no_record(self, storage: Any) -> None:
        await storage.create_flow(make_flow("held"))
        [run] = await claim(storage, "worker-a", limit=1, lease_seconds=2.0, now=1_000.0)
        old = make_worker()
        new = make_worker(incarnation="new", pid=7)
        await storage.put_worker(old, replacing=None)
        await storage.put_worker(new, replacing=old.incarnation)

        beat = await storage.beat(
            old.beating(1_001.0), {"held": run.flow.lease_token}, lease_seconds=2.0, now=1_001.0
        )

        assert not beat.registered
        assert beat.held == frozenset({"held"})  # the token still holds it
        assert await storage.get_worker("worker-a") == new

    async def test_a_beat_without_a_record_creates_none(self, storage: WorkerRegistry) -> None:
        beat = await storage.beat(make_worker(), {}, lease_seconds=2.0, now=1_000.0)

        assert beat == type(beat)(frozenset(), False)
        assert await storage.get_worker("worker-a") is None
        assert await storage.list_workers() == []

    async def test_workers_are_listed_by_id_and_deleted(self, storage: WorkerRegistry) -> None:
        for worker_id in ("b", "a", "c"):
            await storage.put_worker(make_worker(worker_id), replacing=None)

        assert [worker.worker_id for worker in await storage.list_workers()] == ["a", "b", "c"]
        assert await storage.delete_worker("b")
        assert not await storage.delete_worker("b")
        assert [worker.worker_id for worker in await storage.list_workers()] == ["a", "c"]

    async def test_a_reset_forgets_every_worker(self, storage: Any) -> None:
        await storage.put_worker(make_worker(), replacing=None)

        await storage.reset()

        assert await storage.list_workers() == []
