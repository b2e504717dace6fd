"""A frame a step returned, passed on to the next step, counts by its artifact's digest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyergon import Executor, flow, flow_type, step
from pyergon._hashing import _hash_arguments, _Walk, stable_hash
from pyergon.core import Completed, OperationKind
from pyergon.management import FlowManager
from pyergon.storage.sqlite import SqliteExecutionLog

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

ROWS = 200_000
calls: list[str] = []


@dataclass
@flow_type(name="FingerprintedByDigest")
class Pipeline:
    scale: int

    @step
    def load(self) -> Any:
        calls.append("load")
        return pd.DataFrame({"a": np.arange(ROWS) * self.scale, "b": np.ones(ROWS)})

    @step
    def total(self, frame: Any) -> float:
        calls.append("total")
        frame["a"] = 0  # changed in place by the step: a replay, which does not run it, cannot
        return float(frame["b"].sum())

    @step
    def count(self, frame: Any) -> int:
        calls.append("count")
        return len(frame)

    @flow
    async def run(self) -> tuple[float, int]:
        frame = await self.load()
        return await self.total(frame), await self.count(frame)


def buffers_only(*args: Any) -> str:
    return _hash_arguments(args, {}, _Walk(buffers=True))


async def test_a_recorded_frame_counts_by_its_digest_and_replays(tmp_path: Path) -> None:
    calls.clear()
    async with SqliteExecutionLog(tmp_path / "flows.db") as storage:
        first = await Executor(Pipeline(2), storage, "p").run(Pipeline.run)
        records = {
            record.name: record
            for record in await storage.load_invocations("p")
            if record.kind is OperationKind.STEP
        }
        calls.clear()
        replay = await FlowManager(storage).replay("p", Pipeline)

    assert first == Completed("p", result=(float(ROWS), ROWS))
    frame = pd.DataFrame({"a": np.arange(ROWS) * 2, "b": np.ones(ROWS)})
    assert records["total"].args_hash != buffers_only(frame)  # by the digest, not hashed
    assert records["count"].args_hash == records["total"].args_hash  # though changed in place
    # The replay reads the frame back and runs no step (so nothing changes it in place):
    # by its buffers, the count step's argument would differ from the record's.
    assert replay.consistent, replay.divergence
    assert calls == []


async def test_records_from_before_digests_still_replay() -> None:
    from pyergon._hashing import same_arguments
    from pyergon._hashing_data import RecordedValues

    frame = pd.DataFrame({"a": np.arange(ROWS), "b": np.ones(ROWS)})
    before = stable_hash((frame,), {})  # buffers: the value is no artifact yet
    recorded = RecordedValues()
    recorded.note(frame, "sha256:" + "ab" * 32)
    now = stable_hash((frame,), {}, recorded)

    assert now != before
    assert stable_hash((frame.copy(),), {}, recorded) == before  # another object: by buffers
    assert same_arguments(before, now, (frame,), {})
    assert not same_arguments(before, now, (frame.iloc[:-1],), {})


@dataclass
@flow_type(name="FingerprintedInput")
class Consumer:
    frame: Any

    @step
    def count(self, frame: Any) -> int:
        calls.append("consume")
        return len(frame)

    @flow
    async def run(self) -> int:
        return await self.count(self.frame)


async def test_a_value_read_back_and_given_to_another_flow_replays_there(tmp_path: Path) -> None:
    async with SqliteExecutionLog(tmp_path / "flows.db") as storage:
        await Executor(Pipeline(3), storage, "source").run(Pipeline.run)
        frame = await FlowManager(storage).value("source", "load")  # read back: an artifact
        first = await Executor(Consumer(frame), storage, "consumer").run(Consumer.run)
        replay = await FlowManager(storage).replay("consumer", Consumer)

    assert first == Completed("consumer", result=ROWS)
    assert replay.consistent, replay.divergence
