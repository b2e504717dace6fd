"""The ``large_result`` scenario: a step that returns a large DataFrame, and the next step's read.

Per run, on SQLite or PostgreSQL: a mixed-dtype DataFrame of about ``n`` MB is built (not
timed); a flow runs ``make`` (returns the frame) and ``use`` (takes it as its argument); then,
with the frame dropped from memory, the recorded frame is read back (``FlowManager.value``, what
a replay or ``session.value`` does). Measured:

* ``write_s``: the first run (the step's result stored, the argument fingerprinted);
* ``read_s``: reading the frame back from where it was stored;
* ``parquet_write_s`` / ``parquet_read_s``: ``df.to_parquet`` + ``pd.read_parquet`` of the same
  frame in the same directory, the issue's yardstick, and ``ratio`` = ours / theirs;
* ``peak_rss_mb`` (the process's high-water mark over the run and the read, reset after the
  frame is built; ``start_rss_mb`` is the process's size then, the frame included) and
  ``peak_over_frame`` = that peak / the frame's in-memory size;
* ``db_growth_mb`` (the database after the first run, less before), ``fork_db_mb`` and
  ``fork_files`` (what ``FlowManager.fork`` added to the database and to the artifact store);
* ``list_ms``: reading the flow's records and building its ``invocations()`` DataFrame.

Variants: ``artifacts`` (the default store) and ``inline`` (no artifact store: the value in the
record, as before artifacts).
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.backends import POSTGRES_URL, _drop_schema, _with_query
from benchmarks.hashing import BYTES_PER_ROW, mixed_frame
from benchmarks.result import RunResult
from pyergon import Executor, flow, flow_type, step
from pyergon.history import invocations_frame
from pyergon.management import FlowManager
from pyergon.storage.base import ExecutionLog

__all__ = ["VARIANTS", "large_result"]

VARIANTS = ("artifacts", "inline")
_frame: Any = None
"""The frame ``make`` returns on its first run; dropped before the replay reads it back."""


@flow_type
@dataclass
class LargeResult:
    """Makes a large frame in one step and uses it in the next."""

    label: str

    @step
    def make(self) -> Any:
        return _frame

    @step
    def use(self, frame: Any) -> int:
        return len(frame)

    @flow
    async def run(self) -> int:
        return await self.use(await self.make())


def _reset_peak() -> None:
    """Start the process's peak RSS (``VmHWM``) again from its current size (Linux)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True, slots=True)
class _Place:
    storage: ExecutionLog
    directory: Path
    size_mb: Any


@contextlib.asynccontextmanager
async def _storage(backend: str, variant: str) -> AsyncIterator[_Place]:
    with tempfile.TemporaryDirectory(prefix="pyergon-bench-", dir=os.environ.get("TMPDIR")) as d:
        directory = Path(d)
        artifacts = str(directory / "artifacts") if variant == "artifacts" else None
        if backend == "sqlite":
            from pyergon.storage.sqlite import SqliteExecutionLog

            path = directory / "bench.db"
            storage: Any = SqliteExecutionLog(path, artifacts=None if artifacts else False)
            await storage.connect()

            async def sqlite_mb() -> float:
                files = [path, Path(f"{path}-wal")]
                return sum(f.stat().st_size for f in files if f.exists()) / 1e6

            try:
                yield _Place(storage, directory, sqlite_mb)
            finally:
                await storage.close()
            return
        from pyergon.storage.postgres import PostgresExecutionLog

        schema = f"bench_{uuid.uuid4().hex[:12]}"
        storage = PostgresExecutionLog.from_url(
            _with_query(POSTGRES_URL, "schema", schema), artifacts=artifacts
        )
        await storage.connect()

        async def postgres_mb() -> float:
            async with storage._pool.acquire() as connection:
                total = await connection.fetchval(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                    schema,
                )
            return float(total) / 1e6

        try:
            yield _Place(storage, directory, postgres_mb)
        finally:
            await storage.close()
            await _drop_schema(schema)


def _store_files(directory: Path) -> int:
    root = directory / "artifacts"
    if not root.exists():
        root = next(directory.glob("*.artifacts"), root)
    return sum(1 for item in root.rglob("*") if item.is_file()) if root.exists() else 0


def _parquet_round_trip(frame: Any, directory: Path) -> tuple[float, float]:
    import pandas as pd

    path = directory / "yardstick.parquet"
    started = time.perf_counter()
    frame.to_parquet(path)
    written = time.perf_counter()
    pd.read_parquet(path)
    read = time.perf_counter()
    path.unlink()
    return written - started, read - written


async def large_result(backend: str, n: int, *, variant: str) -> RunResult:
    """Store an ``n`` MB DataFrame as a step result, read it back, fork the flow."""
    global _frame
    rows = n * 1_000_000 // BYTES_PER_ROW
    frame = mixed_frame(rows)
    frame_mb = int(frame.memory_usage(deep=True).sum()) / 1e6
    async with _storage(backend, variant) as place:
        _frame = frame
        gc.collect()
        _reset_peak()
        start_rss_mb = _peak_mb()
        before_mb = await place.size_mb()
        flow_id = f"large-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        await Executor(LargeResult("x"), place.storage, flow_id).run(lambda f: f.run())
        write_s = time.perf_counter() - started
        db_growth_mb = await place.size_mb() - before_mb
        _frame = None
        del frame
        gc.collect()
        manager = FlowManager(place.storage)
        started = time.perf_counter()
        read_back = await manager.value(flow_id, "make")
        read_s = time.perf_counter() - started
        peak_mb = _peak_mb()
        assert len(read_back) > 0
        del read_back
        gc.collect()
        started = time.perf_counter()
        records = await place.storage.load_invocations(flow_id)
        invocations_frame(records)
        list_ms = (time.perf_counter() - started) * 1000
        # The yardstick last, so that what it leaves in memory is not counted in our peak.
        parquet_write_s, parquet_read_s = _parquet_round_trip(mixed_frame(rows), place.directory)
        files_before = _store_files(place.directory)
        before_fork_mb = await place.size_mb()
        await manager.fork(flow_id, from_step=2)
        fork_db_mb = await place.size_mb() - before_fork_mb
        fork_files = _store_files(place.directory) - files_before
    ours = write_s + read_s
    yardstick = parquet_write_s + parquet_read_s
    return RunResult(
        ours,
        extra={
            "frame_mb": round(frame_mb, 1),
            "write_s": write_s,
            "read_s": read_s,
            "parquet_write_s": parquet_write_s,
            "parquet_read_s": parquet_read_s,
            "ratio": ours / yardstick,
            "start_rss_mb": round(start_rss_mb, 1),
            "peak_rss_mb": round(peak_mb, 1),
            "peak_over_frame": peak_mb * 1.048576 / frame_mb,
            "db_growth_mb": round(db_growth_mb, 3),
            "fork_db_mb": round(fork_db_mb, 3),
            "fork_files": fork_files,
            "list_ms": list_ms,
        },
    )
