"""A step that blocks its worker's event loop past the lease does not run twice.

The heartbeat renews leases from a thread of its own, with its own connection, so a second
worker process on the same storage never claims the flow while the first is stuck in the step.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from pyergon import Scheduler
from pyergon.core import TaskStatus
from pyergon.storage import open_storage
from tests.waiting import flow_reaches
from tests.worker import blocking_worker
from tests.worker.test_multiprocess import storage_url

__all__ = ["storage_url"]  # the fixture, shared with the multi-process test

LEASE_SECONDS = 0.5
"""A fifth of the time the step blocks: without off-loop heartbeats the lease runs out."""


def start_worker(
    url: str, worker_id: str, side_effects: Path, log: Path
) -> subprocess.Popen[bytes]:
    command = [sys.executable, blocking_worker.__file__, url, worker_id, str(side_effects)]
    with log.open("wb") as output:
        return subprocess.Popen(
            [*command, str(LEASE_SECONDS)], stdout=output, stderr=subprocess.STDOUT
        )


async def wait_for_line(path: Path, fragment: str, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not (path.exists() and fragment in path.read_text()):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.01)


async def test_a_step_blocking_the_loop_past_the_lease_runs_once(
    storage_url: str, tmp_path: Path
) -> None:
    side_effects = tmp_path / "side-effects"
    storage = await open_storage(storage_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        flow_id = await Scheduler(storage).schedule(blocking_worker.Blocker("b1"))
        workers.append(start_worker(storage_url, "first", side_effects, tmp_path / "first.log"))
        await wait_for_line(side_effects, "b1 block start")
        workers.append(start_worker(storage_url, "second", side_effects, tmp_path / "second.log"))
        await wait_for_line(tmp_path / "second.log", "second serving")

        done = await flow_reaches(storage, flow_id, TaskStatus.COMPLETE, within=30)
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait(timeout=30)
        await storage.close()

    starts = side_effects.read_text().splitlines()
    logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}  # noqa: ASYNC240
    assert starts == ["b1 block start"], logs
    assert done.worker_id == "first"
    assert "lease" not in logs["first.log"], logs  # no lease lost, nothing to warn about
