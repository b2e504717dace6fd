"""The seed README's "Distributed Workers with Timers" example, run verbatim.

The block uses ``asyncio`` without importing it: in the README it follows the quick start,
which imports it. The test runs it the way a reader would, after that import, and checks the
database it leaves behind.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from pyergon.core import TaskStatus
from pyergon.storage.sqlite import SqliteExecutionLog

DISTRIBUTED_WORKERS = """\
from dataclasses import dataclass
from pyergon import flow, flow_type, step, Scheduler, Worker
from pyergon.storage.sqlite import SqliteExecutionLog
from pyergon.executor.timer import schedule_timer_named
from pyergon.core import TaskStatus

@dataclass
@flow_type
class TimedOrderProcessor:
    order_id: str

    @step
    async def wait_for_fraud_check(self):
        print(f"[{self.order_id}] Waiting for fraud check...")
        await schedule_timer_named(2.0, f"fraud-{self.order_id}")
        print(f"[{self.order_id}] Fraud check complete")

    @flow
    async def process(self):
        await self.wait_for_fraud_check()
        return "completed"

async def main():
    # Setup
    storage = SqliteExecutionLog("distributed.db")
    await storage.connect()

    scheduler = Scheduler(storage)

    # Start workers with timer processing
    worker1 = Worker(storage, "worker-1", enable_timers=True)
    await worker1.register(TimedOrderProcessor)
    handle1 = await worker1.start()

    worker2 = Worker(storage, "worker-2", enable_timers=True)
    await worker2.register(TimedOrderProcessor)
    handle2 = await worker2.start()

    # Schedule flows
    for i in range(3):
        order = TimedOrderProcessor(f"ORD-{i:03d}")
        await scheduler.schedule(order)

    # Wait for completion
    await asyncio.sleep(5)

    # Shutdown
    await handle1.shutdown()
    await handle2.shutdown()
    await storage.close()

asyncio.run(main())
"""
"""The second example of the original README, copied verbatim."""


@pytest.mark.slow
def test_the_seed_distributed_workers_example_runs_verbatim(tmp_path: Path) -> None:
    script = tmp_path / "distributed_workers.py"
    script.write_text("import asyncio\n" + DISTRIBUTED_WORKERS, encoding="utf-8")

    finished = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    for order in ("ORD-000", "ORD-001", "ORD-002"):
        assert f"[{order}] Fraud check complete" in finished.stdout
    flows = asyncio.run(_stored_flows(tmp_path / "distributed.db"))
    assert len(flows) == 3
    assert {flow.status for flow in flows} == {TaskStatus.COMPLETE}


async def _stored_flows(path: Path) -> list:  # type: ignore[type-arg]
    async with SqliteExecutionLog(path) as storage:
        return await storage.list_flows()
