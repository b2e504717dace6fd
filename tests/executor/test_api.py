"""Small API conveniences: an executor without an id, registering without await."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pyergon import Executor, Scheduler, Worker, flow, flow_type, step
from pyergon.storage.memory import InMemoryExecutionLog


@dataclass
@flow_type
class Double:
    value: int

    @step
    async def double(self) -> int:
        return self.value * 2

    @flow
    async def run(self) -> int:
        return await self.double()


async def test_an_executor_without_an_id_makes_a_new_one_per_flow() -> None:
    storage = InMemoryExecutionLog()
    first, second = Executor(Double(2), storage), Executor(Double(3), storage)

    assert first.flow_id != second.flow_id
    uuid.UUID(first.flow_id)  # a UUID in its usual text form
    assert (await first.run(lambda f: f.run())).result == 4
    assert (await second.run(lambda f: f.run())).result == 6
    stored = await storage.get_flow(first.flow_id)
    assert stored is not None and stored.result is not None


async def test_register_takes_effect_without_await_and_may_still_be_awaited() -> None:
    storage = InMemoryExecutionLog()
    flow_id = await Scheduler(storage).schedule(Double(5), flow_id="double-5")
    plain, awaited = Worker(storage, "plain"), Worker(storage, "awaited")

    plain.register(Double)
    await awaited.register(Double)

    assert plain.registered_types == awaited.registered_types == ["Double"]
    assert await plain.run_until_idle() == 1
    stored = await storage.get_flow(flow_id)
    assert stored is not None and stored.status.value == "COMPLETE"
