"""Throwaway storage for one benchmark run, removed afterwards.

SQLite gets a new file in a temporary directory, Redis a unique key prefix whose keys are
deleted, PostgreSQL a unique schema that is dropped. Server URLs come from
``PYERGON_BENCH_REDIS_URL`` and ``PYERGON_BENCH_POSTGRES_URL``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pyergon.storage import open_storage
from pyergon.storage.base import ExecutionLog

__all__ = ["BACKENDS", "FreshStorage", "fresh_storage"]

BACKENDS = ("memory", "sqlite", "redis", "postgres")

if not os.environ.get("PYERGON_SECRET_KEY"):
    # Unsigned pickle, chosen by name for the throwaway servers of a run (and inherited by the
    # worker processes), so the figures compare with earlier runs; set PYERGON_SECRET_KEY to
    # measure signed payloads instead.
    os.environ.setdefault("PYERGON_UNSIGNED_PICKLE", "1")

REDIS_URL = os.environ.get("PYERGON_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "PYERGON_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True, slots=True)
class FreshStorage:
    """A connected backend, the URL other processes open it with, and where its data is.

    ``location`` is the SQLite file's path, the Redis key prefix or the PostgreSQL schema
    (empty for memory).
    """

    backend: str
    url: str
    location: str
    storage: ExecutionLog


@contextlib.asynccontextmanager
async def fresh_storage(backend: str) -> AsyncIterator[FreshStorage]:
    """Open empty storage of kind ``backend``; close it and delete its data on exit."""
    with tempfile.TemporaryDirectory(prefix="pyergon-bench-") as directory:
        url, location, remove = _new_location(backend, Path(directory))
        try:
            storage = await open_storage(url)
            try:
                yield FreshStorage(backend, url, location, storage)
            finally:
                await storage.close()
        except BaseException:
            await _remove_quietly(remove)  # the first error is the one to report
            raise
        await remove()


def _new_location(backend: str, directory: Path) -> tuple[str, str, Callable[[], Awaitable[None]]]:
    name = uuid.uuid4().hex[:12]
    if backend == "memory":
        return "memory://", "", _nothing
    if backend == "sqlite":
        path = directory / "bench.db"
        return f"sqlite:///{path}", str(path), _nothing  # the directory goes on exit
    if backend == "redis":
        prefix = f"bench-{name}"
        url = _with_query(REDIS_URL, "prefix", prefix)
        return url, prefix, lambda: _drop_redis_keys(prefix)
    if backend == "postgres":
        schema = f"bench_{name}"
        url = _with_query(POSTGRES_URL, "schema", schema)
        return url, schema, lambda: _drop_schema(schema)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


async def _remove_quietly(remove: Callable[[], Awaitable[None]]) -> None:
    try:
        await remove()
    except Exception as error:
        print(f"could not remove the benchmark's storage: {error!r}", file=sys.stderr)


async def _nothing() -> None:
    return None


async def _drop_redis_keys(prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        # The prefix is ours and has no glob characters; keys look like "{prefix}:...".
        keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}:*", count=1_000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


async def _drop_schema(schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()
