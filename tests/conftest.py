"""Fixtures shared by the whole suite: one connected storage per backend, closed afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pyergon.storage._sql.dialect import quote_identifier
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.postgres import DEFAULT_DSN, PostgresExecutionLog
from pyergon.storage.redis import RedisExecutionLog

# The suite's Redis and PostgreSQL servers are its own: it accepts unsigned pickle on them by
# name, as a deployment must (tests of that refusal unset it). Worker processes inherit it.
os.environ["PYERGON_UNSIGNED_PICKLE"] = "1"
os.environ.pop("PYERGON_SECRET_KEY", None)


async def _memory(_tmp_path: Path) -> ExecutionLog:
    return InMemoryExecutionLog()


async def _sqlite_file(tmp_path: Path) -> ExecutionLog:
    from pyergon.storage.sqlite import SqliteExecutionLog

    storage = SqliteExecutionLog(tmp_path / "pyergon.db")
    await storage.connect()
    return storage


async def _sqlite_memory(_tmp_path: Path) -> ExecutionLog:
    from pyergon.storage.sqlite import SqliteExecutionLog

    return await SqliteExecutionLog.in_memory()


POSTGRES_DSN = os.environ.get("PYERGON_POSTGRES_DSN", DEFAULT_DSN)
_postgres_unreachable: list[str] = []  # the reason, once a probe failed


async def require_postgres() -> str:
    """Return the test server's DSN; skip (or, under PYERGON_REQUIRE_SERVICES, fail) without it."""
    import asyncpg

    if not _postgres_unreachable:
        try:
            connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            _postgres_unreachable.append(f"{type(error).__name__}: {error}")
        else:
            await connection.close()
            _postgres_unreachable.append("")
    if _postgres_unreachable[0]:
        message = (
            f"PostgreSQL not reachable at {POSTGRES_DSN} ({_postgres_unreachable[0]}): start it "
            "with `pg_ctlcluster 15 main start` or set PYERGON_POSTGRES_DSN"
        )
        if os.environ.get("PYERGON_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_DSN


@pytest.fixture
async def postgres_dsn() -> str:
    """The test server's DSN; skips the test (or fails it under PYERGON_REQUIRE_SERVICES)."""
    return await require_postgres()


async def drop_schema(schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")
    finally:
        await connection.close()


class _ThrowawayPostgres(PostgresExecutionLog):
    """A backend in a schema of its own, dropped when the test closes it."""

    async def close(self) -> None:
        await super().close()
        await drop_schema(self.schema)


async def _postgres(_tmp_path: Path) -> ExecutionLog:
    dsn = await require_postgres()
    storage = _ThrowawayPostgres(dsn, schema=f"pyergon_test_{uuid.uuid4().hex[:12]}")
    await storage.connect()
    return storage


REDIS_URL = os.environ.get("PYERGON_REDIS_URL", "redis://127.0.0.1:6379/0")
_redis_unreachable: list[str] = []  # the reason, once a probe failed


async def require_redis() -> str:
    """Return the test server's URL; skip (or, under PYERGON_REQUIRE_SERVICES, fail) without it."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    if not _redis_unreachable:
        client = Redis.from_url(REDIS_URL, socket_connect_timeout=5)
        try:
            await client.ping()
        except (OSError, RedisError) as error:
            _redis_unreachable.append(f"{type(error).__name__}: {error}")
        else:
            _redis_unreachable.append("")
        finally:
            await client.aclose()
    if _redis_unreachable[0]:
        message = (
            f"Redis not reachable at {REDIS_URL} ({_redis_unreachable[0]}): start it with "
            "`redis-server --save '' --daemonize yes` or set PYERGON_REDIS_URL"
        )
        if os.environ.get("PYERGON_REQUIRE_SERVICES"):
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


async def drop_redis_keys(prefix: str) -> None:
    """Delete every key under ``prefix`` with SCAN + UNLINK; never FLUSHDB on a shared server."""
    from redis.asyncio import Redis

    escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in prefix)
    pattern = f"{{{escaped}}}:*"
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1_000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


class _ThrowawayRedis(RedisExecutionLog):
    """A backend under a key prefix of its own, whose keys are deleted when the test closes it."""

    async def close(self) -> None:
        await super().close()
        await drop_redis_keys(self.prefix)


async def _redis(_tmp_path: Path) -> ExecutionLog:
    url = await require_redis()
    storage = _ThrowawayRedis(url, prefix=f"pyergon-test-{uuid.uuid4().hex[:12]}")
    await storage.connect()
    return storage


@pytest.fixture
async def redis_url() -> str:
    """The test Redis server's URL; skips (or fails) the test without a server."""
    return await require_redis()


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[Callable[..., str]]:
    """Hand out key prefixes on the test Redis, fresh or ``suffix``-ed; drop their keys after."""
    prefixes: list[str] = []

    def new_prefix(suffix: str = "") -> str:
        """A fresh prefix, or ``suffix`` appended to the last one handed out."""
        base = prefixes[-1] if suffix else f"pyergon-test-{uuid.uuid4().hex[:12]}"
        prefixes.append(base + suffix)
        return prefixes[-1]

    yield new_prefix
    for prefix in prefixes:
        await drop_redis_keys(prefix)


BACKENDS: dict[str, Callable[[Path], Awaitable[ExecutionLog]]] = {
    "memory": _memory,
    "postgres": _postgres,
    "redis": _redis,
    "sqlite-file": _sqlite_file,
    "sqlite-memory": _sqlite_memory,
}
"""Every backend the storage-agnostic tests run on; Redis and PostgreSQL join here."""


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExecutionLog]:
    """A connected, empty storage backend of each kind."""
    backend = await BACKENDS[request.param](tmp_path)
    try:
        yield backend
    finally:
        await backend.close()
