"""The monitor's text form cannot be restyled by what a flow's error says."""

from __future__ import annotations

from dataclasses import dataclass

from pyergon import Executor, flow, flow_type, step
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog


@flow_type
@dataclass
class Loud:
    """A flow whose step fails with a message that holds terminal escapes."""

    @step
    async def shout(self) -> None:
        raise ValueError("\x1b[31mred alert\x1b[0m\x07")

    @flow
    async def run(self) -> None:
        await self.shout()


async def test_escapes_in_an_error_do_not_reach_the_monitor_text() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Loud(), storage, "loud").run(lambda f: f.run())
    session = Session(storage)
    try:
        monitor = await session.monitor(all_flows=True)
        text = monitor.text()
    finally:
        await session.close()

    assert "red alert" in text
    assert "\x1b" not in text and "\x07" not in text
