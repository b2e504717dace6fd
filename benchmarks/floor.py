"""The ``machine_floor`` scenario: what one durable write costs here, without pyergon.

``none``: the interpreter's speed, the median over samples of one call of a small pure-Python
function and of one ``await asyncio.sleep(0)`` pass of the event loop. ``sqlite``: ``n``
transactions ``BEGIN IMMEDIATE; INSERT; COMMIT`` with the ``sqlite3`` module on a new file with
pyergon's settings (WAL, ``synchronous=NORMAL``). ``redis``: ``n`` sequential ``SET`` round trips
with ``redis.asyncio`` under a new key prefix. ``postgres``: ``n`` sequential single-row inserts,
each its own transaction, with asyncpg into a new schema. Each write is a latency sample.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.backends import POSTGRES_URL, REDIS_URL
from benchmarks.result import RunResult

__all__ = ["SAMPLES", "machine_floor"]

SAMPLES = 11
"""Samples of ``n`` calls (and of ``n`` loop passes) on ``none``; the median is reported."""
PAYLOAD = b"x" * 100
"""The value of each write, about a small step record."""


@dataclass(frozen=True, slots=True)
class _Record:
    flow_id: str
    step: int
    value: int


def _little_work(step: int) -> dict[str, object]:
    record = _Record("flow-1", step, step * 2)
    return {"flow_id": record.flow_id, "step": record.step, "value": record.value}


async def machine_floor(backend: str, n: int) -> RunResult:
    """The interpreter's speed (``none``) or ``n`` bare durable writes to ``backend``."""
    if backend == "none":
        return await _interpreter(n)
    if backend == "sqlite":
        return _sqlite(n)
    if backend == "redis":
        return await _redis(n)
    if backend == "postgres":
        return await _postgres(n)
    raise ValueError(f"no machine floor for backend {backend!r}")


def _writes(
    wall: float, samples: list[float], per_s: str, each_us: str, **facts: object
) -> RunResult:
    """A run of ``len(samples)`` writes: their rate and the mean microseconds per write."""
    rate = len(samples) / wall
    return RunResult(wall, latencies_ms=samples, extra={per_s: rate, each_us: 1e6 / rate} | facts)


async def _timed(n: int, write: Callable[[int], Awaitable[object]]) -> tuple[float, list[float]]:
    """Await ``write(i)`` for ``i`` in ``range(n)``, one after another: wall time, samples."""
    samples: list[float] = []
    started = time.perf_counter()
    for number in range(n):
        begun = time.perf_counter()
        await write(number)
        samples.append((time.perf_counter() - begun) * 1000)
    return time.perf_counter() - started, samples


async def _interpreter(n: int) -> RunResult:
    calls: list[float] = []
    passes: list[float] = []
    started = time.perf_counter()
    for sample in range(SAMPLES + 1):  # the first of each is a warm-up
        begun = time.perf_counter()
        for step in range(n):
            _little_work(step)
        between = time.perf_counter()
        for _ in range(n):
            await asyncio.sleep(0)
        if sample:
            calls.append((between - begun) / n * 1e6)
            passes.append((time.perf_counter() - between) / n * 1e6)
    return RunResult(
        time.perf_counter() - started,
        extra={
            "python_call_us": statistics.median(calls),
            "loop_pass_us": statistics.median(passes),
        },
    )


def _sqlite(n: int) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="pyergon-bench-") as directory:
        connection = sqlite3.connect(Path(directory) / "floor.db", isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("CREATE TABLE records (id TEXT PRIMARY KEY, data BLOB NOT NULL)")
            samples: list[float] = []
            started = time.perf_counter()
            for number in range(n):
                begun = time.perf_counter()
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "INSERT INTO records (id, data) VALUES (?, ?)", (f"flow-{number}", PAYLOAD)
                )
                connection.execute("COMMIT")
                samples.append((time.perf_counter() - begun) * 1000)
            wall = time.perf_counter() - started
        finally:
            connection.close()
    return _writes(
        wall, samples, "commits_per_s", "commit_us", sqlite_version=sqlite3.sqlite_version
    )


async def _redis(n: int) -> RunResult:
    from redis.asyncio import Redis

    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    keys = [f"{{{prefix}}}:floor:{number}" for number in range(n)]
    client = Redis.from_url(REDIS_URL)
    try:
        server, persistence = await client.info("server"), await client.info("persistence")
        wall, samples = await _timed(n, lambda number: client.set(keys[number], PAYLOAD))
    finally:
        try:
            for start in range(0, n, 1_000):
                await client.unlink(*keys[start : start + 1_000])
        finally:
            await client.aclose()
    return _writes(
        wall,
        samples,
        "round_trips_per_s",
        "round_trip_us",
        server_version=server["redis_version"],
        aof_enabled=bool(persistence["aof_enabled"]),
    )


async def _postgres(n: int) -> RunResult:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    table = f'"{schema}".records'
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        await connection.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, data bytea NOT NULL)")
        insert = f"INSERT INTO {table} (id, data) VALUES ($1, $2)"
        wall, samples = await _timed(
            n, lambda number: connection.execute(insert, f"flow-{number}", PAYLOAD)
        )
        version = await connection.fetchval("SHOW server_version")
        synchronous_commit = await connection.fetchval("SHOW synchronous_commit")
    finally:
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()
    return _writes(
        wall,
        samples,
        "commits_per_s",
        "commit_us",
        server_version=version,
        synchronous_commit=synchronous_commit,
    )
