"""A worker process whose flow's ``async def`` step blocks the event loop past the lease.

Run as ``python blocking_worker.py STORAGE_URL WORKER_ID SIDE_EFFECT_FILE LEASE_SECONDS``: it
serves :class:`Blocker` until SIGTERM. The step body appends ``"<flow_id> block start"`` to the
side-effect file (one ``write`` on an ``O_APPEND`` descriptor) and then calls ``time.sleep`` for
:data:`BLOCK_SECONDS`, as a long pandas call in an ``async def`` step would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass

from pyergon import Worker, flow, flow_type, step
from pyergon.storage import open_storage

BLOCK_SECONDS = 2.5
"""How long the step blocks the loop: several leases of the test."""

_side_effects: list[int] = []


@dataclass
@flow_type(name="Blocker")
class Blocker:
    label: str

    @step
    async def block(self) -> str:
        os.write(_side_effects[0], f"{self.label} block start\n".encode())
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - the point: a step that blocks the loop
        return f"{self.label} done"

    @flow
    async def run(self) -> str:
        return await self.block()


async def serve(url: str, worker_id: str, lease_seconds: float) -> None:
    storage = await open_storage(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    try:
        worker = Worker(storage, worker_id, lease_seconds=lease_seconds)
        worker.register(Blocker)
        handle = await worker.start()
        print(f"{worker_id} serving", flush=True)
        await stop.wait()
        await handle.shutdown(deadline=10)
    finally:
        await storage.close()


if __name__ == "__main__":
    url, worker_id, side_effect_file, lease = sys.argv[1:5]
    _side_effects.append(os.open(side_effect_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    asyncio.run(serve(url, worker_id, float(lease)))
