"""A worker process of the multi-process test, and the flow type it runs.

Run as ``python mp_worker.py STORAGE_URL WORKER_ID SIDE_EFFECT_FILE``: it opens the storage,
serves :class:`RelayFlow` with a :class:`~pyergon.Worker` until SIGTERM (or SIGINT), then shuts
the worker down gracefully and exits 0. Every step body appends ``"<flow_id> <position> start"``
to the side-effect file before doing its work, with one ``write`` on an ``O_APPEND`` descriptor,
so the test can count across processes how often each body ran, even in a process it killed.

Once a file named like the side-effect file with the suffix ``.hold`` exists, every step body
this process starts afterwards stops after its start line and never finishes: the test creates
it for the worker it is about to kill, so the kill lands while that worker is inside steps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from pyergon import (
    Worker,
    await_external_signal,
    flow,
    flow_type,
    idempotency_key,
    schedule_timer_named,
    step,
)
from pyergon.storage import open_storage

LEASE_SECONDS = 2.0
"""Short, so the flows of a killed worker are claimed again quickly."""
MAX_CONCURRENT_FLOWS = 8
"""Slots per worker: a killed worker cuts at most this many steps, one per flow it held."""
STEP_SECONDS = 0.02
"""How long a step body works after writing its start line; a kill often lands in it."""
SIGNAL_NAME = "approval"
SIGNAL_POSITION = 4
"""Log position of the signal wait in a flow that waits for one."""

_side_effects: list[int] = []  # the descriptor of this process's side-effect file, once opened
_hold_files: list[Path] = []  # the file whose existence makes step bodies stop, once known


def hold_file(side_effect_file: str | Path) -> Path:
    """The file that makes the worker writing ``side_effect_file`` hold its step bodies."""
    return Path(side_effect_file).with_suffix(".hold")


def signal_value(number: int) -> str:
    """The value the test sends to flow ``number``."""
    return f"ok-{number}"


def expected_result(number: int, wants_signal: bool) -> str:
    """What flow ``number`` returns."""
    approval = signal_value(number) if wants_signal else "auto"
    return f"{number}:{number * 3 + 7}:{approval}"


def step_positions(wants_signal: bool) -> list[int]:
    """Log positions of the three steps: the timer is at 2, the signal wait (if any) at 4."""
    return [1, 3, 5] if wants_signal else [1, 3, 4]


async def _work() -> None:
    flow_id, _, position = idempotency_key().rpartition(":")
    os.write(_side_effects[0], f"{flow_id} {position} start\n".encode())
    if _hold_files[0].exists():
        await asyncio.Event().wait()  # held until the test kills this process
    await asyncio.sleep(STEP_SECONDS)


@dataclass
@flow_type
class RelayFlow:
    number: int
    timer_seconds: float
    wants_signal: bool

    @step
    async def fetch(self) -> int:
        await _work()
        return self.number * 3

    @step
    async def enrich(self, fetched: int) -> int:
        await _work()
        return fetched + 7

    @step
    async def settle(self, enriched: int, approval: str) -> str:
        await _work()
        return f"{self.number}:{enriched}:{approval}"

    @flow
    async def run(self) -> str:
        fetched = await self.fetch()
        await schedule_timer_named(self.timer_seconds, "pause")
        enriched = await self.enrich(fetched)
        approval = await await_external_signal(SIGNAL_NAME) if self.wants_signal else "auto"
        return await self.settle(enriched, approval)


async def serve(url: str, worker_id: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    storage = await open_storage(url)
    try:
        worker = Worker(
            storage,
            worker_id,
            max_concurrent_flows=MAX_CONCURRENT_FLOWS,
            lease_seconds=LEASE_SECONDS,
        )
        await worker.register(RelayFlow)
        handle = await worker.start()
        print(f"{worker_id} serving (pid {os.getpid()})", flush=True)
        await stop.wait()
        await handle.shutdown()
        print(f"{worker_id} stopped after {worker.flows_finished} flows", flush=True)
    finally:
        await storage.close()


def main(arguments: list[str]) -> None:
    url, worker_id, side_effect_file = arguments
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _side_effects.append(os.open(side_effect_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    _hold_files.append(hold_file(side_effect_file))
    asyncio.run(serve(url, worker_id))


if __name__ == "__main__":
    main(sys.argv[1:])
