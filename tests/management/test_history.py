"""The read side: one flow's history, paging through flows, and typed DataFrames."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from pyergon import Executor, RetryPolicy, flow, flow_type, step
from pyergon._history_html import earlier_attempts_html
from pyergon.core import (
    Invocation,
    InvocationStatus,
    OperationKind,
    ScheduledFlow,
    SignalRecord,
    TaskStatus,
)
from pyergon.core.changes import Change
from pyergon.core.records import Attempt, StepProgress, StoredError
from pyergon.core.workers import StepActivity
from pyergon.history import (
    FLOW_COLUMNS,
    INVOCATION_COLUMNS,
    SIGNAL_COLUMNS,
    flows_frame,
    invocations_frame,
    iter_flows,
    load_history,
    signals_frame,
)
from pyergon.storage._flows import deliver_signal
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation, make_worker

attempts_left = {"flaky": 1}


@dataclass
@flow_type
class Leaf:
    value: int

    @flow
    async def run(self) -> int:
        return self.value


@dataclass
@flow_type
class Tree:
    width: int

    @step
    async def flaky(self) -> str:
        if attempts_left["flaky"]:
            attempts_left["flaky"] -= 1
            raise RuntimeError("first attempt fails")
        return "ok"

    @flow
    async def run(self) -> int:
        await self.flaky()
        total = 0
        for value in range(self.width):
            total += await self.invoke(Leaf(value)).result()
        return total


async def test_history_gathers_records_signals_children_and_retries(
    storage: ExecutionLog,
) -> None:
    attempts_left["flaky"] = 1
    tree = Tree(3)

    @dataclass
    @flow_type(name="Tree")
    class RetryingTree(Tree):
        @step(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0))
        async def flaky(self) -> str:
            return await Tree.flaky(self)

    outcome = await Executor(RetryingTree(tree.width), storage, "tree").run(lambda t: t.run())
    assert outcome.result == 3
    assert await deliver_signal(storage, SignalRecord("tree", "note", b"P1hello", 1.0))
    history = await load_history(storage, "tree")
    assert history.flow.status is TaskStatus.COMPLETE
    assert [child.flow_id for child in history.children] == [
        "tree~child-4",
        "tree~child-3",
        "tree~child-2",
    ]
    assert [signal.name for signal in history.signals] == ["note"]
    assert [record.name for record in history.retried] == ["flaky"]
    assert history.retried[0].attempts == 2
    frame = history.invocations_frame()
    assert list(frame.columns) == list(INVOCATION_COLUMNS)
    assert list(frame["position"]) == ["1", "2", "3", "4"]
    assert list(frame["kind"]) == ["STEP", "CHILD", "CHILD", "CHILD"]


async def test_iter_flows_pages_through_everything_once(storage: ExecutionLog) -> None:
    for number in range(23):
        await storage.create_flow(
            ScheduledFlow(
                f"f{number:02d}",
                "Kind",
                b"",
                TaskStatus.PENDING,
                created_at=1_000.0 + number // 2,  # pairs share a creation time
                updated_at=1_000.0,
            )
        )
    seen = [flow.flow_id async for flow in iter_flows(storage, page_size=5)]
    assert len(seen) == 23 and len(set(seen)) == 23
    assert seen == sorted(seen, key=lambda flow_id: (int(flow_id[1:]) // 2, flow_id), reverse=True)
    limited = [flow.flow_id async for flow in iter_flows(storage, page_size=4, limit=6)]
    assert limited == seen[:6]


def test_frames_have_fixed_columns_and_dtypes_even_when_empty() -> None:
    for frame, columns in (
        (flows_frame([]), FLOW_COLUMNS),
        (invocations_frame([]), INVOCATION_COLUMNS),
        (signals_frame([]), SIGNAL_COLUMNS),
    ):
        assert list(frame.columns) == list(columns)
        assert len(frame) == 0
    flows = flows_frame([])
    assert str(flows["created_at"].dtype) == "datetime64[ns, UTC]"
    assert str(flows["duration"].dtype) == "timedelta64[ns]"
    assert isinstance(flows["status"].dtype, pd.CategoricalDtype)
    assert list(flows["status"].cat.categories) == [status.value for status in TaskStatus]


def test_flow_frame_values() -> None:
    finished = ScheduledFlow(
        "a", "Kind", b"", TaskStatus.COMPLETE, created_at=10.0, updated_at=12.5, worker_id="w1"
    )
    waiting = ScheduledFlow(
        "b", "Kind", b"", TaskStatus.SUSPENDED, created_at=11.0, updated_at=11.0, wake_at=99.0
    )
    frame = flows_frame([finished, waiting])
    assert frame.loc[0, "duration"] == pd.Timedelta(seconds=2.5)
    assert pd.isna(frame.loc[1, "duration"])
    assert frame.loc[1, "wake_at"] == pd.Timestamp(99.0, unit="s", tz="UTC")
    assert frame.loc[0, "worker_id"] == "w1"
    assert pd.isna(frame.loc[1, "worker_id"])


def test_the_flow_frame_counts_the_leases_each_flow_lost() -> None:
    taken_over = ScheduledFlow(
        "a", "Kind", b"", TaskStatus.COMPLETE, 10.0, 12.5, lease_losses=2, last_lost_by="w1"
    )
    untouched = ScheduledFlow("b", "Kind", b"", TaskStatus.PENDING, 11.0, 11.0)

    frame = flows_frame([taken_over, untouched])

    assert str(frame["lease_losses"].dtype) == "Int64"
    assert frame["lease_losses"].tolist() == [2, 0]
    assert frame.loc[0, "last_lost_by"] == "w1"
    assert pd.isna(frame.loc[1, "last_lost_by"])
    assert frame[frame["lease_losses"] > 0]["flow_id"].tolist() == ["a"]


def test_invocation_and_signal_frame_values() -> None:
    record = Invocation(
        "a",
        3,
        OperationKind.TIMER,
        "nap",
        InvocationStatus.WAITING_FOR_TIMER,
        sub_sequence=1,
        started_at=5.0,
        fire_at=65.0,
    )
    frame = invocations_frame([record])
    assert frame.loc[0, "position"] == "3.1"
    assert frame.loc[0, "idempotency_key"] == "a:3.1"
    assert frame.loc[0, "fire_at"] == pd.Timestamp(65.0, unit="s", tz="UTC")
    assert pd.isna(frame.loc[0, "duration"])
    signals = signals_frame([SignalRecord("a", "go", b"12345", 7.0)])
    assert signals.loc[0, "size_bytes"] == 5


async def test_a_history_names_the_waiting_types_no_live_worker_serves() -> None:
    from pyergon.cli._views import history_view

    storage = InMemoryExecutionLog()
    await storage.create_flow(make_flow("parent", flow_type="Parent"))
    await storage.create_flow(make_flow("kid", flow_type="Kid", parent_flow_id="parent"))
    await storage.create_flow(
        make_flow("old-kid", flow_type="Done", parent_flow_id="parent", status=TaskStatus.COMPLETE)
    )
    assert (await load_history(storage, "parent")).unserved == ()  # no worker records at all

    now = time.time()
    await storage.put_worker(
        make_worker("w", flow_types=("Parent",), last_beat=now), replacing=None
    )
    dead = make_worker("gone", flow_types=("Kid",), last_beat=now - 60, lease_seconds=2.0)
    await storage.put_worker(dead, replacing=None)
    history = await load_history(storage, "parent")

    assert history.unserved == ("Kid",)
    shown = "\n".join(str(part) for part in history_view(history, now))
    assert "no live worker serves Kid" in shown


async def test_a_history_holds_the_steps_live_workers_run_now_with_their_progress() -> None:
    storage = InMemoryExecutionLog()
    await storage.create_flow(make_flow("busy", status=TaskStatus.RUNNING))
    await storage.create_flow(make_flow("done", status=TaskStatus.COMPLETE))
    loaded = make_invocation(
        1, flow_id="busy", name="load", status=InvocationStatus.COMPLETE, output="read 3 files\n"
    )
    retried = make_invocation(2, flow_id="busy", name="fit", attempts=1, started_at=5.0)
    await storage.apply(Change(records=(loaded, retried)))
    now = time.time()
    crunch = StepActivity("busy", "3", "crunch", now - 12, StepProgress(37, 100, "Jan", now))
    fit = StepActivity("busy", "2", "fit", now - 1, StepProgress(3, 4, at=now))
    other = StepActivity("done", "1", "stale", now - 60)
    live = make_worker("w", last_beat=now, activity=(crunch, fit, other))
    dead = make_worker("gone", last_beat=now - 60, activity=(StepActivity("busy", "9", "x", 1.0),))
    for worker in (live, dead):
        await storage.put_worker(worker, replacing=None)

    history = await load_history(storage, "busy")

    assert history.running == (crunch, fit)  # the dead worker's step runs nowhere
    assert history.running_at("3") == crunch and history.running_at("1") is None
    assert history.invocations == (loaded, retried)  # the stored records, unchanged
    shown = history.records_now
    assert [(record.position, record.name, record.status) for record in shown] == [
        ("1", "load", InvocationStatus.COMPLETE),
        ("2", "fit", InvocationStatus.PENDING),
        ("3", "crunch", InvocationStatus.PENDING),
    ]
    assert shown[1].progress == fit.progress and shown[1].started_at == 5.0
    assert shown[2].started_at == crunch.started_at and shown[2].progress == crunch.progress
    assert (await load_history(storage, "done")).running == ()  # a final flow runs nothing


def test_the_record_frame_holds_output_and_progress() -> None:
    records = [
        make_invocation(1, output="a\nb\n", progress=StepProgress(37, 100, "Jan", 1.0)),
        make_invocation(2, progress=StepProgress(5, message="counting")),
        make_invocation(3),
    ]

    frame = invocations_frame(records)

    assert str(frame["output"].dtype) == "string"
    assert str(frame["progress"].dtype) == "float64"
    assert str(frame["progress_message"].dtype) == "string"
    assert frame.loc[0, "output"] == "a\nb\n" and pd.isna(frame.loc[1, "output"])
    assert frame.loc[0, "progress"] == 0.37
    assert pd.isna(frame.loc[1, "progress"]) and pd.isna(frame.loc[2, "progress"])
    assert frame["progress_message"].tolist()[:2] == ["Jan", "counting"]
    assert pd.isna(frame.loc[2, "progress_message"])


def test_the_record_frame_counts_and_describes_the_earlier_attempts() -> None:
    down = StoredError("shop.ProviderDown", "provider down\nretry later", "Traceback")
    earlier = (
        Attempt.failed(1, 1_000.0, 1_001.0, down),
        Attempt(2, 1_002.0, None, "abandoned", worker_id="w-old"),
        Attempt(3, 1_010.0, None, "lease lost"),
    )
    records = [make_invocation(1, attempts=4, earlier_attempts=earlier), make_invocation(2)]

    frame = invocations_frame(records)

    assert str(frame["earlier_attempts"].dtype) == "Int64"
    assert str(frame["attempt_errors"].dtype) == "string"
    assert frame["earlier_attempts"].tolist() == [3, 0]
    assert frame.loc[0, "attempt_errors"] == (
        "attempt 1 failed ProviderDown: provider down\n"
        "attempt 2 abandoned (its process died or stopped)\nattempt 3 lease lost"
    )
    assert pd.isna(frame.loc[1, "attempt_errors"])
    html = earlier_attempts_html(records[0], origin=1_000.0)
    assert "<summary>3 earlier attempts</summary>" in html
    # A line per attempt after its start; the whole message is the failed one's tooltip.
    tip = '<div title="provider down\nretry later">'
    assert f"{tip}+0.000s attempt 1 failed ProviderDown: provider down" in html
    assert "<div>+2.000s attempt 2 abandoned (its process died or stopped)</div>" in html


def test_the_flow_frame_names_the_steps_running_now_when_given() -> None:
    flows = [make_flow("a", status=TaskStatus.RUNNING), make_flow("b")]
    running = {
        "a": (StepActivity("a", "2", "load", 1.0), StepActivity("a", "3", "fit", 2.0)),
    }

    frame = flows_frame(flows, running)

    assert str(frame["running_step"].dtype) == "string"
    assert frame.loc[0, "running_step"] == "load, fit"
    assert pd.isna(frame.loc[1, "running_step"])
    assert flows_frame(flows)["running_step"].isna().all()
