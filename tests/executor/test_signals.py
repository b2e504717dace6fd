"""External signals (DESIGN §3.7): kept when early, suspend when late, delivered once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from pyergon import Completed, Executor, Suspended, await_external_signal, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import InvocationStatus, OperationKind, SuspendReason, TaskStatus
from pyergon.errors import FlowNotFoundError, FlowStateError, PyergonError, SerializationError
from pyergon.executor.signal import send_signal
from pyergon.executor.timer import schedule_timer_named
from pyergon.storage._flows import find_signal
from pyergon.storage.base import ExecutionLog
from tests.records import record_at


@dataclass
@flow_type
class Approval:
    document: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def submit(self) -> str:
        self.body_runs.append("submit")
        return f"submitted {self.document}"

    @flow
    async def run(self) -> tuple[str, object]:
        submitted = await self.submit()
        decision = await await_external_signal("approval")
        return submitted, decision


async def create_waiting_flow(storage: ExecutionLog, flow_id: str) -> Suspended:
    outcome = await Executor(Approval("contract"), storage, flow_id).run(lambda f: f.run())
    assert isinstance(outcome, Suspended)
    return outcome


async def test_a_flow_waiting_for_a_signal_is_suspended_until_it_arrives(
    storage: ExecutionLog,
) -> None:
    outcome = await create_waiting_flow(storage, "approve-1")

    assert outcome.reason is SuspendReason.SIGNAL
    assert outcome.waiting_on == ("approval",)
    assert outcome.wake_at is None
    stored = await storage.get_flow("approve-1")
    assert stored is not None
    assert stored.status is TaskStatus.SUSPENDED
    waiting = await record_at(storage, "approve-1", 2)
    assert waiting is not None
    assert waiting.kind is OperationKind.SIGNAL
    assert waiting.status is InvocationStatus.WAITING_FOR_SIGNAL


async def test_a_signal_sent_while_suspended_resumes_the_flow_with_its_value(
    storage: ExecutionLog,
) -> None:
    await create_waiting_flow(storage, "approve-2")
    assert await send_signal(storage, "approve-2", "approval", {"by": "bo", "ok": True})
    resumed = Approval("contract")

    outcome = await Executor(resumed, storage, "approve-2").run(lambda f: f.run())

    assert outcome == Completed(
        "approve-2", result=("submitted contract", {"by": "bo", "ok": True})
    )
    assert resumed.body_runs == []


@dataclass
@flow_type
class CoolOffThenSignal:
    label: str

    @flow
    async def run(self) -> object:
        await schedule_timer_named(10, "cool-off")
        return await await_external_signal("go")


async def test_a_signal_sent_before_the_flow_waits_is_kept_and_returned_at_once(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    executor = Executor(CoolOffThenSignal("x"), storage, "early-1", clock=clock)
    cooling_off = await executor.run(lambda f: f.run())
    assert isinstance(cooling_off, Suspended)
    assert cooling_off.reason is SuspendReason.TIMER

    assert await send_signal(storage, "early-1", "go", 42) is True
    clock.advance(10)
    outcome = await executor.run(lambda f: f.run())

    assert outcome == Completed("early-1", result=42)
    received = await record_at(storage, "early-1", 2)
    assert received is not None
    assert (received.kind, received.status) == (OperationKind.SIGNAL, InvocationStatus.COMPLETE)


async def test_a_second_send_of_the_same_name_is_ignored_and_the_first_value_kept(
    storage: ExecutionLog,
) -> None:
    await create_waiting_flow(storage, "approve-5")

    assert await send_signal(storage, "approve-5", "approval", "first") is True
    assert await send_signal(storage, "approve-5", "approval", "second") is False

    outcome = await Executor(Approval("contract"), storage, "approve-5").run(lambda f: f.run())
    assert outcome.result == ("submitted contract", "first")
    assert await send_signal(storage, "approve-5", "approval", "third") is False
    # A new signal for a finished flow would never be read: refused, nothing stored.
    with pytest.raises(FlowStateError, match="already finished"):
        await send_signal(storage, "approve-5", "late", "too late")
    assert await find_signal(storage, "approve-5", "late") is None


async def test_sending_to_an_unknown_flow_raises_flow_not_found(storage: ExecutionLog) -> None:
    with pytest.raises(FlowNotFoundError, match="'nobody'") as raised:
        await send_signal(storage, "nobody", "approval", "yes")

    assert isinstance(raised.value, PyergonError)
    assert isinstance(raised.value, LookupError)
    assert await find_signal(storage, "nobody", "approval") is None


async def test_an_unserializable_signal_value_is_refused_and_nothing_is_stored(
    storage: ExecutionLog,
) -> None:
    await create_waiting_flow(storage, "approve-6")

    with pytest.raises(SerializationError, match="signal 'approval'") as raised:
        await send_signal(storage, "approve-6", "approval", threading.Lock())

    assert "'approve-6'" in str(raised.value)
    assert await find_signal(storage, "approve-6", "approval") is None
    still_waiting = await Executor(Approval("contract"), storage, "approve-6").run(
        lambda f: f.run()
    )
    assert isinstance(still_waiting, Suspended)


def test_waiting_for_a_signal_outside_a_flow_is_a_pyergon_error() -> None:
    with pytest.raises(PyergonError, match="await_external_signal needs a running flow"):
        await_external_signal("approval")
