"""A damaged flow or a key of the wrong type under the prefix never stops the Redis queue.

A claim never raises once its script has taken flows: a flow whose stored fields cannot be read
is handed back with what is wrong with it (a worker fails it alone, naming it and the field);
one whose records cannot be read comes without a log (the run reads it, and gives the flow back
if it still cannot); a flow key that is not a hash is taken out of the queue, and an index of
the wrong type stops only the claims that need it; each is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from pyergon import Scheduler, Worker, flow, flow_type, step
from pyergon.core.query import ClaimRequest
from pyergon.core.status import TaskStatus
from pyergon.errors import CorruptStorageError
from pyergon.storage.redis import RedisExecutionLog

from .conftest import FlowFactory
from .test_redis import MakeRedis, admin
from .test_redis import make_redis as shared_make_redis

make_redis = shared_make_redis  # the fixtures of test_redis.py, used here too
admin_client = admin

BATCH = 10


def _request(*flow_types: str) -> ClaimRequest:
    return ClaimRequest("w-1", flow_types, limit=BATCH, lease_seconds=60, now=1e10)


@dataclass
@flow_type(name="Sturdy")
class Sturdy:
    number: int

    @step
    async def double(self) -> int:
        return self.number * 2

    @flow
    async def run(self) -> int:
        return await self.double()


def _key(storage: RedisExecutionLog, *parts: str) -> str:
    return ":".join((f"{{{storage.prefix}}}", *parts))


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


async def _scheduled(storage: RedisExecutionLog) -> list[str]:
    scheduler = Scheduler(storage)
    return [await scheduler.schedule(Sturdy(n), flow_id=f"sturdy-{n}") for n in range(BATCH)]


async def _run_all(storage: RedisExecutionLog, *, wait_for_timers: bool = True) -> Worker:
    worker = Worker(storage, "w-sturdy", max_concurrent_flows=BATCH)
    worker.register(Sturdy)
    async with asyncio.timeout(30):
        await worker.run_until_idle(wait_for_timers=wait_for_timers)
    return worker


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attempt", b"three"),
        ("wake_at", b"soon"),
        ("parent_sequence", b"\xff\xfe"),
        ("color", b"red"),
    ],
)
async def test_a_flow_with_a_field_that_cannot_be_read_fails_alone(
    make_redis: MakeRedis, admin_client: Redis, field: str, value: bytes
) -> None:
    storage = await make_redis()
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[3]
    await admin_client.hset(_key(storage, "flow", damaged), field, value)

    runs = await storage.claim(_request("Sturdy"))

    assert [run.flow.flow_id for run in runs] == flow_ids  # one claim took them all
    assert [run.damage is not None for run in runs] == [n == 3 for n in range(BATCH)]
    damage = runs[3].damage
    assert isinstance(damage, CorruptStorageError)
    assert repr(damaged) in str(damage) and repr(field) in str(damage)
    assert runs[3].flow.lease_token is not None and runs[3].flow.version == 2  # held, to fail


@pytest.mark.parametrize("value", [b"many", b"1.5"])
async def test_a_takeover_of_a_flow_whose_lost_leases_are_no_count_fails_it_alone(
    make_redis: MakeRedis, admin_client: Redis, value: bytes
) -> None:
    storage = await make_redis()
    flow_ids = await _scheduled(storage)
    await storage.claim(_request("Sturdy"))  # leases until 1e10 + 60
    damaged = flow_ids[3]
    await admin_client.hset(_key(storage, "flow", damaged), "lease_losses", value)

    later = ClaimRequest("w-2", ["Sturdy"], limit=BATCH, lease_seconds=60, now=2e10)
    runs = await storage.claim(later)

    assert [run.flow.flow_id for run in runs] == flow_ids  # each taken over, none raised
    assert [run.damage is not None for run in runs] == [n == 3 for n in range(BATCH)]
    assert "'lease_losses'" in str(runs[3].damage)
    assert {(run.flow.lease_losses, run.flow.last_lost_by) for run in runs if not run.damage} == {
        (1, "w-1")
    }


async def test_a_flow_whose_creation_time_is_not_a_number_leaves_the_queue_once(
    make_redis: MakeRedis, admin_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await make_redis()
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[0]
    await admin_client.hset(_key(storage, "flow", damaged), "created_at", b"yesterday")

    worker = await _run_all(storage)

    assert worker.flows_finished == BATCH - 1
    logged = _logged(caplog, repr(damaged))
    assert len(logged) == 1 and "'created_at'" in logged[0] and "yesterday" in logged[0]
    assert await storage.claim(_request("Sturdy")) == []


async def test_a_worker_fails_the_damaged_flow_and_runs_the_others(
    make_redis: MakeRedis, admin_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await make_redis()
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[0]
    await admin_client.hset(_key(storage, "flow", damaged), "attempt", b"three")

    worker = await _run_all(storage)

    outcomes = await Scheduler(storage).wait(flow_ids, timeout=10)
    assert [outcomes[flow_id].result for flow_id in flow_ids[1:]] == [
        2 * n for n in range(1, BATCH)
    ]
    failed = await storage.get_flow(damaged)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error is not None and failed.error.short_type == "CorruptStorageError"
    assert repr(damaged) in failed.error.message and "'attempt'" in failed.error.message
    assert worker.flows_finished == BATCH
    assert len(_logged(caplog, repr(damaged))) == 1


@pytest.mark.parametrize("damage", ["records key of another type", "undecodable record"])
async def test_records_that_cannot_be_read_leave_that_flow_waiting_and_the_rest_run(
    make_redis: MakeRedis, admin_client: Redis, damage: str
) -> None:
    storage = await make_redis()
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[5]
    records = _key(storage, "inv", damaged)
    if damage == "records key of another type":
        await admin_client.set(records, b"not a hash")
    else:
        await admin_client.hset(records, "1:0", b"not a record")

    runs = await storage.claim(_request("Sturdy"))

    # The claim stands with no log for that flow; whoever runs it reads the log itself.
    assert [run.flow.flow_id for run in runs] == flow_ids
    assert [run.log is None for run in runs] == [n == 5 for n in range(BATCH)]
    assert all(run.damage is None for run in runs)
    await storage.reset()
    flow_ids = await _scheduled(storage)
    if damage == "records key of another type":
        await admin_client.set(records, b"not a hash")
    else:
        await admin_client.hset(records, "1:0", b"not a record")

    await _run_all(storage, wait_for_timers=False)

    healthy = [flow_id for flow_id in flow_ids if flow_id != damaged]
    outcomes = await Scheduler(storage).wait(healthy, timeout=10)
    assert [outcomes[flow_id].result for flow_id in healthy] == [
        2 * n for n in range(BATCH) if n != 5
    ]
    waiting = await storage.get_flow(damaged)
    assert waiting is not None and waiting.status is TaskStatus.SUSPENDED  # given back, not failed
    assert waiting.wake_at is not None and waiting.lease_owner is None


async def test_a_flow_key_of_the_wrong_type_leaves_the_queue_once_and_the_rest_run(
    make_redis: MakeRedis, admin_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await make_redis()
    flow_ids = await _scheduled(storage)
    damaged = flow_ids[2]
    flow_key = _key(storage, "flow", damaged)
    await admin_client.delete(flow_key)
    await admin_client.set(flow_key, b"someone else's value")

    runs = await storage.claim(_request("Sturdy"))
    again = await storage.claim(_request("Sturdy"))

    assert [run.flow.flow_id for run in runs] == [f for f in flow_ids if f != damaged]
    assert again == []
    assert await admin_client.get(flow_key) == b"someone else's value"  # left as it was
    logged = _logged(caplog, flow_key)
    assert len(logged) == 1 and "queue" in logged[0]


async def test_an_index_of_the_wrong_type_stops_only_the_claims_that_need_it(
    make_redis: MakeRedis,
    admin_client: Redis,
    make_flow: FlowFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow("order-1"))
    await storage.create_flow(make_flow("refund-1", flow_type="Refund"))
    broken = _key(storage, "status", "PENDING", "Refund")
    await admin_client.delete(broken)
    await admin_client.set(broken, b"not a sorted set")

    for _ in range(3):
        runs = await storage.claim(_request("Refund", "Order"))
        assert [run.flow.flow_id for run in runs] in (["order-1"], [])

    assert (await storage.get_flow("order-1")).status is TaskStatus.RUNNING  # type: ignore[union-attr]
    assert (await storage.get_flow("refund-1")).status is TaskStatus.PENDING  # type: ignore[union-attr]
    assert len(_logged(caplog, broken)) == 1


async def test_a_shared_index_of_the_wrong_type_takes_nothing_half_way(
    make_redis: MakeRedis,
    admin_client: Redis,
    make_flow: FlowFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow("order-1"))
    broken = _key(storage, "status", "RUNNING")
    await admin_client.set(broken, b"not a sorted set")

    assert await storage.claim(_request("Order")) == []
    assert await storage.claim(_request("Order")) == []

    stored = await storage.get_flow("order-1")
    assert stored is not None and stored.status is TaskStatus.PENDING and stored.version == 1
    assert len(_logged(caplog, broken)) == 1
    assert logging.ERROR in {
        record.levelno for record in caplog.records if broken in record.message
    }


async def test_a_due_timer_whose_flow_key_is_no_hash_leaves_the_timers_and_the_rest_run(
    make_redis: MakeRedis,
    admin_client: Redis,
    make_flow: FlowFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = await make_redis()
    for n in range(3):
        await storage.create_flow(
            make_flow(f"timer-{n}", status=TaskStatus.SUSPENDED, wake_at=100.0 + n)
        )
    flow_key = _key(storage, "flow", "timer-0")
    await admin_client.delete(flow_key)
    await admin_client.lpush(flow_key, b"a list")

    runs = await storage.claim(_request("Order"))

    assert [run.flow.flow_id for run in runs] == ["timer-1", "timer-2"]
    assert await admin_client.zscore(_key(storage, "timers", "Order"), "timer-0") is None
    assert len(_logged(caplog, flow_key)) == 1 and "a list" in _logged(caplog, flow_key)[0]
