"""A claim whose log cannot be read still stands, with ``log=None``; the worker copes with it.

``ExecutionLog.claim`` promises that a claimed flow stays claimed even if its records cannot be
read: that run's ``ClaimedRun.log`` is ``None`` and whoever runs the flow reads them itself. A
record no release of pyergon can decode (written by hand, by a newer layout, or damaged) is the
case every backend can meet, so each test here damages one record the way someone with access to
the store could, then claims. The in-memory backend keeps records as objects: it has nothing to
decode, so it is not here.

The worker then reads the log itself; when that fails too, it gives the flow back with a growing
pause and reports the error, and the other flows of its claim run on.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyergon import (
    Executor,
    Scheduler,
    Suspended,
    Worker,
    await_external_signal,
    flow,
    flow_type,
    step,
)
from pyergon.clock import ManualClock
from pyergon.core import ClaimRequest, TaskStatus
from pyergon.storage._postgres_sql import quote_identifier
from pyergon.storage.base import ExecutionLog
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.redis import RedisExecutionLog
from tests.conftest import (
    REDIS_URL,
    drop_redis_keys,
    drop_schema,
    require_redis,
)
from tests.storage.test_sql_damage import Damageable as SqlDamageable
from tests.storage.test_sql_damage import SetColumn, open_postgres, open_sqlite

BODY_RUNS: list[str] = []
LEASE_SECONDS = 30.0


@dataclass
@flow_type
class Approval:
    name: str

    @step
    async def prepare(self) -> str:
        BODY_RUNS.append(self.name)
        return f"prepared {self.name}"

    @flow
    async def run(self) -> str:
        prepared = await self.prepare()
        approved = await await_external_signal("approve")
        return f"{prepared}, approved {approved}"


Damage = Callable[[str], Awaitable[None]]
"""Makes the first record of a flow undecodable, behind the backend's back."""


@dataclass
class Damageable:
    storage: ExecutionLog
    damage_first_record: Damage


async def _damaging_status(opened: AsyncIterator[SqlDamageable]) -> AsyncIterator[Damageable]:
    async for backend in opened:

        async def damage(flow_id: str, set_column: SetColumn = backend.set_column) -> None:
            await set_column("invocations", flow_id, "status", "'NO-SUCH-STATUS'")

        yield Damageable(backend.storage, damage)


async def _sqlite(tmp_path: Path) -> AsyncIterator[Damageable]:
    async for opened in _damaging_status(open_sqlite(tmp_path)):
        yield opened


async def _postgres(tmp_path: Path) -> AsyncIterator[Damageable]:
    async for opened in _damaging_status(open_postgres(tmp_path)):
        yield opened


async def _redis(_tmp_path: Path) -> AsyncIterator[Damageable]:
    from redis.asyncio import Redis

    await require_redis()
    prefix = f"pyergon-test-{uuid.uuid4().hex[:12]}"

    async def damage(flow_id: str) -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            # The layout of redis_layout.py: {P}:inv:<id>, field "<sequence>:<sub_sequence>".
            assert await client.hexists(f"{{{prefix}}}:inv:{flow_id}", "1:0")
            await client.hset(f"{{{prefix}}}:inv:{flow_id}", "1:0", b"not a record")
        finally:
            await client.aclose()

    try:
        async with RedisExecutionLog(REDIS_URL, prefix=prefix) as storage:
            yield Damageable(storage, damage)
    finally:
        await drop_redis_keys(prefix)


BACKENDS = {
    "sqlite": pytest.param(_sqlite, id="sqlite"),
    "postgres": pytest.param(_postgres, id="postgres"),
    "redis": pytest.param(_redis, id="redis"),
}


@pytest.fixture(params=list(BACKENDS.values()))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Damageable]:
    async for opened in request.param(tmp_path):
        yield opened


async def _waiting_for_approval(storage: ExecutionLog, clock: ManualClock, flow_id: str) -> None:
    """Run ``flow_id`` until it recorded its step and waits, then approve it: it is queued."""
    outcome = await Executor(Approval(flow_id), storage, flow_id, clock=clock).run(Approval.run)
    assert isinstance(outcome, Suspended)
    assert await Scheduler(storage, clock=clock).signal(flow_id, "approve", "yes")


async def test_a_claim_whose_log_cannot_be_read_stands_and_the_worker_gives_the_flow_back(
    backend: Damageable,
) -> None:
    storage = backend.storage
    clock = ManualClock()
    BODY_RUNS.clear()
    await _waiting_for_approval(storage, clock, "damaged")
    await _waiting_for_approval(storage, clock, "healthy")
    await backend.damage_first_record("damaged")

    # A worker claims both and dies before it runs them: its claim stands.
    runs = await storage.claim(
        ClaimRequest(
            "worker-that-dies", ["Approval"], limit=10, lease_seconds=LEASE_SECONDS, now=clock.now()
        )
    )

    logs = {run.flow.flow_id: run.log for run in runs}
    assert sorted(logs) == ["damaged", "healthy"]
    assert logs["damaged"] is None
    assert [record.name for record in logs["healthy"] or []] == ["prepare", "approve"]
    for run in runs:
        stored = await storage.get_flow(run.flow.flow_id)
        assert stored is not None and stored.status is TaskStatus.RUNNING
        assert stored.lease_owner == "worker-that-dies"
        assert stored.lease_token == run.flow.lease_token is not None
        assert stored.lease_expires_at == clock.now() + LEASE_SECONDS

    # Once the lease ran out, another worker takes both: the healthy flow finishes, the damaged
    # one is given back to wait a while, its error reported, and its step is not run again.
    clock.advance(LEASE_SECONDS + 1)
    reported: list[tuple[str | None, BaseException]] = []
    worker = Worker(
        storage,
        "worker-2",
        clock=clock,
        on_error=lambda error, flow_id: reported.append((flow_id, error)),
    )
    await worker.register(Approval)

    await worker.run_until_idle(wait_for_timers=False)

    healthy = await storage.get_flow("healthy")
    assert healthy is not None and healthy.status is TaskStatus.COMPLETE
    damaged = await storage.get_flow("damaged")
    assert damaged is not None and damaged.status is TaskStatus.SUSPENDED
    assert damaged.lease_owner is None
    assert damaged.wake_at is not None and damaged.wake_at > clock.now()
    assert [flow_id for flow_id, _error in reported] == ["damaged"]
    assert BODY_RUNS == ["damaged", "healthy"]  # each step ran once, when it was recorded


async def test_a_postgres_claim_whose_log_query_fails_stands_and_the_run_reads_the_log_later(
    postgres_dsn: str,
) -> None:
    """PostgreSQL claims in one statement and reads the logs in a second one, which can fail."""
    import asyncpg

    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"
    table = f"{quote_identifier(schema)}.invocations"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        async with PostgresExecutionLog(postgres_dsn, schema=schema) as storage:
            clock = ManualClock()
            BODY_RUNS.clear()
            await _waiting_for_approval(storage, clock, "approval-1")
            await admin.execute(f"ALTER TABLE {table} RENAME TO invocations_away")

            runs = await storage.claim(
                ClaimRequest(
                    "worker-a", ["Approval"], limit=10, lease_seconds=LEASE_SECONDS, now=clock.now()
                )
            )

            assert [(run.flow.flow_id, run.log) for run in runs] == [("approval-1", None)]
            stored = await storage.get_flow("approval-1")
            assert stored is not None and stored.status is TaskStatus.RUNNING
            assert stored.lease_owner == "worker-a"
            assert stored.lease_token == runs[0].flow.lease_token is not None

            # The next worker cannot read the log either: it gives the flow back to wait.
            clock.advance(LEASE_SECONDS + 1)
            reported: list[str | None] = []
            worker = Worker(
                storage, "worker-b", clock=clock, on_error=lambda _error, id_: reported.append(id_)
            )
            await worker.register(Approval)
            await worker.run_until_idle(wait_for_timers=False)
            waiting = await storage.get_flow("approval-1")
            assert waiting is not None and waiting.status is TaskStatus.SUSPENDED
            assert waiting.wake_at is not None and reported == ["approval-1"]

            # Readable again: the run replays its recorded step instead of running it again.
            await admin.execute(
                f"ALTER TABLE {quote_identifier(schema)}.invocations_away RENAME TO invocations"
            )
            clock.advance(waiting.wake_at - clock.now())
            await worker.run_until_idle(wait_for_timers=False)
            done = await storage.get_flow("approval-1")
            assert done is not None and done.status is TaskStatus.COMPLETE
            assert BODY_RUNS == ["approval-1"]
    finally:
        await admin.close()
        await drop_schema(schema)
