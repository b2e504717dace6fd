"""The Redis scripts apply what they are given: guards, first writer wins, indexes, the queue.

They hold no rule of a flow's life; the indexes they keep must agree with what the in-memory
reference reads off its flows directly.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from pyergon.core import ClaimRequest, FlowQuery
from pyergon.core.changes import ABSENT, Change, FlowWrite, stored_as_given
from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.redis import RedisExecutionLog

from .conftest import FlowFactory, InvocationFactory, SignalFactory
from .test_redis import MakeRedis
from .test_redis import make_redis as shared_make_redis

make_redis = shared_make_redis  # the fixture of test_redis.py, used here too


@pytest.fixture
async def redis(make_redis: MakeRedis) -> RedisExecutionLog:
    return await make_redis()


# -- guards ----------------------------------------------------------------------------------


async def test_a_moved_flow_refuses_the_whole_change(
    redis: RedisExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    await redis.create_flow(make_flow())
    await redis.create_flow(make_flow("flow-2", status=TaskStatus.SUSPENDED))
    failed = make_invocation(1, status=InvocationStatus.FAILED)
    await redis.apply(Change(records=(failed,)))
    assert await redis.wait_for_work(timeout=0) is True  # the creation's wake-up

    applied = await redis.apply(
        Change(
            records=(make_invocation(2),),
            signals=(make_signal(),),
            writes=(
                FlowWrite("flow-2", {"status": TaskStatus.PENDING}, expected_version=1),
                FlowWrite("flow-1", {"attempt": 2}, expected_version=2),
            ),
            forget_failed=("flow-1",),
            notify=True,
        )
    )

    assert applied.moved == "flow-1"
    assert not applied.complete
    assert await redis.load_invocations("flow-1") == [failed]
    assert await redis.list_signals("flow-1") == []
    assert await redis.get_flow("flow-1") == make_flow()
    assert await redis.get_flow("flow-2") == make_flow("flow-2", status=TaskStatus.SUSPENDED)
    assert await redis.wait_for_work(timeout=0) is False


async def test_absent_means_the_flow_must_not_exist(
    redis: RedisExecutionLog, make_flow: FlowFactory, make_signal: SignalFactory
) -> None:
    await redis.create_flow(make_flow())

    exists = await redis.apply(Change(writes=(FlowWrite("flow-1", expected_version=ABSENT),)))
    missing = await redis.apply(
        Change(
            signals=(make_signal(flow_id="later"),),
            writes=(FlowWrite("later", {"attempt": 3}, expected_version=ABSENT),),
        )
    )

    assert exists.moved == "flow-1"
    assert missing.complete
    assert missing.signals_stored == 1
    assert await redis.get_flow("later") is None  # a write of a missing flow does nothing
    assert [flow.flow_id for flow in await redis.list_flows()] == ["flow-1"]


async def test_a_flow_without_a_version_field_is_at_version_1(
    redis: RedisExecutionLog, redis_url: str, make_flow: FlowFactory
) -> None:
    await redis.create_flow(make_flow())
    admin = Redis.from_url(redis_url)
    try:
        await admin.hdel(f"{{{redis.prefix}}}:flow:flow-1", "version")
    finally:
        await admin.aclose()

    assert await redis.get_flow("flow-1") == make_flow()
    assert (await redis.apply(Change(writes=(FlowWrite("flow-1", expected_version=1),)))).complete
    assert await redis.get_flow("flow-1") == make_flow(version=2)


async def test_a_write_outside_its_statuses_moves_only_the_version(
    redis: RedisExecutionLog, make_flow: FlowFactory
) -> None:
    await redis.create_flow(make_flow())
    write = FlowWrite(
        "flow-1",
        {"status": TaskStatus.CANCELLED, "worker_id": "w"},
        only_if_status=frozenset((TaskStatus.SUSPENDED,)),
    )

    assert (await redis.apply(Change(writes=(write, write)))).complete

    assert await redis.get_flow("flow-1") == make_flow(version=3)
    assert (await redis.count_flows())[TaskStatus.PENDING] == 1
    assert await redis.list_flows(FlowQuery(worker_id="w")) == []
    runs = await redis.claim(ClaimRequest("w", ["Order"], limit=1, lease_seconds=5, now=1.0))
    assert [run.flow.version for run in runs] == [4]


def test_a_write_cannot_set_the_id_or_the_version() -> None:
    storage = RedisExecutionLog()
    for changes in ({"version": 7}, {"flow_id": "other"}, {"colour": "red"}):
        with pytest.raises(ValueError, match="flow"):
            asyncio.run(storage.apply(Change(writes=(FlowWrite("flow-1", changes),))))


# -- what the scripts do not do --------------------------------------------------------------


async def test_the_scripts_write_what_they_are_given_and_decide_nothing(
    redis: RedisExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    """No cancel turns a suspension into CANCELLED, no child wakes its parent, no signal a flow."""
    await redis.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED))
    await redis.create_flow(
        make_flow(
            "child", status=TaskStatus.RUNNING, parent_flow_id="parent", cancel_requested=True
        )
    )
    waiting = make_invocation(
        1,
        flow_id="parent",
        kind=OperationKind.SIGNAL,
        name="approved",
        status=InvocationStatus.WAITING_FOR_SIGNAL,
    )

    await redis.apply(
        Change(
            records=(waiting,),
            signals=(make_signal(flow_id="parent"),),
            writes=(FlowWrite("child", {"status": TaskStatus.SUSPENDED, "wake_at": 9.0}),),
        )
    )
    await redis.apply(Change(writes=(FlowWrite("child", {"status": TaskStatus.COMPLETE}),)))

    parent = await redis.get_flow("parent")
    child = await redis.get_flow("child")
    assert parent == make_flow("parent", status=TaskStatus.SUSPENDED)
    assert child is not None
    assert (child.status, child.cancel_requested, child.wake_at) == (
        TaskStatus.COMPLETE,
        True,
        9.0,
    )
    assert await redis.next_wake_at() is None  # a COMPLETE flow is in no timer index


# -- records ---------------------------------------------------------------------------------


_ERROR = StoredError("shop.Declined", "no", "Traceback ...", b"payload")
_STEP = Invocation("flow-1", 1, OperationKind.STEP, "charge", InvocationStatus.COMPLETE)
_TIMER = _STEP.replace(kind=OperationKind.TIMER, fire_at=1.5, result=b"")
_FAILED = _STEP.replace(status=InvocationStatus.FAILED, error=_ERROR)


@pytest.mark.parametrize(
    ("stored", "given"),
    [
        (_STEP.replace(result=b"r"), _STEP.replace(result=b"r", attempts=2, completed_at=5.0)),
        (_STEP.replace(result=b"r"), _STEP.replace(result=b"s")),
        (_STEP, _STEP.replace(result=b"")),
        (_STEP, _FAILED),
        (_FAILED, _FAILED.replace(attempts=3, started_at=1.0)),
        (_FAILED, _FAILED.replace(error=replace(_ERROR, traceback="Traceback (other)"))),
        (_FAILED, _FAILED.replace(error=replace(_ERROR, payload=None))),
        (_FAILED, _FAILED.replace(error=replace(_ERROR, payload=b"payloaf"))),
        (_TIMER, _TIMER.replace(name="later")),
        (_TIMER, _TIMER.replace(fire_at=2.5)),
    ],
    ids=[
        "same result",
        "other result",
        "None or empty",
        "failed instead",
        "same error",
        "other traceback",
        "no payload",
        "other payload",
        "same fire time",
        "other fire time",
    ],
)
async def test_a_final_record_stands_and_a_different_outcome_stops_the_change(
    redis: RedisExecutionLog, make_flow: FlowFactory, stored: Invocation, given: Invocation
) -> None:
    """The script compares outcomes as ``stored_as_given`` does in Python."""
    await redis.create_flow(make_flow())
    await redis.apply(Change(records=(stored,)))
    after = _STEP.replace(sequence=2)

    applied = await redis.apply(
        Change(records=(given, after), writes=(FlowWrite("flow-1", {"attempt": 2}),))
    )

    conflict = not stored_as_given(given, stored)
    assert applied.record_conflict is conflict
    assert applied.records == ([stored] if conflict else [stored, after])
    assert await redis.load_invocations("flow-1") == applied.records
    assert await redis.get_flow("flow-1") == (
        make_flow() if conflict else make_flow(attempt=2, version=2)
    )


async def test_a_final_record_with_another_outcome_stops_the_change(
    redis: RedisExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    await redis.create_flow(make_flow())
    first = make_invocation(2, status=InvocationStatus.COMPLETE, result=b"first")
    await redis.apply(Change(records=(first,)))
    before = make_invocation(1, status=InvocationStatus.COMPLETE)

    applied = await redis.apply(
        Change(
            records=(before, first.replace(result=b"second"), make_invocation(3)),
            signals=(make_signal(),),
            writes=(FlowWrite("flow-1", {"attempt": 2}),),
            notify=True,
        )
    )

    assert applied.record_conflict
    assert applied.records == [before, first]
    assert await redis.load_invocations("flow-1") == [before, first]
    assert await redis.list_signals("flow-1") == []
    assert await redis.get_flow("flow-1") == make_flow()


async def test_failed_records_are_forgotten_before_the_change_records(
    redis: RedisExecutionLog, make_invocation: InvocationFactory
) -> None:
    failed = make_invocation(1, status=InvocationStatus.FAILED)
    done = make_invocation(2, status=InvocationStatus.COMPLETE)
    other = make_invocation(1, flow_id="flow-2", status=InvocationStatus.FAILED)
    await redis.apply(Change(records=(failed, done, other)))
    retried = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"ok")

    applied = await redis.apply(Change(records=(retried,), forget_failed=("flow-1",)))

    assert applied.records == [retried]
    assert await redis.load_invocations("flow-1") == [retried, done]
    assert await redis.load_invocations("flow-2") == [other]


# -- the queue -------------------------------------------------------------------------------


async def test_concurrent_claimers_get_each_flow_exactly_once(
    make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    first = await make_redis()
    second = await make_redis(first.prefix)
    flow_ids = [f"flow-{n:02}" for n in range(50)]
    for n, flow_id in enumerate(flow_ids):
        await first.create_flow(make_flow(flow_id, created_at=1_000.0 + n % 5))

    async def claim_all(storage: RedisExecutionLog, worker: str) -> list[ScheduledFlow]:
        claimed = []
        while runs := await storage.claim(
            ClaimRequest(worker, ["Order"], limit=2, lease_seconds=60, now=2_000.0)
        ):
            claimed += [run.flow for run in runs]
        return claimed

    results = await asyncio.gather(
        *(claim_all(first if n % 2 else second, f"worker-{n}") for n in range(20))
    )

    claims = [flow for claimed in results for flow in claimed]
    assert sorted(flow.flow_id for flow in claims) == flow_ids
    assert len({flow.lease_token for flow in claims}) == 50
    for claimed in claims:
        assert claimed.version == 2
        assert await first.get_flow(claimed.flow_id) == claimed


async def test_runnable_flows_are_claimed_in_queue_order_with_their_logs(
    redis: RedisExecutionLog, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    for flow_id, created_at in [("c", 3.0), ("a", 1.0), ("b", 2.0)]:
        await redis.create_flow(make_flow(flow_id, created_at=created_at))
        assert await redis.claim(
            ClaimRequest("dead-worker", ["Order"], limit=1, lease_seconds=10, now=100.0)
        )
    await redis.create_flow(make_flow("pending", created_at=2.5))
    await redis.create_flow(make_flow("a-due", status=TaskStatus.SUSPENDED, wake_at=50.0))
    await redis.create_flow(  # the same wake time: created_at decides before the id
        make_flow("z-due", status=TaskStatus.SUSPENDED, wake_at=50.0, created_at=0.5)
    )
    await redis.create_flow(make_flow("later", status=TaskStatus.SUSPENDED, wake_at=300.0))
    await redis.create_flow(make_flow("refund", flow_type="Refund"))
    log = [make_invocation(2, flow_id="b"), make_invocation(1, flow_id="b")]
    await redis.apply(Change(records=tuple(log)))

    runs = await redis.claim(
        ClaimRequest("worker-b", ["Order"], limit=10, lease_seconds=10, now=200.0)
    )

    assert [run.flow.flow_id for run in runs] == ["a", "b", "pending", "c", "z-due", "a-due"]
    assert [run.log for run in runs][1] == log[::-1]
    assert all(run.flow.worker_id == "worker-b" for run in runs)
    assert all(run.flow.lease_expires_at == 210.0 for run in runs)
    assert len({run.flow.lease_token for run in runs}) == 6
    soon = await redis.claim(
        ClaimRequest("w", ["Order"], limit=10, lease_seconds=10, now=200.0, due_by=300.0)
    )
    assert [run.flow.flow_id for run in soon] == ["later"]


async def test_renewing_leases_keeps_the_version_and_the_flow(
    redis: RedisExecutionLog, make_flow: FlowFactory
) -> None:
    for flow_id in ("flow-1", "flow-2"):
        await redis.create_flow(make_flow(flow_id))
    runs = await redis.claim(
        ClaimRequest("worker-a", ["Order"], limit=2, lease_seconds=10, now=100.0)
    )
    tokens = {run.flow.flow_id: run.flow.lease_token or "" for run in runs}

    renewed = await redis.renew_leases(
        {"flow-1": tokens["flow-1"], "flow-2": "stale", "missing": "x"},
        lease_seconds=100,
        now=105.0,
    )

    assert renewed == {"flow-1"}
    held = await redis.get_flow("flow-1")
    assert held is not None
    assert (held.lease_expires_at, held.version) == (205.0, 2)
    taken = await redis.claim(
        ClaimRequest("worker-b", ["Order"], limit=2, lease_seconds=10, now=150.0)
    )
    assert [run.flow.flow_id for run in taken] == ["flow-2"]  # its lease expired at 110
    assert await redis.renew_leases({}, lease_seconds=1, now=1.0) == set()


# -- the indexes agree with the reference ----------------------------------------------------

_STATUSES = list(TaskStatus)
_TYPES = ["Order", "Refund"]


def _random_write(rng: random.Random, flow_id: str) -> FlowWrite:
    changes: dict[str, Any] = {"status": rng.choice(_STATUSES), "updated_at": rng.random()}
    choices: dict[str, list[Any]] = {
        "wake_at": [None, 5.0, 50.0, 500.0],
        "lease_expires_at": [None, 20.0, 2_000.0],
        "lease_token": [None, "token"],
        "worker_id": [None, "worker-a", "worker-b"],
        "parent_flow_id": [None, "flow-0"],
        "cancel_requested": [False, True],
    }
    for name, values in choices.items():
        if rng.random() < 0.5:
            changes[name] = rng.choice(values)
    only = None if rng.random() < 0.7 else frozenset(rng.sample(_STATUSES, 2))
    return FlowWrite(flow_id, changes, only_if_status=only)


def _comparable(flow: ScheduledFlow | None) -> ScheduledFlow | None:
    """A flow without what a claim draws at random: its token and its clock."""
    if flow is None:
        return None
    token = flow.lease_token if flow.lease_token in (None, "token") else "claimed"
    return flow.replace(lease_token=token, updated_at=0.0)


async def test_the_indexes_agree_with_the_reference_after_random_changes(
    redis: RedisExecutionLog,
) -> None:
    memory = InMemoryExecutionLog()
    backends: list[ExecutionLog] = [redis, memory]
    rng = random.Random(3)
    ids = [f"flow-{n}" for n in range(30)]
    for n, flow_id in enumerate(ids):
        flow = ScheduledFlow(
            flow_id, rng.choice(_TYPES), b"", rng.choice(_STATUSES), float(n % 7), 0.0
        )
        for storage in backends:
            await storage.create_flow(flow)

    claims = 0
    for round_ in range(100):
        if round_ % 5 == 4:
            kind = rng.choice(_TYPES)
            now, limit = rng.choice([10.0, 100.0, 1_000.0]), rng.randint(1, 4)
            claimed = [
                [
                    _comparable(run.flow)
                    for run in await storage.claim(
                        ClaimRequest("w", [kind], limit=limit, lease_seconds=30, now=now)
                    )
                ]
                for storage in backends
            ]
            assert claimed[0] == claimed[1]
            claims += len(claimed[0])
        else:
            writes = tuple(_random_write(rng, rng.choice(ids)) for _ in range(3))
            for storage in backends:
                await storage.apply(Change(writes=writes))

    assert claims > 5  # the claims took flows, so their index entries were tested too
    for flow_id in ids:
        assert _comparable(await redis.get_flow(flow_id)) == _comparable(
            await memory.get_flow(flow_id)
        )
    for storage_filters in (
        {},
        {"status": TaskStatus.RUNNING},
        {"status": [TaskStatus.SUSPENDED, TaskStatus.PENDING], "flow_type": "Order"},
        {"worker_id": "worker-a"},
        {"parent_flow_id": "flow-0"},
    ):
        listed = [
            [flow.flow_id for flow in await storage.list_flows(FlowQuery(**storage_filters))]
            for storage in backends
        ]
        assert listed[0] == listed[1], storage_filters
    flow_types: list[str | None] = [None, *_TYPES]
    for flow_type in flow_types:
        counts = [await storage.count_flows(flow_type=flow_type) for storage in backends]
        assert counts[0] == counts[1]
        types = None if flow_type is None else [flow_type]
        assert await redis.next_wake_at(types) == await memory.next_wake_at(types)
    assert await redis.cancel_requests(ids) == await memory.cancel_requests(ids)
