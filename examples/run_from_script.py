"""Run a flow from a plain script: one call, no event loop, no worker.

``pyergon.run`` runs the flow to its end and returns its result, as ``asyncio.run`` returns a
coroutine's. The flow is durable all the same: its steps are recorded in the storage (by default
``sqlite:///pyergon.db`` in the current directory, where the ``pyergon`` command looks too), it
sleeps on a durable timer, and running it again under the same id returns the stored result
without running a step twice. Kill the script during the timer and run it again: it goes on
after the steps it already did.

Run it with ``uv run python examples/run_from_script.py [STORAGE_URL]``, then
``uv run pyergon show report-north`` to see its history.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyergon
from pyergon import flow, flow_type, schedule_timer, step


@dataclass
@flow_type
class SalesReport:
    region: str

    @step
    async def load(self) -> list[float]:
        print(f"Loading the sales of {self.region}...")
        return [120.0, 80.5, 99.5]

    @step
    async def summarise(self, sales: list[float]) -> str:
        print(f"Summarising {len(sales)} sales...")
        return f"{self.region}: {len(sales)} sales, {sum(sales):.2f} in total"

    @flow
    async def run(self) -> str:
        sales = await self.load()
        await schedule_timer(0.3)  # a durable timer: a restarted script waits out the rest
        return await self.summarise(sales)


def main() -> None:
    storage = sys.argv[1] if len(sys.argv) > 1 else None  # None: sqlite:///pyergon.db
    report = pyergon.run(SalesReport("north"), storage=storage, flow_id="report-north")
    print(f"Result: {report}")
    again = pyergon.run(SalesReport("north"), storage=storage, flow_id="report-north")
    print(f"Again, from storage: {again}")


if __name__ == "__main__":
    main()
