"""The PostgreSQL backend when the server goes away: terminated connections, an unreachable host."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pyergon.errors import StorageError
from pyergon.storage.postgres import PostgresExecutionLog

from .conftest import FlowFactory
from .test_postgres import Backends, wait_until

T = TypeVar("T")


@pytest.fixture
async def backends(postgres_dsn: str) -> AsyncIterator[Backends]:
    async with Backends(postgres_dsn) as made:
        yield made


async def terminate_backends(admin: asyncpg.Connection, application_name: str) -> None:
    """Kill every server process of a backend, as a failover or an admin would, and wait."""
    # Two statements: in one WHERE clause the server may call pg_terminate_backend first.
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    pids = [row["pid"] for row in rows]
    assert pids
    await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)

    async def all_gone() -> bool:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
        )
        return bool(left == 0)

    await wait_until(all_gone, f"the {len(pids)} backends of {application_name} are gone")


async def eventually(operation: Callable[[], Awaitable[T]], attempts: int) -> T:
    """Run ``operation`` until it succeeds, allowing ``attempts - 1`` storage errors."""
    for _ in range(attempts - 1):
        try:
            return await operation()
        except StorageError as error:
            assert "postgresql://" in str(error)
    return await operation()


async def test_the_backend_recovers_after_its_connections_are_terminated(
    backends: Backends, make_flow: FlowFactory
) -> None:
    storage = await backends.make(max_size=3)
    elsewhere = await backends.make(storage.schema)
    await storage.create_flow(make_flow())
    await asyncio.gather(*(storage.get_flow("flow-1") for _ in range(3)))  # open the whole pool

    await terminate_backends(await backends.admin(), f"pyergon-{storage.schema}")

    # Each pooled connection may fail once, when it is used before its loss was noticed.
    assert await eventually(lambda: storage.get_flow("flow-1"), attempts=4) == make_flow()
    # The lost listener wakes its waiters, is opened again on the next wait, and hears notices.
    assert await storage.wait_for_work(timeout=5) is True
    while await storage.wait_for_work(timeout=0.05):
        pass
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
    await elsewhere.create_flow(make_flow("after-the-failover"))
    assert await waiter is True


class TcpProxy:
    """Forwards a local port to the server; ``stop()`` makes the server unreachable."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None or not self._server.is_serving():
            return
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.target_host, self.target_port
        )
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65_536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}


async def test_a_port_where_another_server_listens_fails_within_the_connect_timeout(
    redis_url: str,
) -> None:
    # Redis reads asyncpg's first message as half a command and waits for the rest: without a
    # connect timeout of its own, asyncpg would wait 60 s.
    redis = urlsplit(redis_url)
    where = f"{redis.hostname}:{redis.port or 6379}"
    storage = PostgresExecutionLog.from_url(f"postgresql://postgres@{where}/test?connect_timeout=1")

    with pytest.raises(StorageError) as raised:
        async with asyncio.timeout(30):  # the test's own bound, far above the 1 s asked for
            await storage.connect()

    message = str(raised.value)
    assert f"{where} did not answer as a PostgreSQL server within 1 s" in message
    assert "connect_timeout" in message and "\n" not in message
    await storage.close()  # nothing was opened: nothing to close


def test_the_connect_timeout_defaults_to_ten_seconds_at_most() -> None:
    storage = PostgresExecutionLog.from_url("postgresql://postgres@127.0.0.1:5432/test")
    assert 0 < storage.connect_timeout <= 10


async def test_an_unreachable_server_raises_and_the_same_object_works_once_it_is_back(
    postgres_dsn: str, backends: Backends, make_flow: FlowFactory
) -> None:
    server = urlsplit(postgres_dsn)
    proxy = TcpProxy(server.hostname or "127.0.0.1", server.port or 5432)
    await proxy.start()
    await proxy.stop()  # the port is known, and nothing listens on it
    password = server.password or "not-shown"
    user = f"{server.username or 'postgres'}:{password}"
    dsn = urlunsplit(server._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))
    storage = PostgresExecutionLog(dsn, schema=backends.new_schema())
    try:
        with pytest.raises(StorageError, match=r"could not connect.*server is running") as raised:
            await storage.connect()
        assert password not in str(raised.value)

        await proxy.start()
        await storage.connect()
        await storage.create_flow(make_flow())
        await proxy.stop()

        with pytest.raises(StorageError, match=r"127\.0\.0\.1.*server is running") as raised:
            await eventually(lambda: storage.get_flow("flow-1"), attempts=4)
        assert password not in str(raised.value)
        with pytest.raises(StorageError, match="listen for work"):  # once the loss is noticed
            for _ in range(2):
                assert await storage.wait_for_work(timeout=5) is True  # the listener was lost

        await proxy.start()

        assert await eventually(lambda: storage.get_flow("flow-1"), attempts=4) == make_flow()
        assert await storage.wait_for_work(timeout=5) is True  # notices may have been missed
    finally:
        await storage.close()
        await proxy.stop()
