"""The README's quick start: a two-step order flow run once by the direct Executor.

Run it with ``uv run python examples/quickstart.py``. The code below is the seed README's first
example; only ruff has sorted its imports and spaced it.
"""

import asyncio
from dataclasses import dataclass

from pyergon import Executor, flow, flow_type, step
from pyergon.storage.sqlite import SqliteExecutionLog


@dataclass
@flow_type
class OrderProcessor:
    order_id: str
    amount: float

    @step
    async def validate(self):
        print(f"[{self.order_id}] Validating...")
        return self.amount > 0

    @step
    async def process_payment(self):
        print(f"[{self.order_id}] Processing ${self.amount}...")
        return f"payment-{self.order_id}"

    @flow
    async def run(self):
        await self.validate()
        return await self.process_payment()


async def main():
    # Setup storage
    storage = await SqliteExecutionLog.in_memory()

    # Execute workflow
    order = OrderProcessor("ORD-001", 100.0)
    executor = Executor(order, storage, "order-001")
    outcome = await executor.run(lambda o: o.run())

    print(f"Result: {outcome.result}")

    await storage.close()


asyncio.run(main())
