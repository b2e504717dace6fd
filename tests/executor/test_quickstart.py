"""The seed README's quick start, run verbatim in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICK_START = """\
import asyncio
from dataclasses import dataclass
from pyergon import flow, flow_type, step, Executor
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
"""
"""The first example of the original README, copied verbatim; it must keep working as is."""


def test_the_seed_quick_start_runs_verbatim(tmp_path: Path) -> None:
    script = tmp_path / "quick_start.py"
    script.write_text(QUICK_START, encoding="utf-8")

    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines == [
        "[ORD-001] Validating...",
        "[ORD-001] Processing $100.0...",
        "Result: payment-ORD-001",
    ]
    assert finished.stderr == ""
