"""Large step results, flow inputs and signal values through flows, on every backend.

Where the storage has an artifact store (a SQLite file by default, Redis and PostgreSQL with
``artifacts=``), records keep small references; elsewhere the values stay inline.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyergon import (
    Completed,
    Executor,
    Suspended,
    await_external_signal,
    flow,
    flow_type,
    send_signal,
    step,
)
from pyergon.serialization import payload_info
from pyergon.serialization.artifacts import LocalArtifactStore
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.redis import RedisExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.conftest import drop_redis_keys, drop_schema, require_postgres, require_redis

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

calls: list[str] = []
"""The step bodies that ran, in order."""


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def big_frame(seed: int) -> Any:
    """About 3 MB: 130,000 rows of ints, floats and strings."""
    rows = 130_000
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64") + seed,
            "x": np.linspace(0, 1, rows),
            "tag": pd.Series(np.array(["a", "bb", "ccc"])[np.arange(rows) % 3], dtype="str"),
        }
    )


BIG_ARRAY = np.arange(300_000, dtype="float64").reshape(600, 500)
BIG_DICT = {"text": "y" * 1_500_000, "numbers": list(range(1000))}
BIG_SIGNAL = {"approved": True, "notes": "z" * 1_500_000}


@dataclass
@flow_type
class Pipeline:
    rows: list[int]

    @step
    def load(self) -> Any:
        calls.append("load")
        return big_frame(len(self.rows))

    @step
    async def matrix(self) -> Any:
        calls.append("matrix")
        return BIG_ARRAY.copy()

    @step
    async def settings(self) -> dict[str, Any]:
        calls.append("settings")
        return dict(BIG_DICT)

    @step
    def summarise(self, frame: Any, matrix: Any, settings: dict[str, Any]) -> Any:
        calls.append("summarise")
        return frame.assign(total=frame["x"] + float(matrix.sum()) + len(settings["text"]))

    @flow
    async def run(self) -> Any:
        frame = await self.load()
        matrix = await self.matrix()
        settings = await self.settings()
        decision = await await_external_signal("decision")
        result = await self.summarise(frame, matrix, settings)
        assert decision == BIG_SIGNAL
        return result


def expected_result(rows: int) -> Any:
    frame = big_frame(rows)
    return frame.assign(total=frame["x"] + float(BIG_ARRAY.sum()) + len(BIG_DICT["text"]))


@dataclass
class Backend:
    storage: ExecutionLog
    artifacts: Path | None
    """Where the artifacts should be; ``None`` when values stay inline."""


async def _sqlite_file(tmp_path: Path) -> Backend:
    storage = SqliteExecutionLog(tmp_path / "flows.db")
    await storage.connect()
    return Backend(storage, tmp_path / "flows.artifacts")


async def _sqlite_file_inline(tmp_path: Path) -> Backend:
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=False)
    await storage.connect()
    return Backend(storage, None)


async def _sqlite_memory(_tmp_path: Path) -> Backend:
    return Backend(await SqliteExecutionLog.in_memory(), None)


async def _memory(_tmp_path: Path) -> Backend:
    return Backend(InMemoryExecutionLog(), None)


async def _redis_argument(tmp_path: Path) -> Backend:
    url = await require_redis()
    prefix = f"pyergon-test-{uuid.uuid4().hex[:12]}"
    storage = RedisExecutionLog(url, prefix=prefix, artifacts=tmp_path / "shared")
    await storage.connect()
    return Backend(storage, tmp_path / "shared")


async def _redis_url(tmp_path: Path) -> Backend:
    url = await require_redis()
    prefix = f"pyergon-test-{uuid.uuid4().hex[:12]}"
    storage = RedisExecutionLog.from_url(f"{url}?prefix={prefix}&artifacts={tmp_path}/by-url")
    await storage.connect()
    return Backend(storage, tmp_path / "by-url")


async def _postgres_argument(tmp_path: Path) -> Backend:
    dsn = await require_postgres()
    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"
    storage = PostgresExecutionLog(dsn, schema=schema, artifacts=tmp_path / "shared")
    await storage.connect()
    return Backend(storage, tmp_path / "shared")


async def _postgres_url(tmp_path: Path) -> Backend:
    dsn = await require_postgres()
    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in dsn else "?"
    storage = PostgresExecutionLog.from_url(
        f"{dsn}{separator}schema={schema}&artifacts={tmp_path}/by-url"
    )
    await storage.connect()
    return Backend(storage, tmp_path / "by-url")


BACKENDS: dict[str, Callable[[Path], Awaitable[Backend]]] = {
    "memory": _memory,
    "postgres": _postgres_argument,
    "postgres-url": _postgres_url,
    "redis": _redis_argument,
    "redis-url": _redis_url,
    "sqlite-file": _sqlite_file,
    "sqlite-file-inline": _sqlite_file_inline,
    "sqlite-memory": _sqlite_memory,
}


async def close(storage: ExecutionLog) -> None:
    await storage.close()
    if isinstance(storage, RedisExecutionLog):
        await drop_redis_keys(storage.prefix)
    elif isinstance(storage, PostgresExecutionLog):
        await drop_schema(storage.schema)


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = await BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        await close(made.storage)


async def test_large_values_go_through_a_flow_and_replay_without_running_steps(
    backend: Backend, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="pyergon.artifacts")
    storage = backend.storage
    rows = list(range(250_000))  # the flow's input: about 1.2 MB pickled

    first = await Executor(Pipeline(rows), storage, "big-1").run(Pipeline.run)
    assert isinstance(first, Suspended)
    assert calls == ["load", "matrix", "settings"]
    await send_signal(storage, "big-1", "decision", BIG_SIGNAL)
    second = await Executor(Pipeline(rows), storage, "big-1").run(Pipeline.run)
    third = await Executor(Pipeline(rows), storage, "big-1").run(Pipeline.run)

    assert calls == ["load", "matrix", "settings", "summarise"]
    for outcome in (second, third):
        assert isinstance(outcome, Completed)
        pd.testing.assert_frame_equal(outcome.result, expected_result(len(rows)), check_exact=True)
    assert caplog.records == []

    stored = await storage.get_flow("big-1")
    assert stored is not None
    assert stored.result is not None
    invocations = await storage.load_invocations("big-1")
    payloads = [stored.payload, stored.result] + [
        record.result for record in invocations if record.result is not None
    ]
    infos = [payload_info(payload) for payload in payloads]
    if backend.artifacts is None:
        assert all(info is not None and info.artifact is None for info in infos)
        assert not list(tmp_path.rglob("*.artifacts"))  # noqa: ASYNC240 - a test's tmp_path
        return
    assert len(stored.result) < 1000
    assert all(len(payload) < 1000 for payload in payloads), [len(p) for p in payloads]
    formats = sorted(info.format for info in infos if info is not None)
    # input, result, load, matrix, settings, signal, summarise
    assert formats == ["npy", "parquet", "parquet", "parquet", "pickle", "pickle", "pickle"]
    store = LocalArtifactStore(backend.artifacts)
    assert len(list(store.list())) == 6  # the result and summarise's are the same bytes


@dataclass
@flow_type(name="ArtifactsInlineWarning")
class OneBigStep:
    name: str

    @step
    async def make(self) -> dict[str, Any]:
        calls.append("make")
        return dict(BIG_DICT)

    @flow
    async def run(self) -> int:
        return len((await self.make())["text"])


async def test_shared_storage_without_artifacts_keeps_values_inline_and_says_so_once(
    redis_url: str, redis_prefix: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pyergon.artifacts")
    storage = RedisExecutionLog(redis_url, prefix=redis_prefix())
    await storage.connect()
    try:
        for number in range(3):
            outcome = await Executor(OneBigStep("x"), storage, f"inline-{number}").run(
                OneBigStep.run
            )
            assert outcome == Completed(f"inline-{number}", result=len(BIG_DICT["text"]))
        [record] = await storage.load_invocations("inline-0")
    finally:
        await storage.close()

    assert record.result is not None and len(record.result) > 1_000_000
    warnings = [r.getMessage() for r in caplog.records if r.name == "pyergon.artifacts"]
    assert len(warnings) == 1, warnings
    assert "artifacts=" in warnings[0]
