"""What only the Redis backend has: its lifecycle, prefixes, pool, pub/sub and reconnects.

The contract every backend shares is in ``pyergon.testing``; the layout and its migrations are
in ``test_redis_layout.py``, the scripts' guards and queue in ``test_redis_apply.py``. These
tests need a real server (``redis_url`` skips them without one, or fails them under
``PYERGON_REQUIRE_SERVICES``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from pyergon import Scheduler, Worker, await_external_signal, flow, flow_type, step
from pyergon.core import ClaimRequest
from pyergon.core.changes import Change, FlowWrite
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.errors import (
    CorruptStorageError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
)
from pyergon.executor import worker as worker_module
from pyergon.storage import _flows as flows
from pyergon.storage import open_storage
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.redis import RedisExecutionLog
from pyergon.testing import make_worker
from tests.waiting import flow_reaches

from .conftest import FlowFactory, InvocationFactory, SignalFactory

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


async def claim_one(storage: RedisExecutionLog, worker: str, now: float) -> str | None:
    """Claim one ``Order`` flow; return its id."""
    runs = await storage.claim(ClaimRequest(worker, ["Order"], limit=1, lease_seconds=30, now=now))
    return runs[0].flow.flow_id if runs else None


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
        await storage.claim(
            ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=30, now=1_000.0)
        )
    with pytest.raises(StorageClosedError):
        await storage.apply(Change(writes=(FlowWrite("flow-1"),)))
    with pytest.raises(StorageClosedError):
        await storage.wait_for_work(timeout=0.01)

    async with storage:
        assert await storage.get_flow("flow-1") is None


async def test_an_unreachable_server_fails_connect_without_showing_the_password() -> None:
    storage = RedisExecutionLog("redis://:hunter2@127.0.0.1:1/0")

    with pytest.raises(StorageError, match="cannot be reached") as raised:
        await storage.connect()

    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1:1" in str(raised.value)
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


@pytest.mark.parametrize(
    ("config", "warned"),
    [
        ({"save": "", "appendonly": "no", "maxmemory-policy": "noeviction"}, True),
        ({"save": "3600 1", "appendonly": "no", "maxmemory-policy": "noeviction"}, False),
        ({"save": "", "appendonly": "yes", "maxmemory-policy": "noeviction"}, False),
        (ResponseError("unknown command 'CONFIG'"), False),  # managed servers may refuse it
    ],
    ids=["in memory only", "snapshots", "append-only file", "CONFIG refused"],
)
async def test_a_server_that_does_not_persist_is_warned_about(
    make_redis: MakeRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, str] | ResponseError,
    warned: bool,
) -> None:
    async def config_get(client: Redis, pattern: str) -> dict[str, str]:
        if isinstance(config, ResponseError):
            raise config
        return {pattern: config[pattern]}

    monkeypatch.setattr(Redis, "config_get", config_get)

    with caplog.at_level(logging.WARNING, logger="pyergon.storage.redis"):
        storage = await make_redis()

    warnings = [record.getMessage() for record in caplog.records if "appendonly" in record.message]
    assert len(warnings) == warned
    if warned:
        assert storage.prefix in warnings[0]
    assert await storage.get_flow("flow-1") is None  # connected either way


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
    make_signal: SignalFactory,
    suffix: str,
) -> None:
    first = await make_redis()
    second = await make_redis(redis_prefix(suffix) if suffix else None)
    for storage in (first, second):
        await storage.wait_for_work(timeout=0)  # start both with no wake-up pending
    await first.create_flow(make_flow())
    await first.create_flow(make_flow("flow:x", status=TaskStatus.SUSPENDED, wake_at=5.0))
    await first.apply(Change(records=(make_invocation(1),), signals=(make_signal(),), notify=True))

    assert await second.get_flow("flow-1") is None
    assert await second.list_flows() == []
    assert await second.count_flows() == dict.fromkeys(TaskStatus, 0)
    assert await second.next_wake_at() is None
    assert await second.load_invocations("flow-1") == []
    assert await second.list_signals("flow-1") == []
    assert await claim_one(second, "worker-b", now=9.0) is None
    assert await second.wait_for_work(timeout=0.2) is False

    await second.reset()
    assert len(await first.list_flows()) == 2


async def test_deleting_every_flow_and_worker_leaves_only_the_schema_version(
    make_redis: MakeRedis,
    admin: Redis,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, wake_at=50.0))
    await storage.create_flow(make_flow("child", parent_flow_id="parent", parent_sequence="1"))
    await storage.create_flow(make_flow("other", flow_type="Refund"))
    await storage.apply(
        Change(
            records=(make_invocation(1, flow_id="parent"),),
            signals=(make_signal(flow_id="parent"), make_signal(flow_id="never-created")),
        )
    )
    runs = await storage.claim(
        ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=30, now=100.0)
    )
    held = flows.HeldFlow(storage, runs[0].flow, runs[0].flow.lease_token)
    await held.leave([], RunEnd(TaskStatus.COMPLETE))

    await storage.put_worker(make_worker(), replacing=None)
    await storage.delete_flow("other")
    await storage.reset()

    assert await keys_of(admin, storage.prefix) == {f"{{{storage.prefix}}}:schema_version"}


# -- connections -----------------------------------------------------------------------------


async def test_the_pool_never_opens_more_than_max_connections(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory
) -> None:
    storage = await make_redis(max_connections=2)

    await asyncio.gather(*(storage.create_flow(make_flow(f"flow-{n}")) for n in range(100)))
    stored = await asyncio.gather(*(storage.get_flow(f"flow-{n}") for n in range(100)))

    assert all(flow is not None for flow in stored)
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

    stored = await asyncio.gather(*(flows.save_records(storage, [record]) for record in records))
    later = await asyncio.gather(
        *(flows.save_records(storage, [record.replace(result=b"late")]) for record in records)
    )
    logs = await asyncio.gather(*(storage.load_invocations(f"flow-{n}") for n in range(5)))

    assert [applied.records for applied in stored] == [[record] for record in records]
    assert all(applied.record_conflict for applied in later)
    assert [applied.records for applied in later] == [[record] for record in records]
    assert logs == [
        [record for record in records if record.flow_id == f"flow-{n}"] for n in range(5)
    ]


async def test_a_script_redis_no_longer_has_is_loaded_again(
    make_redis: MakeRedis, make_invocation: InvocationFactory
) -> None:
    storage = await make_redis()
    # What a restarted redis-server answers for every script, without flushing the shared server.
    storage._scripts["apply"].sha = "0" * 40
    records = [make_invocation(n, status=InvocationStatus.COMPLETE) for n in range(20)]

    applied = await asyncio.gather(*(flows.save_records(storage, [r]) for r in records))

    assert [result.records for result in applied] == [[record] for record in records]
    assert await storage.load_invocations("flow-1") == records


async def test_commands_carry_on_after_their_connections_are_killed(
    make_redis: MakeRedis, admin: Redis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()
    await storage.create_flow(make_flow())

    assert await kill_connections(admin, f"pyergon-{storage.prefix}", "normal") >= 1

    assert await storage.get_flow("flow-1") == make_flow()
    assert await claim_one(storage, "worker-a", now=1_000.0) == "flow-1"


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
    with pytest.raises(StorageError, match="cannot be reached"):
        await storage.apply(Change(writes=(FlowWrite("flow-1"),)))
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
    assert await claim_one(storage, "worker-a", now=loop.time()) == "remote-1"


@pytest.mark.parametrize("notify", [True, False])
async def test_a_change_wakes_workers_on_other_connections_only_when_it_says_so(
    make_redis: MakeRedis, make_flow: FlowFactory, notify: bool
) -> None:
    storage = await make_redis()
    worker_side = await make_redis(storage.prefix)
    await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED))
    assert await storage.wait_for_work(timeout=0) is False  # a suspended flow is no work
    assert await worker_side.wait_for_work(timeout=0.1) is False

    await storage.apply(Change(writes=(FlowWrite("flow-1", {"wake_at": 5.0}),), notify=notify))

    assert await storage.wait_for_work(timeout=0) is notify  # this process at once
    assert await worker_side.wait_for_work(timeout=10 if notify else 0.2) is notify


async def test_a_cancel_request_wakes_workers_listening_on_another_connection(
    make_redis: MakeRedis, make_flow: FlowFactory
) -> None:
    storage = await make_redis()
    worker_side = await make_redis(storage.prefix)
    await storage.create_flow(make_flow())
    assert await claim_one(worker_side, "worker-a", now=1_000.0) == "flow-1"
    assert await worker_side.wait_for_work(timeout=10) is True  # the creation's wake-up
    waiter = asyncio.create_task(worker_side.wait_for_work(timeout=10))

    requested = await flows.request_cancel(storage, "flow-1")

    assert requested is not None
    assert requested.cancel_requested
    assert await waiter is True
    assert await worker_side.cancel_requests(["flow-1", "flow-2"]) == {"flow-1"}


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
    worker.register(Refund)
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
