"""How many bytes a benchmark's storage takes.

SQLite: the file after a WAL checkpoint, plus what is left in the WAL. Redis: ``MEMORY USAGE``
(exact, ``SAMPLES 0``) summed over every key of the prefix. PostgreSQL: ``pg_total_relation_size``
(table, indexes, TOAST) summed over the tables of the schema.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

from benchmarks.backends import POSTGRES_URL, REDIS_URL, FreshStorage

__all__ = ["storage_bytes"]


async def storage_bytes(fresh: FreshStorage) -> int:
    """The bytes ``fresh``'s data takes now."""
    if fresh.backend == "sqlite":
        return await asyncio.to_thread(_sqlite_bytes, fresh.location)
    if fresh.backend == "redis":
        return await _redis_bytes(fresh.location)
    if fresh.backend == "postgres":
        return await _postgres_bytes(fresh.location)
    raise ValueError(f"no storage size for backend {fresh.backend!r}")


def _sqlite_bytes(path: str) -> int:
    connection = sqlite3.connect(path, timeout=30)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    wal = f"{path}-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


async def _redis_bytes(prefix: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}:*", count=1_000)]
        total = 0
        for start in range(0, len(keys), 1_000):
            pipeline = client.pipeline(transaction=False)
            for key in keys[start : start + 1_000]:
                pipeline.memory_usage(key, samples=0)
            total += sum(size or 0 for size in await pipeline.execute())
        return total
    finally:
        await client.aclose()


async def _postgres_bytes(schema: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        total = await connection.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        )
        return int(total)
    finally:
        await connection.close()
