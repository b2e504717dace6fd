"""Flows recorded before arrays and frames were hashed by their buffers still replay."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pytest

from pyergon import Completed, Executor, Suspended, await_external_signal, flow, flow_type, step
from pyergon._hashing import legacy_stable_hash
from pyergon.errors import NonDeterminismError
from pyergon.executor.signal import send_signal
from pyergon.storage.base import ExecutionLog


def orders() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "count": [3, 1, 4],
            "customer": pd.Series(["ada", None, "cy"], dtype=object),
            "kind": pd.Categorical(["a", "b", "a"]),
            "at": pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC"),
        }
    )


@dataclass
@flow_type
class OrderTotal:
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def load(self) -> pd.DataFrame:
        self.body_runs.append("load")
        return orders()

    @step
    async def total(self, frame: pd.DataFrame) -> int:
        self.body_runs.append("total")
        return int(frame["count"].sum())

    @flow
    async def run(self) -> tuple[int, str]:
        total = await self.total(await self.load())
        return total, await await_external_signal("approval")


@dataclass
@flow_type(name="OrderTotal")
class OrderTotalOnOtherRows:
    """Today's code passes the step other rows than the recorded run did."""

    @step
    async def load(self) -> pd.DataFrame:
        return orders()

    @step
    async def total(self, frame: pd.DataFrame) -> int:
        return int(frame["count"].sum())

    @flow
    async def run(self) -> tuple[int, str]:
        total = await self.total((await self.load()).iloc[:2])
        return total, await await_external_signal("approval")


async def run_with_old_fingerprints(
    storage: ExecutionLog, flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run ``OrderTotal`` up to its signal as pyergon 0.9 did: frames hashed by their pickle."""
    with monkeypatch.context() as patched:
        patched.setattr(
            "pyergon.executor._steps.stable_hash",
            lambda args, kwargs, _recorded=None: legacy_stable_hash(args, kwargs),
        )
        first = OrderTotal()
        assert isinstance(await Executor(first, storage, flow_id).run(lambda f: f.run()), Suspended)
    assert first.body_runs == ["load", "total"]
    recorded = {record.name: record for record in await storage.load_invocations(flow_id)}
    assert recorded["total"].args_hash == legacy_stable_hash((orders(),), {})


async def test_a_flow_recorded_with_old_frame_fingerprints_replays_and_resumes(
    storage: ExecutionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_with_old_fingerprints(storage, "orders-1", monkeypatch)
    await send_signal(storage, "orders-1", "approval", "yes")

    again = OrderTotal()
    outcome = await Executor(again, storage, "orders-1").run(lambda f: f.run())

    assert outcome == Completed("orders-1", result=(8, "yes"))
    assert again.body_runs == []


async def test_a_changed_frame_against_an_old_fingerprint_is_non_determinism(
    storage: ExecutionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_with_old_fingerprints(storage, "orders-2", monkeypatch)

    with pytest.raises(NonDeterminismError, match=r"'orders-2'.*position 2"):
        await Executor(OrderTotalOnOtherRows(), storage, "orders-2").run(lambda f: f.run())


async def test_a_changed_frame_against_a_new_fingerprint_is_non_determinism(
    storage: ExecutionLog,
) -> None:
    first = OrderTotal()
    await Executor(first, storage, "orders-3").run(lambda f: f.run())
    recorded = {record.name: record for record in await storage.load_invocations("orders-3")}
    assert recorded["total"].args_hash.startswith("v2:")

    with pytest.raises(NonDeterminismError, match=r"'orders-3'.*position 2"):
        await Executor(OrderTotalOnOtherRows(), storage, "orders-3").run(lambda f: f.run())
