"""A script on SQLite that raises before ``storage.close()`` exits, as Python scripts do.

The backend's threads (its connection's thread, its checkpoint thread) must not keep a process
alive whose main code has ended; each case runs as a real script under a deadline.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_PRELUDE = """
import asyncio, sys
from dataclasses import dataclass

from pyergon import Scheduler, Worker, flow, flow_type, step
from pyergon.storage.sqlite import SqliteExecutionLog


@dataclass
@flow_type(name="ExitFlow")
class ExitFlow:
    n: int

    @step
    async def slow(self) -> int:
        await asyncio.sleep(0.05)
        return self.n

    @flow
    async def run(self) -> int:
        return await self.slow()
"""

_SCRIPTS = {
    "opened": """
async def main(path):
    storage = SqliteExecutionLog(path)
    await storage.connect()
    await storage.get_flow("x")
    raise RuntimeError("boom before close")
""",
    "in memory": """
async def main(path):
    storage = await SqliteExecutionLog.in_memory()
    raise RuntimeError("boom before close")
""",
    "worker running": """
async def main(path):
    storage = SqliteExecutionLog(path)
    await storage.connect()
    worker = Worker(storage, "w")
    worker.register(ExitFlow)
    await worker.start()
    scheduler = Scheduler(storage)
    first = await scheduler.schedule(ExitFlow(1))
    await scheduler.wait(first, timeout=10)
    for n in range(20):
        await scheduler.schedule(ExitFlow(n + 2))  # running and queued when it raises
    await asyncio.sleep(0.01)
    raise RuntimeError("boom before close")
""",
    "waiting for work": """
async def main(path):
    storage = SqliteExecutionLog(path)
    await storage.connect()
    waiting = asyncio.create_task(storage.wait_for_work(60))
    await asyncio.sleep(0.05)
    raise RuntimeError("boom before close")
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(_SCRIPTS))
def test_a_script_that_raises_before_close_exits(tmp_path: Path, case: str) -> None:
    script = _PRELUDE + _SCRIPTS[case] + "\nasyncio.run(main(sys.argv[1]))\n"
    finished = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "flows.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 1, finished.stderr
    assert finished.stderr.rstrip().endswith("RuntimeError: boom before close")
