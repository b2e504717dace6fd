"""What only the Redis backend has: prefixes, its pool, pub/sub, reconnects and its encodings.

The contract every backend shares is in ``test_contract*.py``; these tests need a real server
(``redis_url`` skips them without one, or fails them under ``PYERGON_REQUIRE_SERVICES``).
"""

from __future__ import annotations

import asyncio
import importlib
import math
import random
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from pyergon import Scheduler, Worker, await_external_signal, flow, flow_type, step
from pyergon.core.records import FlowCursor, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import (
    CorruptStorageError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
)
from pyergon.executor import worker as worker_module
from pyergon.storage import open_storage
from pyergon.storage import redis as redis_module
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.redis import RedisExecutionLog
from tests.waiting import flow_reaches

from .conftest import FlowFactory, InvocationFactory

MakeRedis = Callable[..., Awaitable[RedisExecutionLog]]


@pytest.fixture
async def make_redis(redis_url: str, redis_prefix: Callable[..., str]) -> AsyncIterator[MakeRedis]:
    """Open backends on the test server (a fresh prefix unless given); close them after."""
    opened: list[RedisExecutionLog] = []

    async def make(
        prefix: str | None = None, *, url: str | None = None, **options: Any
    ) -> RedisExecutionLog:
        storage = RedisExecutionLog(url or redis_url, prefix=prefix or redis_prefix(), **options)
        await storage.connect()
        opened.append(storage)
        return storage

    yield make
    for storage in opened:
        await storage.close()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client for looking at (and interfering with) the server."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def keys_of(admin: Redis, prefix: str) -> set[str]:
    return {key.decode() async for key in admin.scan_iter(match=f"{{{prefix}}}:*")}


async def kill_connections(admin: Redis, name: str, client_type: str) -> int:
    """``CLIENT KILL TYPE client_type`` restricted to connections named ``name``.

    Killing only our own connections keeps other tests using the shared server undisturbed.
    """
    ids = [client["id"] for client in await admin.client_list() if client["name"] == name]
    return sum([await admin.client_kill_filter(_id=id_, _type=client_type) for id_ in ids])


# -- lifecycle -------------------------------------------------------------------------------


def test_importing_without_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "pyergon.storage.redis")

    with pytest.raises(ImportError, match=re.escape('pip install "pyergon[redis]"')):
        importlib.import_module("pyergon.storage.redis")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix": ""}, "prefix"),
        ({"prefix": "app{1}"}, "prefix"),
        ({"max_connections": 0}, "max_connections"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisExecutionLog(**options)


async def test_use_before_connect_and_after_close_is_refused(
    redis_url: str, redis_prefix: Callable[..., str]
) -> None:
    storage = RedisExecutionLog(redis_url, prefix=redis_prefix())
    with pytest.raises(StorageClosedError, match="not open"):
        await storage.get_flow("flow-1")

    await storage.connect()
    await storage.close()
    await storage.close()
    with pytest.raises(StorageClosedError):
        await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_000.0)
    with pytest.raises(StorageClosedError):
        await storage.wait_for_work(timeout=0.01)

    async with storage:
        assert await storage.get_flow("flow-1") is None


async def test_an_unreachable_server_fails_connect_without_showing_the_password() -> None:
    storage = RedisExecutionLog("redis://:hunter2@127.0.0.1:1/0")

    with pytest.raises(StorageError, match="cannot be reached") as raised:
        await storage.connect()

    assert "hunter2" not in str(raised.value)
    with pytest.raises(StorageClosedError):
        await storage.get_flow("flow-1")


async def test_connect_records_the_schema_version(make_redis: MakeRedis, admin: Redis) -> None:
    storage = await make_redis()

    assert await admin.get(f"{{{storage.prefix}}}:schema_version") == str(SCHEMA_VERSION).encode()


@pytest.mark.parametrize(
    ("stored", "error"),
    [(str(SCHEMA_VERSION + 1), SchemaVersionError), ("not-a-version", CorruptStorageError)],
)
async def test_connect_refuses_a_schema_it_cannot_read(
    redis_url: str,
    redis_prefix: Callable[..., str],
    admin: Redis,
    stored: str,
    error: type[StorageError],
) -> None:
    prefix = redis_prefix()
    await admin.set(f"{{{prefix}}}:schema_version", stored)
    storage = RedisExecutionLog(redis_url, prefix=prefix)

    with pytest.raises(error, match="changed nothing"):
        await storage.connect()

    assert await admin.get(f"{{{prefix}}}:schema_version") == stored.encode()
    with pytest.raises(StorageClosedError):
        await storage.get_flow("flow-1")


async def test_open_storage_takes_the_prefix_from_the_url(
    redis_url: str, redis_prefix: Callable[..., str], make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    prefix = redis_prefix()
    storage = await open_storage(f"{redis_url}?socket_timeout=5&prefix={prefix}")
    try:
        assert isinstance(storage, RedisExecutionLog)
        assert storage.prefix == prefix
        await storage.create_flow(make_flow())
    finally:
        await storage.close()

    assert await (await make_redis(prefix)).get_flow("flow-1") == make_flow()


async def write_v1_flow(admin: Redis, prefix: str, flow: ScheduledFlow) -> None:
    """Store ``flow`` as schema version 1 did: no ``worker_id``, worker or children indexes.

    Enough of version 1 for the migration tests; the error fields are left out.
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
    async with admin.pipeline(transaction=True) as pipe:
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
async def test_connect_migrates_a_version_1_prefix(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin: Redis,
    make_flow: FlowFactory,
    monkeypatch: pytest.MonkeyPatch,
    connecting: int,
) -> None:
    monkeypatch.setattr(redis_module, "_MIGRATION_BATCH", 10)  # many batches, interleaved
    prefix = redis_prefix()
    await admin.set(f"{{{prefix}}}:schema_version", "1")
    await write_v1_flow(
        admin, prefix, make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=50.0)
    )
    await write_v1_flow(admin, prefix, make_flow("orphan", created_at=5_000.0))
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
        await write_v1_flow(admin, prefix, child)
        children.append(child)

    opened = await asyncio.gather(*(make_redis(prefix) for _ in range(connecting)))

    storage = opened[0]
    assert await admin.get(f"{{{prefix}}}:schema_version") == b"2"
    newest_first = [child.flow_id for child in reversed(children)]
    assert [flow.flow_id for flow in await storage.list_flows(parent_flow_id="parent")] == (
        newest_first[:100]
    )
    by_worker_a = await storage.list_flows(worker_id="worker-a", limit=1_000)
    assert [flow.flow_id for flow in by_worker_a] == [
        child.flow_id for child in reversed(children) if child.lease_owner == "worker-a"
    ]
    assert {flow.worker_id for flow in by_worker_a} == {"worker-a"}
    completed = await storage.get_flow("child-001")
    assert completed == children[1]  # no worker known, no cancel requested
    counts = await storage.count_flows()
    assert counts[TaskStatus.RUNNING] == 67
    assert counts[TaskStatus.COMPLETE] == 133
    # The migrated prefix behaves as version 2: claims are recorded, cancels reach the parent.
    claimed = await storage.claim_flow("worker-c", ["Order"], lease_seconds=30, now=100.0)
    assert claimed is not None
    assert [flow.flow_id for flow in await storage.list_flows(worker_id="worker-c")] == ["orphan"]
    cancelled = await storage.request_cancel("child-000")
    assert cancelled is not None
    assert cancelled.cancel_requested


@pytest.mark.parametrize(
    ("query", "message"), [("prefix=a%7Bb%7D", "without braces"), ("bogus=1", "bogus")]
)
async def test_open_storage_explains_a_redis_url_it_cannot_use(
    redis_url: str, query: str, message: str
) -> None:
    with pytest.raises(StorageError, match=message):
        await open_storage(f"{redis_url}?{query}")


# -- prefixes and keys -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ":flow"], ids=["unrelated", "nested"])
async def test_prefixes_do_not_see_each_other(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    suffix: str,
) -> None:
    first = await make_redis()
    second = await make_redis(redis_prefix(suffix) if suffix else None)
    for storage in (first, second):
        await storage.wait_for_work(timeout=0)  # start both with no wake-up pending
    await first.create_flow(make_flow())
    await first.create_flow(make_flow("flow:x", status=TaskStatus.SUSPENDED, wake_at=5.0))
    await first.record_invocation(make_invocation(1))
    await first.store_signal(SignalRecord("flow-1", "approved", b"yes", 1.0))

    assert await second.get_flow("flow-1") is None
    assert await second.list_flows() == []
    assert await second.next_wake_at() is None
    assert await second.load_invocations("flow-1") == []
    assert await second.get_signal("flow-1", "approved") is None
    assert await second.claim_flow("worker-b", ["Order"], lease_seconds=30, now=9.0) is None
    assert await second.wait_for_work(timeout=0.2) is False

    await second.reset()
    assert len(await first.list_flows()) == 2


async def test_deleting_every_flow_leaves_only_the_schema_version(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=50.0))
    await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="1"))
    await storage.create_flow(make_flow("other", flow_type="Refund"))
    await storage.record_invocation(make_invocation(1, flow_id="parent"))
    await storage.store_signal(SignalRecord("parent", "approved", b"yes", 1.0))
    await storage.store_signal(SignalRecord("never-created", "approved", b"yes", 1.0))
    claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=100.0)
    assert claimed is not None
    assert claimed.lease_token is not None
    await storage.release_flow(claimed.flow_id, claimed.lease_token, status=TaskStatus.COMPLETE)

    await storage.delete_flow("other")
    await storage.reset()

    assert await keys_of(admin, storage.prefix) == {f"{{{storage.prefix}}}:schema_version"}


# -- connections -----------------------------------------------------------------------------


async def test_the_pool_never_opens_more_than_max_connections(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory
) -> None:
    storage = await make_redis(max_connections=2)

    await asyncio.gather(*(storage.create_flow(make_flow(f"flow-{n}")) for n in range(100)))
    flows = await asyncio.gather(*(storage.get_flow(f"flow-{n}") for n in range(100)))

    assert all(flow is not None for flow in flows)
    names = [client["name"] for client in await admin.client_list()]
    assert names.count(f"pyergon-{storage.prefix}") == 2
    assert names.count(f"pyergon-{storage.prefix}-listener") == 1


async def test_concurrent_records_keep_first_writer_wins(
    make_redis: MakeRedis, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    records = [
        make_invocation(
            n, flow_id=f"flow-{n % 5}", status=InvocationStatus.COMPLETE, result=b"%d" % n
        )
        for n in range(100)
    ]

    stored = await asyncio.gather(*(storage.record_invocation(record) for record in records))
    later = await asyncio.gather(
        *(storage.record_invocation(record.replace(result=b"late")) for record in records)
    )
    logs = await asyncio.gather(*(storage.load_invocations(f"flow-{n}") for n in range(5)))

    assert stored == records
    assert later == records  # the first writer won each position
    assert logs == [
        [record for record in records if record.flow_id == f"flow-{n}"] for n in range(5)
    ]


async def test_a_script_redis_no_longer_has_is_loaded_again(
    make_redis: MakeRedis, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    # What a restarted redis-server answers for every script, without flushing the shared server.
    storage._scripts["record_invocation"].sha = "0" * 40
    records = [make_invocation(n, status=InvocationStatus.COMPLETE) for n in range(20)]

    assert await asyncio.gather(*(storage.record_invocation(r) for r in records)) == records
    assert await storage.load_invocations("flow-1") == records


async def test_commands_carry_on_after_their_connections_are_killed(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow())

    assert await kill_connections(admin, f"pyergon-{storage.prefix}", "normal") >= 1

    assert await storage.get_flow("flow-1") == make_flow()
    assert await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_000.0)


async def test_the_listener_subscribes_again_after_its_connection_is_killed(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()

    assert await kill_connections(admin, f"pyergon-{storage.prefix}-listener", "pubsub") == 1

    # Wake-ups published while it was away are lost, so being back is itself a wake-up.
    assert await storage.wait_for_work(timeout=10) is True
    other = await make_redis(storage.prefix)
    await other.create_flow(make_flow())
    assert await storage.wait_for_work(timeout=10) is True


class _Relay:
    """A TCP relay to Redis that a test can cut and restore, as if the server went away."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._url = url
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The Redis URL pointing at the relay."""
        return urlunsplit(urlsplit(self._url)._replace(netloc=f"127.0.0.1:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            for stream in (writer, upstream_writer):
                stream.close()
            self._connections.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
        writer.close()


async def test_methods_raise_while_redis_is_away_and_work_once_it_is_back(
    redis_url: str, make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    relay = _Relay(redis_url)
    await relay.start()
    storage = await make_redis(url=relay.url)
    await storage.create_flow(make_flow())
    assert await storage.wait_for_work(timeout=0) is True

    await relay.cut()

    with pytest.raises(StorageError, match="cannot be reached"):
        await storage.get_flow("flow-1")
    assert await storage.wait_for_work(timeout=0.05) is False

    await relay.start()  # the same port again

    assert await storage.wait_for_work(timeout=10) is True  # the listener is back
    assert await storage.get_flow("flow-1") == make_flow()
    direct = await make_redis(storage.prefix)
    await direct.create_flow(make_flow("flow-2"))
    assert await storage.wait_for_work(timeout=10) is True
    await relay.cut()


# -- wake-ups across processes ---------------------------------------------------------------

_CREATE_FROM_ANOTHER_PROCESS = """
import asyncio, sys, time
from pyergon.core.records import ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.storage.redis import RedisExecutionLog

async def main(url, prefix):
    async with RedisExecutionLog(url, prefix=prefix) as storage:
        now = time.time()
        flow = ScheduledFlow("remote-1", "Order", b"", TaskStatus.PENDING, now, now)
        await storage.create_flow(flow)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.slow
async def test_work_stored_by_another_process_wakes_every_local_waiter(
    redis_url: str, make_redis: MakeRedis
) -> None:
    storage = await make_redis()
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiters = [asyncio.create_task(storage.wait_for_work(timeout=30)) for _ in range(2)]

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CREATE_FROM_ANOTHER_PROCESS, redis_url, storage.prefix
    )
    assert await process.wait() == 0

    assert await asyncio.gather(*waiters) == [True, True]
    assert loop.time() - started < 15  # woken, not timed out
    claimed = await storage.claim_flow("worker-a", ["Order"], lease_seconds=30, now=loop.time())
    assert claimed is not None
    assert claimed.flow_id == "remote-1"


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
        while flow := await storage.claim_flow(worker, ["Order"], lease_seconds=60, now=2_000.0):
            claimed.append(flow)
        return claimed

    results = await asyncio.gather(
        *(claim_all(first if n % 2 else second, f"worker-{n}") for n in range(20))
    )

    claims = [flow for claimed in results for flow in claimed]
    assert sorted(flow.flow_id for flow in claims) == flow_ids
    assert len({flow.lease_token for flow in claims}) == 50
    for claimed in claims:
        assert await first.get_flow(claimed.flow_id) == claimed


async def test_expired_leases_and_pending_flows_are_claimed_oldest_first(
    make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()
    for flow_id, created_at in [("c", 3.0), ("a", 1.0), ("b", 2.0)]:
        await storage.create_flow(make_flow(flow_id, created_at=created_at))
        assert await storage.claim_flow("dead-worker", ["Order"], lease_seconds=10, now=100.0)
    await storage.create_flow(make_flow("pending", created_at=2.5))
    await storage.create_flow(make_flow("a-due", status=TaskStatus.SUSPENDED, wake_at=50.0))
    await storage.create_flow(  # the same wake time: created_at decides before the id
        make_flow("z-due", status=TaskStatus.SUSPENDED, wake_at=50.0, created_at=0.5)
    )

    order = []
    while claimed := await storage.claim_flow("worker-b", ["Order"], lease_seconds=10, now=200.0):
        order.append(claimed.flow_id)

    assert order == ["a", "b", "pending", "c", "z-due", "a-due"]


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
    assert await storage.claim_flow("w", ["Order"], lease_seconds=1, now=before) is None
    assert await storage.claim_flow("w", ["Order"], lease_seconds=1, now=wake_at) is not None


# -- listing and cancelling ------------------------------------------------------------------


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

        expected = await memory.list_flows(**filters)
        assert await redis_storage.list_flows(**filters) == expected, filters


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
            page = await storage.list_flows(limit=50, **filters)
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


async def test_a_cancel_request_wakes_workers_listening_on_another_connection(
    make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()
    worker_side = await make_redis(storage.prefix)
    await storage.create_flow(make_flow())
    claimed = await worker_side.claim_flow("worker-a", ["Order"], lease_seconds=30, now=1_000.0)
    assert claimed is not None
    assert await worker_side.wait_for_work(timeout=10) is True  # the creation's wake-up
    waiter = asyncio.create_task(worker_side.wait_for_work(timeout=10))

    requested = await storage.request_cancel("flow-1")

    assert requested is not None
    assert requested.cancel_requested
    assert await waiter is True
    assert await worker_side.cancel_requests(["flow-1", "flow-2"]) == {"flow-1"}


# -- encodings -------------------------------------------------------------------------------


async def test_bytes_and_text_with_newlines_round_trip(
    make_redis: MakeRedis, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    error = StoredError("shop.Declined", "line 1\nline 2", "Traceback\n  ...\n", b"\n\x00pay\nload")
    record = make_invocation(
        1, status=InvocationStatus.FAILED, name="naïve ✓\nstep", result=b"\nres\n\xff", error=error
    )
    signal = SignalRecord("flow-1", "approval\nnext", b"\nyes\n", 1.25)

    assert await storage.record_invocation(record) == record
    await storage.store_signal(signal)

    assert await storage.load_invocations("flow-1") == [record]
    assert await storage.get_invocation("flow-1", 1) == record
    assert await storage.get_signal("flow-1", "approval\nnext") == signal


async def test_a_signal_with_a_non_ascii_name_wakes_the_flow_waiting_for_it(
    make_redis: MakeRedis, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    waiting = make_invocation(
        1, kind=OperationKind.SIGNAL, name="genehmigt ✓", status=InvocationStatus.WAITING_FOR_SIGNAL
    )
    await storage.record_invocation(waiting)

    assert await storage.store_signal(SignalRecord("flow-1", "genehmigt ✓", b"ja", 1.0))

    woken = await storage.get_flow("flow-1")
    assert woken is not None
    assert woken.status is TaskStatus.PENDING


# -- workers ---------------------------------------------------------------------------------


@dataclass
@flow_type
class Refund:
    order: str

    @step
    async def prepare(self) -> str:
        return self.order.upper()

    @flow
    async def run(self) -> str:
        prepared = await self.prepare()
        return f"{prepared}:{await await_external_signal('decision')}"


async def test_a_worker_on_another_connection_is_woken_by_new_work_and_signals(
    make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "_IDLE_WAIT", 60.0)  # only a wake-up ends a wait in time
    scheduling = await make_redis()
    worker = Worker(await make_redis(scheduling.prefix), "worker-1")
    await worker.register(Refund)
    handle = await worker.start()
    try:
        scheduler = Scheduler(scheduling)
        flow_id = await scheduler.schedule(Refund("order-7"))
        await flow_reaches(scheduling, flow_id, TaskStatus.SUSPENDED)

        await scheduler.signal(flow_id, "decision", "approved")

        done = await flow_reaches(scheduling, flow_id, TaskStatus.COMPLETE)
    finally:
        await handle.shutdown()
    assert done.result is not None
