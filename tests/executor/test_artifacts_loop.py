"""A large frame is written and read back off the event loop: the loop keeps serving."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
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
from pyergon.serialization._artifact_store import Writer
from pyergon.serialization.artifacts import LocalArtifactStore, StoredArtifact
from pyergon.storage.sqlite import SqliteExecutionLog

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

ROWS = 3_300_000  # two float64 columns: about 50 MB


@dataclass
@flow_type(name="ArtifactsOffLoop")
class BigFrame:
    name: str

    @step
    def build(self) -> Any:
        return pd.DataFrame({"a": np.arange(ROWS, dtype="float64"), "b": np.ones(ROWS)})

    @flow
    async def run(self) -> float:
        frame = await self.build()
        await await_external_signal("go")
        return float(frame["a"].iloc[-1])


class HandshakeStore:
    """A store whose reads and writes wait until the event loop has run another task.

    Were they on the loop's thread, that task could not run and the wait would time out.
    """

    def __init__(self, root: Path) -> None:
        self.inner = LocalArtifactStore(root, durable=False)
        self.location = self.inner.location
        self.threshold = self.inner.threshold
        self.in_store = threading.Event()
        self.loop_served = threading.Event()
        self.waits: list[bool] = []

    def _handshake(self) -> None:
        self.loop_served.clear()
        self.in_store.set()
        self.waits.append(self.loop_served.wait(timeout=10))
        self.in_store.clear()

    def write(self, writer: Writer) -> tuple[str, int]:
        self._handshake()
        return self.inner.write(writer)

    def path_of(self, hex_digest: str) -> str:
        return self.inner.path_of(hex_digest)

    def local_file(self, hex_digest: str, size: int) -> str:
        self._handshake()
        return self.inner.local_file(hex_digest, size)

    def read(self, hex_digest: str, size: int) -> bytes:
        self._handshake()
        return self.inner.read(hex_digest, size)

    def list(self) -> Iterator[StoredArtifact]:
        return self.inner.list()

    def remove(self, hex_digest: str, *, unless_modified_after: float | None = None) -> bool:
        return self.inner.remove(hex_digest, unless_modified_after=unless_modified_after)

    def claim(self, owner: str) -> None:
        self.inner.claim(owner)

    def owners(self) -> set[str]:
        return self.inner.owners()


async def serve_the_loop(store: HandshakeStore, stop: asyncio.Event) -> int:
    """Answer each handshake from a task on the loop; return how many were answered."""
    answered = 0
    while not stop.is_set():
        if store.in_store.is_set() and not store.loop_served.is_set():
            store.loop_served.set()
            answered += 1
        await asyncio.sleep(0)
    return answered


async def test_a_50_mb_frame_is_written_and_read_back_off_the_event_loop(tmp_path: Path) -> None:
    store = HandshakeStore(tmp_path / "artifacts")
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=store)
    await storage.connect()
    stop = asyncio.Event()
    server = asyncio.create_task(serve_the_loop(store, stop))
    try:
        first = await Executor(BigFrame("x"), storage, "off-loop").run(BigFrame.run)
        assert isinstance(first, Suspended)
        await send_signal(storage, "off-loop", "go", True)
        second = await Executor(BigFrame("x"), storage, "off-loop").run(BigFrame.run)
    finally:
        stop.set()
        answered = await server
        await storage.close()

    assert second == Completed("off-loop", result=float(ROWS - 1))
    assert store.waits == [True, True]  # the write, then the replay's read
    assert answered == 2
    [artifact] = store.list()
    assert artifact.size < 60_000_000


async def test_reading_a_large_value_back_happens_off_the_event_loop(tmp_path: Path) -> None:
    from pyergon.management import FlowManager

    plain = SqliteExecutionLog(tmp_path / "flows.db")
    await plain.connect()
    try:
        await Executor(BigFrame("x"), plain, "read-back").run(BigFrame.run)
    finally:
        await plain.close()
    store = HandshakeStore(tmp_path / "flows.artifacts")
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=store)
    await storage.connect()
    stop = asyncio.Event()
    server = asyncio.create_task(serve_the_loop(store, stop))
    try:
        frame = await FlowManager(storage).value("read-back", "build")
    finally:
        stop.set()
        answered = await server
        await storage.close()

    assert len(frame) == ROWS
    assert store.waits == [True]
    assert answered == 1


@dataclass
@flow_type(name="ArtifactsOffLoopDict")
class BigDict:
    name: str

    @step
    def build(self) -> dict[str, list[int]]:
        return {"values": list(range(600_000))}  # about 3 MB pickled

    @flow
    async def run(self) -> int:
        return len((await self.build())["values"])


async def test_a_large_pickled_result_is_written_off_the_event_loop(tmp_path: Path) -> None:
    store = HandshakeStore(tmp_path / "artifacts")
    storage = SqliteExecutionLog(tmp_path / "flows.db", artifacts=store)
    await storage.connect()
    stop = asyncio.Event()
    server = asyncio.create_task(serve_the_loop(store, stop))
    try:
        outcome = await Executor(BigDict("x"), storage, "dict").run(BigDict.run)
    finally:
        stop.set()
        answered = await server
        await storage.close()

    assert outcome == Completed("dict", result=600_000)
    assert store.waits == [True]
    assert answered == 1
    [artifact] = store.list()
    assert artifact.size > 1 << 20
