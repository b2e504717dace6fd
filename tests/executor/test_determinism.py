"""Recorded values (DESIGN §3.12): now(), uuid4() and random() replay unchanged."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyergon
from pyergon import Completed, Executor, Suspended, await_external_signal, flow, flow_type, step
from pyergon.clock import ManualClock
from pyergon.core import InvocationStatus, OperationKind
from pyergon.executor.signal import send_signal
from pyergon.storage.base import ExecutionLog


@dataclass
@flow_type
class Raffle:
    label: str
    seen: list[tuple[object, ...]] = field(default_factory=list, init=False, compare=False)

    @step
    async def stamp(self) -> tuple[datetime, uuid.UUID]:
        return await pyergon.now(), await pyergon.uuid4()

    @flow
    async def run(self) -> tuple[object, ...]:
        values = (
            await pyergon.now(),
            await pyergon.uuid4(),
            await pyergon.random(),
            await self.stamp(),
        )
        self.seen.append(values)
        await await_external_signal("draw")
        return values


async def test_recorded_values_are_the_same_on_replay(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    first = Raffle("x")
    outcome = await Executor(first, storage, "raffle-1", clock=clock).run(lambda f: f.run())
    assert isinstance(outcome, Suspended)
    clock.advance(3600)
    await send_signal(storage, "raffle-1", "draw", None)
    second = Raffle("x")

    done = await Executor(second, storage, "raffle-1", clock=clock).run(lambda f: f.run())

    (recorded,) = first.seen
    assert second.seen == [recorded]
    assert done == Completed("raffle-1", result=recorded)
    moment, identifier, number, (stamped_at, stamped_id) = recorded
    assert moment == datetime.fromtimestamp(clock.now() - 3600, UTC)
    assert isinstance(identifier, uuid.UUID)
    assert isinstance(number, float)
    assert 0 <= number < 1
    assert stamped_at == moment
    assert stamped_id != identifier


async def test_recorded_values_are_value_records_in_the_log(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(Raffle("x"), storage, "raffle-2", clock=clock).run(lambda f: f.run())

    records = await storage.load_invocations("raffle-2")
    values = [(r.position, r.name, r.status) for r in records if r.kind is OperationKind.VALUE]
    assert values == [
        ("1", "now", InvocationStatus.COMPLETE),
        ("2", "uuid4", InvocationStatus.COMPLETE),
        ("3", "random", InvocationStatus.COMPLETE),
        ("4.1", "now", InvocationStatus.COMPLETE),
        ("4.2", "uuid4", InvocationStatus.COMPLETE),
    ]


async def test_outside_a_flow_recorded_values_are_live_and_stored_nowhere(
    storage: ExecutionLog,
) -> None:
    before = datetime.now(UTC)
    moment = await pyergon.now()
    first_id, second_id = await pyergon.uuid4(), await pyergon.uuid4()
    number = await pyergon.random()

    assert before <= moment <= datetime.now(UTC)
    assert moment.tzinfo is UTC
    assert first_id != second_id
    assert first_id.version == 4
    assert 0 <= number < 1
    assert await storage.list_flows() == []
