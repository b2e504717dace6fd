"""Durable timers (DESIGN §3.6) through the direct executor, driven by a ManualClock."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from pyergon import Completed, Executor, Suspended, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import InvocationStatus, OperationKind, SuspendReason, TaskStatus
from pyergon.core.changes import Applied, Change
from pyergon.errors import PyergonError, StorageError
from pyergon.executor.timer import schedule_timer, schedule_timer_named
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from tests.records import record_at


@dataclass
@flow_type
class Reminder:
    user: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def send(self, text: str) -> str:
        self.body_runs.append(text)
        return f"sent {text!r} to {self.user}"

    @flow
    async def run(self) -> list[str]:
        first = await self.send("welcome")
        await schedule_timer(60)
        second = await self.send("how is it going?")
        return [first, second]


async def test_before_its_fire_time_a_timer_suspends_the_flow_with_the_wake_time(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    reminder = Reminder("ada")

    outcome = await Executor(reminder, storage, "remind-1", clock=clock).run(lambda f: f.run())

    assert isinstance(outcome, Suspended)
    assert outcome.reason is SuspendReason.TIMER
    assert outcome.wake_at == clock.now() + 60
    assert reminder.body_runs == ["welcome"]
    stored = await storage.get_flow("remind-1")
    assert stored is not None
    assert (stored.status, stored.wake_at) == (TaskStatus.SUSPENDED, clock.now() + 60)
    timer = await record_at(storage, "remind-1", 2)
    assert timer is not None
    assert timer.kind is OperationKind.TIMER
    assert timer.status is InvocationStatus.WAITING_FOR_TIMER
    assert timer.fire_at == clock.now() + 60


async def test_a_rerun_before_the_fire_time_stays_suspended(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(Reminder("ada"), storage, "remind-2", clock=clock).run(lambda f: f.run())
    fire_at = clock.now() + 60
    clock.advance(59)
    again = Reminder("ada")

    outcome = await Executor(again, storage, "remind-2", clock=clock).run(lambda f: f.run())

    assert isinstance(outcome, Suspended)
    assert outcome.wake_at == fire_at  # the stored fire time, not a fresh minute
    assert again.body_runs == []


async def test_a_rerun_after_the_fire_time_continues_without_waiting(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(Reminder("ada"), storage, "remind-3", clock=clock).run(lambda f: f.run())
    clock.advance(60)
    resumed = Reminder("ada")

    outcome = await Executor(resumed, storage, "remind-3", clock=clock).run(lambda f: f.run())

    assert outcome == Completed(
        "remind-3", result=["sent 'welcome' to ada", "sent 'how is it going?' to ada"]
    )
    assert resumed.body_runs == ["how is it going?"]
    timer = await record_at(storage, "remind-3", 2)
    assert timer is not None
    assert timer.status is InvocationStatus.COMPLETE


class FiredTimersFail(InMemoryExecutionLog):
    """Refuses to record that a timer fired while ``down``, as storage that went away would."""

    down = True

    async def apply(self, change: Change) -> Applied:
        fired = [r for r in change.records if r.kind is OperationKind.TIMER and r.is_final]
        if self.down and fired:
            raise StorageError("the storage went away")
        return await super().apply(change)


async def test_a_fired_timer_that_cannot_be_recorded_leaves_the_flow_to_resume(
    clock: ManualClock,
) -> None:
    storage = FiredTimersFail()
    await Executor(Reminder("ada"), storage, "remind-4", clock=clock).run(lambda f: f.run())
    clock.advance(60)

    with pytest.raises(StorageError, match="went away"):
        await Executor(Reminder("ada"), storage, "remind-4", clock=clock).run(lambda f: f.run())

    stored = await storage.get_flow("remind-4")
    assert stored is not None and stored.status is TaskStatus.RUNNING  # not failed for good
    storage.down = False
    resumed = Reminder("ada")
    outcome = await Executor(resumed, storage, "remind-4", clock=clock).run(lambda f: f.run())
    assert isinstance(outcome, Completed) and outcome.succeeded
    assert resumed.body_runs == ["how is it going?"]


@dataclass
@flow_type
class TimedOrderProcessor:
    """The seed README's pattern: a timer inside a step's body."""

    order_id: str
    log_lines: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def wait_for_fraud_check(self) -> str:
        self.log_lines.append("Waiting for fraud check...")
        await schedule_timer_named(2.0, f"fraud-{self.order_id}")
        self.log_lines.append("Fraud check complete")
        return "clear"

    @flow
    async def process(self) -> str:
        await self.wait_for_fraud_check()
        return "completed"


async def test_a_timer_inside_a_step_suspends_the_flow_and_later_completes_the_step(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    first = TimedOrderProcessor("ORD-001")
    outcome = await Executor(first, storage, "timed-1", clock=clock).run(lambda f: f.process())

    assert isinstance(outcome, Suspended)
    assert outcome.reason is SuspendReason.TIMER
    assert outcome.waiting_on == ("fraud-ORD-001",)
    assert outcome.wake_at == clock.now() + 2
    assert first.log_lines == ["Waiting for fraud check..."]
    timer = await record_at(storage, "timed-1", 1, 1)
    assert timer is not None
    assert timer.name == "fraud-ORD-001"
    assert await record_at(storage, "timed-1", 1) is None  # the step is not recorded yet

    clock.advance(2)
    second = TimedOrderProcessor("ORD-001")
    done = await Executor(second, storage, "timed-1", clock=clock).run(lambda f: f.process())

    assert done == Completed("timed-1", result="completed")
    assert second.log_lines == ["Waiting for fraud check...", "Fraud check complete"]
    step_record = await record_at(storage, "timed-1", 1)
    assert step_record is not None
    assert step_record.status is InvocationStatus.COMPLETE


@dataclass
@flow_type
class TwoNamedTimers:
    label: str

    @flow
    async def run(self) -> str:
        await schedule_timer_named(10, "cool-off")
        await schedule_timer_named(20, "reminder")
        return "done"


async def test_named_timers_are_recorded_and_reported_under_their_names(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    start = clock.now()
    executor = Executor(TwoNamedTimers("x"), storage, "named-1", clock=clock)

    first = await executor.run(lambda f: f.run())
    clock.advance(10)
    second = await executor.run(lambda f: f.run())
    clock.advance(20)
    third = await executor.run(lambda f: f.run())

    assert isinstance(first, Suspended)
    assert (first.waiting_on, first.wake_at) == (("cool-off",), start + 10)
    assert isinstance(second, Suspended)
    assert (second.waiting_on, second.wake_at) == (("reminder",), start + 30)
    assert third == Completed("named-1", result="done")
    records = await storage.load_invocations("named-1")
    assert [(r.name, r.fire_at, r.status) for r in records] == [
        ("cool-off", start + 10, InvocationStatus.COMPLETE),
        ("reminder", start + 30, InvocationStatus.COMPLETE),
    ]


@dataclass
@flow_type
class ZeroTimer:
    label: str

    @flow
    async def run(self) -> str:
        await schedule_timer(0)
        return "immediately"


async def test_a_zero_second_timer_does_not_suspend(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    outcome = await Executor(ZeroTimer("x"), storage, "zero-1", clock=clock).run(lambda f: f.run())

    assert outcome == Completed("zero-1", result="immediately")


@pytest.mark.parametrize("seconds", [-1, math.nan, math.inf, "5", True, None])
def test_invalid_timer_seconds_raise_value_error_naming_the_timer(seconds: object) -> None:
    with pytest.raises(ValueError, match="timer 'fraud-check'"):
        schedule_timer_named(seconds, "fraud-check")  # type: ignore[arg-type]


@dataclass
@flow_type
class NegativeTimer:
    label: str

    @flow
    async def run(self) -> str:
        await schedule_timer_named(-5, "cool-off")
        return "unreachable"


async def test_an_invalid_timer_inside_a_flow_fails_the_flow_and_records_nothing(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    outcome = await Executor(NegativeTimer("x"), storage, "bad-timer-1", clock=clock).run(
        lambda f: f.run()
    )

    assert isinstance(outcome.error, ValueError)
    assert "'cool-off'" in str(outcome.error)
    assert await storage.load_invocations("bad-timer-1") == []


def test_a_timer_outside_a_flow_is_a_pyergon_error() -> None:
    with pytest.raises(PyergonError, match="schedule_timer needs a running flow"):
        schedule_timer(1)
    with pytest.raises(PyergonError, match="schedule_timer needs a running flow"):
        schedule_timer_named(1, "nap")
