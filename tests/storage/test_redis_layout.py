"""The Redis layout: its scripts, its migrations from prefixes older pyergons wrote, its indexes
and its encodings."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from pyergon.core import ClaimRequest, FlowQuery
from pyergon.core.changes import Applied, Change, FlowWrite
from pyergon.core.records import (
    Attempt,
    FlowCursor,
    Invocation,
    ScheduledFlow,
    SignalRecord,
    StepProgress,
    StoredError,
)
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.storage import _flows as flows
from pyergon.storage import _redis_checks
from pyergon.storage._redis_layout import SCRIPTS, encode_invocation, encode_signal
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_worker

from .conftest import FlowFactory, InvocationFactory
from .test_redis import MakeRedis
from .test_redis import admin as shared_admin
from .test_redis import make_redis as shared_make_redis

admin = shared_admin  # the fixtures of test_redis.py, used here too
make_redis = shared_make_redis


def test_every_script_is_read_from_the_package() -> None:
    assert set(SCRIPTS) >= {"apply", "claim", "create_flow", "migrate", "renew_leases"}
    for source in SCRIPTS.values():
        assert source.startswith("local FINAL_RECORD = ")
        assert "local function reindex" in source  # the prelude comes with each


# -- migrations ------------------------------------------------------------------------------


async def write_old_flow(admin: Redis, prefix: str, flow: ScheduledFlow, layout: int) -> None:
    """Store ``flow`` as layout version ``layout`` (1 or 2) did; the error fields are left out.

    Version 1 kept no ``worker_id`` nor ``cancel_requested`` and had no worker or children
    indexes; neither version had a ``version`` field.
    """
    key = f"{{{prefix}}}"
    fields: dict[str, str | bytes | None] = {
        "flow_id": flow.flow_id,
        "flow_type": flow.flow_type,
        "payload": flow.payload,
        "status": flow.status.value,
        "created_at": repr(flow.created_at),
        "updated_at": repr(flow.updated_at),
        "result": flow.result,
        "attempt": str(flow.attempt),
        "wake_at": None if flow.wake_at is None else repr(flow.wake_at),
        "parent_flow_id": flow.parent_flow_id,
        "parent_sequence": flow.parent_sequence,
        "lease_owner": flow.lease_owner,
        "lease_token": flow.lease_token,
        "lease_expires_at": None if flow.lease_expires_at is None else repr(flow.lease_expires_at),
    }
    indexes = ["flows", f"type:{flow.flow_type}", f"status:{flow.status.value}"]
    indexes.append(f"status:{flow.status.value}:{flow.flow_type}")
    if layout >= 2:
        fields["worker_id"] = flow.worker_id
        fields["cancel_requested"] = "1" if flow.cancel_requested else None
        if flow.worker_id is not None:
            indexes.append(f"worker:{flow.worker_id}")
        if flow.parent_flow_id is not None:
            indexes.append(f"children:{flow.parent_flow_id}")
    async with admin.pipeline(transaction=True) as pipe:
        pipe.set(f"{key}:schema_version", str(layout))
        pipe.hset(
            f"{key}:flow:{flow.flow_id}",
            mapping={name: value for name, value in fields.items() if value is not None},
        )
        pipe.sadd(f"{key}:ids", flow.flow_id)
        for index in indexes:
            pipe.zadd(f"{key}:{index}", {flow.flow_id: flow.created_at})
        if flow.status is TaskStatus.SUSPENDED and flow.wake_at is not None:
            for index in ("timers", f"timers:{flow.flow_type}"):
                pipe.zadd(f"{key}:{index}", {flow.flow_id: flow.wake_at})
        if flow.status is TaskStatus.RUNNING and flow.lease_expires_at is not None:
            pipe.zadd(f"{key}:leases:{flow.flow_type}", {flow.flow_id: flow.lease_expires_at})
        await pipe.execute()


@pytest.mark.parametrize("connecting", [1, 3], ids=["one process", "several at once"])
async def test_connect_migrates_a_version_2_prefix(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin: Redis,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    connecting: int,
) -> None:
    prefix = redis_prefix()
    waiting = make_flow("waiting", status=TaskStatus.SUSPENDED, created_at=1.0)
    running = make_flow(
        "running",
        status=TaskStatus.RUNNING,
        created_at=2.0,
        lease_owner="worker-a",
        lease_token="token-a",
        lease_expires_at=9_000.0,
        worker_id="worker-a",
        cancel_requested=True,
    )
    child = make_flow(
        "child", status=TaskStatus.COMPLETE, result=b"done", parent_flow_id="waiting",
        parent_sequence="1", worker_id="worker-b", created_at=3.0,
    )  # fmt: skip
    pending = make_flow("pending", created_at=4.0)
    for flow in (waiting, running, child, pending):
        await write_old_flow(admin, prefix, flow, layout=2)
    record = make_invocation(
        1, flow_id="waiting", kind=OperationKind.SIGNAL, name="approved",
        status=InvocationStatus.WAITING_FOR_SIGNAL,
    )  # fmt: skip
    await admin.hset(f"{{{prefix}}}:inv:waiting", "1:0", encode_invocation(record))
    await admin.hset(f"{{{prefix}}}:sig:pending", "early", encode_signal(1.5, b"hi"))

    opened = await asyncio.gather(*(make_redis(prefix) for _ in range(connecting)))

    storage = opened[0]
    assert await admin.get(f"{{{prefix}}}:schema_version") == str(SCHEMA_VERSION).encode()
    for flow in (waiting, running, child, pending):
        assert await storage.get_flow(flow.flow_id) == flow  # at version 1
    assert await storage.load_invocations("waiting") == [record]
    assert await storage.list_signals("pending") == [SignalRecord("pending", "early", b"hi", 1.5)]
    assert [flow.flow_id for flow in await storage.list_flows(FlowQuery(worker_id="worker-b"))] == [
        "child"
    ]
    assert [
        flow.flow_id for flow in await storage.list_flows(FlowQuery(parent_flow_id="waiting"))
    ] == ["child"]
    assert await storage.cancel_requests(["running", "waiting"]) == {"running"}
    # The migrated prefix behaves as version 3: writes are guarded by the version.
    stale = Change(writes=(FlowWrite("pending", {"attempt": 2}, expected_version=2),))
    assert (await storage.apply(stale)).moved == "pending"
    touch = Change(writes=(FlowWrite("pending", {"attempt": 2}, expected_version=1),))
    assert (await storage.apply(touch)).complete
    runs = await storage.claim(
        ClaimRequest("worker-c", ["Order"], limit=5, lease_seconds=30, now=100.0)
    )
    assert [(run.flow.flow_id, run.flow.version) for run in runs] == [("pending", 3)]
    assert await flows.deliver_signal(storage, SignalRecord("waiting", "approved", b"ok", 2.0))
    woken = await storage.get_flow("waiting")
    assert woken is not None
    assert (woken.status, woken.version) == (TaskStatus.PENDING, 2)
    # Flows of the old layout lost no lease before; a takeover counts from there.
    taken = await storage.claim(
        ClaimRequest("worker-d", ["Order"], limit=5, lease_seconds=30, now=9_001.0)
    )
    losses = {run.flow.flow_id: (run.flow.lease_losses, run.flow.last_lost_by) for run in taken}
    assert losses == {
        "running": (1, "worker-a"),
        "pending": (1, "worker-c"),
        "waiting": (0, None),
    }


@pytest.mark.parametrize("connecting", [1, 3], ids=["one process", "several at once"])
async def test_connect_migrates_a_version_1_prefix(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin: Redis,
    make_flow: FlowFactory,
    monkeypatch: pytest.MonkeyPatch,
    connecting: int,
) -> None:
    monkeypatch.setattr(_redis_checks, "_MIGRATION_BATCH", 10)  # many batches, interleaved
    prefix = redis_prefix()
    parent = make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=50.0)
    await write_old_flow(admin, prefix, parent, layout=1)
    await write_old_flow(admin, prefix, make_flow("orphan", created_at=5_000.0), layout=1)
    children = []
    for n in range(200):  # more than Redis keeps in a compact (single-batch) sorted set
        child = make_flow(
            f"child-{n:03}", created_at=2_000.0 + n, parent_flow_id="parent", parent_sequence="1"
        )
        if n % 3 == 0:
            worker = f"worker-{'ab'[n % 2]}"
            child = child.replace(
                status=TaskStatus.RUNNING,
                lease_owner=worker,
                lease_token=f"token-{n}",
                lease_expires_at=9_000.0,
            )
        else:
            child = child.replace(status=TaskStatus.COMPLETE, result=b"done")
        await write_old_flow(admin, prefix, child, layout=1)
        children.append(child)

    opened = await asyncio.gather(*(make_redis(prefix) for _ in range(connecting)))

    storage = opened[0]
    assert await admin.get(f"{{{prefix}}}:schema_version") == str(SCHEMA_VERSION).encode()
    newest_first = [child.flow_id for child in reversed(children)]
    assert [
        flow.flow_id for flow in await storage.list_flows(FlowQuery(parent_flow_id="parent"))
    ] == (newest_first[:100])
    by_worker_a = await storage.list_flows(FlowQuery(worker_id="worker-a", limit=1_000))
    assert [flow.flow_id for flow in by_worker_a] == [
        child.flow_id for child in reversed(children) if child.lease_owner == "worker-a"
    ]
    assert {flow.worker_id for flow in by_worker_a} == {"worker-a"}
    completed = await storage.get_flow("child-001")
    assert completed == children[1]  # no worker known, no cancel requested, version 1
    counts = await storage.count_flows()
    assert counts[TaskStatus.RUNNING] == 67
    assert counts[TaskStatus.COMPLETE] == 133
    # The migrated prefix behaves as version 3: claims are recorded, cancels are marked.
    runs = await storage.claim(
        ClaimRequest("worker-c", ["Order"], limit=1, lease_seconds=30, now=100.0)
    )
    assert [run.flow.flow_id for run in runs] == ["orphan"]
    assert [flow.flow_id for flow in await storage.list_flows(FlowQuery(worker_id="worker-c"))] == [
        "orphan"
    ]
    cancelled = await flows.request_cancel(storage, "child-000")
    assert cancelled is not None
    assert cancelled.cancel_requested
    assert cancelled.version == 2


def version_4_record(record: Invocation) -> bytes:
    """``record`` as layout version 4 encoded it, before output and progress (copied here)."""
    error = record.error
    payload = None if error is None else error.payload
    header = {
        "kind": record.kind.value,
        "name": record.name,
        "status": record.status.value,
        "args_hash": record.args_hash,
        "attempts": record.attempts,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "fire_at": record.fire_at,
        "child_flow_id": record.child_flow_id,
        "result": None if record.result is None else len(record.result),
        "error": None if error is None else [error.stored_type, error.message, error.traceback],
        "error_payload": None if payload is None else len(payload),
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b"\n" + (record.result or b"") + (payload or b"")


async def test_connect_migrates_a_version_4_prefix_whose_records_and_workers_read_as_before(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin: Redis,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
) -> None:
    prefix = redis_prefix()
    older = await make_redis(prefix)
    await older.create_flow(make_flow(status=TaskStatus.RUNNING, lease_token="t"))
    paid = make_invocation(
        1, status=InvocationStatus.COMPLETE, result=b"paid\n", attempts=1, completed_at=1.5
    )
    error = StoredError("shop.Declined", "no", "Traceback", b"\x80pay\nload")
    failed = make_invocation(2, status=InvocationStatus.FAILED, result=b"partial", error=error)
    key = f"{{{prefix}}}"
    for record in (paid, failed):
        field = f"{record.sequence}:{record.sub_sequence}"
        await admin.hset(f"{key}:inv:flow-1", field, version_4_record(record))
    worker = make_worker()
    await older.put_worker(worker, replacing=None)  # a worker running nothing: no activity field
    await admin.set(f"{key}:schema_version", "4")

    storage = await make_redis(prefix)

    assert await admin.get(f"{key}:schema_version") == str(SCHEMA_VERSION).encode()
    loaded = await storage.load_invocations("flow-1")
    assert loaded == [paid, failed]
    assert [(record.output, record.progress) for record in loaded] == [(None, None)] * 2
    assert await storage.get_worker("worker-a") == worker
    # An equal outcome stored again, now with output, is no conflict: the old record stands.
    again = paid.replace(output="paid again\n", progress=StepProgress(1.0, at=2.0))
    assert await storage.apply(Change(records=(again,))) == Applied([paid])
    shipped = make_invocation(
        3,
        status=InvocationStatus.COMPLETE,
        result=b"",
        output="shipped ✓\n",
        progress=StepProgress(2.0, 2.0, "parcels", 3.0),
    )
    assert (await storage.apply(Change(records=(shipped,)))).records == [shipped]
    assert await storage.load_invocations("flow-1") == [paid, failed, shipped]
    activity = (StepActivity("flow-1", "4", "pack", 4.0, StepProgress(0.5, at=4.5)),)
    beaten = worker.beating(1_001.0, activity=activity)
    assert (await storage.beat(beaten, {}, lease_seconds=2.0, now=1_001.0)).registered
    assert await storage.get_worker("worker-a") == beaten


async def test_connect_migrates_a_version_5_prefix_whose_records_have_no_code_hash(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin: Redis,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
) -> None:
    prefix = redis_prefix()
    older = await make_redis(prefix)
    await older.create_flow(make_flow(status=TaskStatus.RUNNING, lease_token="t"))
    paid = make_invocation(
        1, status=InvocationStatus.COMPLETE, result=b"paid", attempts=1, completed_at=1.5
    )
    key = f"{{{prefix}}}"
    # Layout 5 encoded a record without output or progress as layout 4 did.
    await admin.hset(f"{key}:inv:flow-1", "1:0", version_4_record(paid))
    await admin.set(f"{key}:schema_version", "5")

    storage = await make_redis(prefix)

    assert await admin.get(f"{key}:schema_version") == str(SCHEMA_VERSION).encode()
    (loaded,) = await storage.load_invocations("flow-1")
    assert loaded == paid and loaded.code_hash == ""
    # A record made before stands against one made by other code with the same outcome.
    again = paid.replace(code_hash="0123456789abcdef")
    assert await storage.apply(Change(records=(again,))) == Applied([paid])
    shipped = make_invocation(2, status=InvocationStatus.COMPLETE, code_hash="fedcba9876543210")
    assert (await storage.apply(Change(records=(shipped,)))).records == [shipped]
    assert await storage.load_invocations("flow-1") == [paid, shipped]


async def test_connect_migrates_a_version_6_prefix_whose_records_have_no_earlier_attempts(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin: Redis,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
) -> None:
    prefix = redis_prefix()
    older = await make_redis(prefix)
    await older.create_flow(make_flow(status=TaskStatus.RUNNING, lease_token="t"))
    refused = StoredError("shop.Refused", "no", "Traceback")
    retrying = make_invocation(1, attempts=1, started_at=1.0, error=refused)
    key = f"{{{prefix}}}"
    # Layout 6 encoded a record without a code_hash as layout 4 did.
    await admin.hset(f"{key}:inv:flow-1", "1:0", version_4_record(retrying))
    await admin.set(f"{key}:schema_version", "6")

    storage = await make_redis(prefix)

    assert await admin.get(f"{key}:schema_version") == str(SCHEMA_VERSION).encode()
    (loaded,) = await storage.load_invocations("flow-1")
    assert loaded == retrying and loaded.earlier_attempts == ()
    paid = retrying.replace(
        status=InvocationStatus.COMPLETE,
        result=b"paid",
        error=None,
        attempts=2,
        earlier_attempts=(Attempt.failed(1, 1.0, 1.5, refused),),
    )
    assert (await storage.apply(Change(records=(paid,)))).records == [paid]
    assert await storage.load_invocations("flow-1") == [paid]


# -- indexes and encodings -------------------------------------------------------------------


async def test_times_keep_full_precision_through_the_indexes(
    make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()
    wake_at = 1_700_000_123.987654321
    flow = make_flow(
        created_at=1_700_000_000.123456789, status=TaskStatus.SUSPENDED, wake_at=wake_at
    )
    await storage.create_flow(flow)

    assert await storage.get_flow("flow-1") == flow
    assert await storage.next_wake_at() == wake_at
    before = math.nextafter(wake_at, 0.0)
    early = ClaimRequest("w", ["Order"], limit=1, lease_seconds=1, now=before)
    due = ClaimRequest("w", ["Order"], limit=1, lease_seconds=1, now=wake_at)
    assert await storage.claim(early) == []
    assert len(await storage.claim(due)) == 1


async def test_bytes_and_text_with_newlines_round_trip(
    make_redis: MakeRedis, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    error = StoredError("shop.Declined", "line 1\nline 2", "Traceback\n  ...\n", b"\n\x00pay\nload")
    record = make_invocation(
        1, status=InvocationStatus.FAILED, name="naïve ✓\nstep", result=b"\nres\n\xff", error=error
    )
    signal = SignalRecord("flow-1", "approval\nnext", b"\nyes\n", 1.25)
    await storage.create_flow(make_flow(payload=b"\n\x00\xff"))
    write = FlowWrite("flow-1", {"error": error, "result": b"\r\n", "worker_id": "wörker ✓"})

    applied = await storage.apply(Change(records=(record,), signals=(signal,), writes=(write,)))

    assert applied.records == [record]
    assert await storage.load_invocations("flow-1") == [record]
    assert await storage.list_signals("flow-1") == [signal]
    expected = make_flow(payload=b"\n\x00\xff").replace(**write.changes, version=2)
    assert await storage.get_flow("flow-1") == expected
    assert await storage.list_flows(FlowQuery(worker_id="wörker ✓")) == [expected]


async def test_a_signal_with_a_non_ascii_name_wakes_the_flow_waiting_for_it(
    make_redis: MakeRedis, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    waiting = make_invocation(
        1, kind=OperationKind.SIGNAL, name="genehmigt ✓", status=InvocationStatus.WAITING_FOR_SIGNAL
    )
    await flows.save_records(storage, [waiting])

    assert await flows.deliver_signal(storage, SignalRecord("flow-1", "genehmigt ✓", b"ja", 1.0))

    woken = await storage.get_flow("flow-1")
    assert woken is not None
    assert woken.status is TaskStatus.PENDING


async def test_listing_agrees_with_the_in_memory_backend_on_random_filters(
    make_redis: MakeRedis,
) -> None:
    """Many equal creation times, non-ASCII ids and cursors on no stored flow test the walk."""
    redis_storage = await make_redis()
    memory = InMemoryExecutionLog()
    rng = random.Random(20_261_125)
    statuses = list(TaskStatus)
    for n in range(400):
        flow = ScheduledFlow(
            flow_id=f"{rng.choice(['a', 'b', 'Z', 'é', 'ab'])}-{n}",
            flow_type=rng.choice(["Order", "Refund", "ns:Order"]),
            payload=b"",
            status=rng.choice(statuses),
            created_at=float(rng.randint(1, 30)),
            updated_at=1.0,
            worker_id=rng.choice([None, "worker-a", "worker-b"]),
            parent_flow_id=rng.choice([None, None, "parent-1", "parent-2"]),
        )
        for storage in (redis_storage, memory):
            await storage.create_flow(flow)

    for _ in range(300):
        filters: dict[str, Any] = {
            "limit": rng.choice([1, 7, 50, 1_000]),
            "offset": rng.choice([0, 0, 3, 20]),
        }
        if rng.random() < 0.4:
            filters["status"] = rng.choice([rng.choice(statuses), rng.sample(statuses, 2)])
        if rng.random() < 0.4:
            filters["flow_type"] = rng.choice(["Order", "ns:Order", "Unknown"])
        if rng.random() < 0.3:
            filters["worker_id"] = rng.choice(["worker-a", "worker-b", "worker-c"])
        if rng.random() < 0.3:
            filters["parent_flow_id"] = rng.choice(["parent-1", "parent-2"])
        if rng.random() < 0.3:
            filters["created_after"] = rng.randint(0, 30) + rng.choice([0.0, 0.5])
        if rng.random() < 0.3:
            filters["created_before"] = rng.randint(0, 30) + rng.choice([0.0, 0.5])
        if rng.random() < 0.5:
            filters["after"] = FlowCursor(
                float(rng.randint(0, 31)), rng.choice(["", "a", "ab-7", "b-300", "Z", "é-1", "ü"])
            )

        expected = await memory.list_flows(FlowQuery(**filters))
        assert await redis_storage.list_flows(FlowQuery(**filters)) == expected, filters


@pytest.mark.slow
async def test_a_page_among_20000_flows_reads_only_its_own_flows(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory
) -> None:
    storage = await make_redis(max_connections=50)
    statuses = list(TaskStatus)
    flows = [
        make_flow(
            f"flow-{n:05}",
            flow_type=("Order", "Refund")[n % 2],
            status=statuses[n % len(statuses)],
            created_at=10_000.0 + n,
            worker_id=f"worker-{n % 40}",
            parent_flow_id=f"flow-{n // 100 * 100:05}" if n % 100 else None,
        )
        for n in range(20_000)
    ]
    for start in range(0, len(flows), 1_000):
        await asyncio.gather(*(storage.create_flow(flow) for flow in flows[start : start + 1_000]))
    newest_first = flows[::-1]

    async def listed(**filters: Any) -> tuple[list[str], int]:
        """The ids a page lists, and how many commands its script ran on the prefix's keys."""
        async with admin.monitor() as monitor:
            page = await storage.list_flows(FlowQuery(limit=50, **filters))
            await admin.echo("listed")  # marks the end of the page's commands
            commands = 0
            while "listed" not in (command := await monitor.next_command())["command"]:
                commands += command["client_type"] == "lua" and storage.prefix in command["command"]
        return [flow.flow_id for flow in page], commands

    cursor = FlowCursor.after(newest_first[1_234])
    single_filters: list[tuple[dict[str, Any], Callable[[ScheduledFlow], bool]]] = [
        ({}, lambda flow: True),
        ({"status": TaskStatus.FAILED}, lambda flow: flow.status is TaskStatus.FAILED),
        ({"flow_type": "Refund"}, lambda flow: flow.flow_type == "Refund"),
        ({"worker_id": "worker-7"}, lambda flow: flow.worker_id == "worker-7"),
        ({"parent_flow_id": "flow-12300"}, lambda flow: flow.parent_flow_id == "flow-12300"),
        (
            {"status": TaskStatus.FAILED, "flow_type": "Order", "after": cursor},
            lambda flow: (
                flow.status is TaskStatus.FAILED
                and flow.flow_type == "Order"
                and (flow.created_at, flow.flow_id) < (cursor.created_at, cursor.flow_id)
            ),
        ),
        (
            {"created_after": 12_000.0, "created_before": 15_000.0, "offset": 500},
            lambda flow: 12_000.0 <= flow.created_at < 15_000.0,
        ),
    ]
    for filters, matches in single_filters:
        ids, commands = await listed(**filters)
        wanted = [flow.flow_id for flow in newest_first if matches(flow)]
        offset = filters.get("offset", 0)
        assert ids == wanted[offset : offset + 50], filters
        assert len(ids) == 50
        assert commands <= 60, (filters, commands)  # a few to find the range, one per flow

    # Combined filters walk the smallest index (worker-7's 500 flows), not all 20,000.
    ids, commands = await listed(worker_id="worker-7", status=[TaskStatus.RUNNING])
    wanted = [
        flow.flow_id
        for flow in newest_first
        if flow.worker_id == "worker-7" and flow.status is TaskStatus.RUNNING
    ]
    assert ids == wanted[:50]
    assert len(ids) == 50
    assert commands <= 2 * 500 + 60
