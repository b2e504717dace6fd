"""Workers in separate OS processes share the flows of one storage server.

This script starts N worker processes with the ``pyergon worker`` command (the same command you
would run on N machines), schedules shipment flows that each sleep on a durable timer between
two steps, waits for their results and prints which worker completed how many. A flow released
on its timer is picked up by whichever worker is free when the timer is due, so some flows start
on one worker and finish on another. Finally it stops the workers with SIGTERM.

Run it with ``uv run python examples/distributed_workers.py [STORAGE_URL]``. The default URL is
``redis://127.0.0.1:6379/0?prefix=example``; PostgreSQL (``postgresql://user@host:5432/db``) and
a SQLite file (``sqlite:///distributed.db``, one machine only) work the same way.

Every process that shares the storage signs what it stores with the same ``PYERGON_SECRET_KEY``
(Redis and PostgreSQL refuse unsigned pickle unless it is chosen by name); unless you set one,
the script makes a fresh key and hands it to its workers through their environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pyergon import Scheduler, flow, flow_type, schedule_timer_named, step
from pyergon.errors import StorageError
from pyergon.storage import open_storage

DEFAULT_URL = "redis://127.0.0.1:6379/0?prefix=example"
PICKUP_WINDOW_SECONDS = 0.5
FLOW_CLASS = "examples.distributed_workers:Shipment"
"""What the workers serve: this file, imported as a module by ``pyergon worker``."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The workers run here, so that ``examples.distributed_workers`` can be imported."""


@dataclass
@flow_type
class Shipment:
    order_id: str
    pickup_window: float

    @step
    async def reserve_stock(self) -> int:
        # The pid of the worker process that ran this step.
        return os.getpid()

    @step
    async def book_courier(self) -> int:
        return os.getpid()

    @flow
    async def ship(self) -> tuple[int, int]:
        reserved_by = await self.reserve_stock()
        await schedule_timer_named(self.pickup_window, "pickup-window")
        booked_by = await self.book_courier()
        return reserved_by, booked_by


def share_a_key() -> None:
    """Give this script and the workers it starts one signing key, unless one was chosen."""
    if not os.environ.get("PYERGON_SECRET_KEY") and not os.environ.get("PYERGON_UNSIGNED_PICKLE"):
        os.environ["PYERGON_SECRET_KEY"] = secrets.token_hex(32)  # inherited by the workers


def start_workers(url: str, count: int) -> dict[int, tuple[str, subprocess.Popen[bytes]]]:
    """Start ``count`` ``pyergon worker`` processes; return them by pid with their ids."""
    workers = {}
    for number in range(1, count + 1):
        worker_id = f"worker-{number}"
        command = [sys.executable, "-m", "pyergon", "worker", FLOW_CLASS]
        command += ["--storage", url, "--id", worker_id, "--concurrency", "4"]
        process = subprocess.Popen(command, cwd=PROJECT_ROOT)
        workers[process.pid] = (worker_id, process)
    return workers


def stop_workers(workers: dict[int, tuple[str, subprocess.Popen[bytes]]]) -> list[str]:
    """SIGTERM every worker, wait for it, and return the ids of those that did not exit 0."""
    for _, process in workers.values():
        process.send_signal(signal.SIGTERM)
    failed = []
    for worker_id, process in workers.values():
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code != 0:
            failed.append(f"{worker_id} (exit {code})")
    return failed


async def run(url: str, worker_count: int, order_count: int) -> int:
    try:
        storage = await open_storage(url)
    except StorageError as error:
        print(f"Cannot open {url}: {error}", file=sys.stderr)
        print(
            "Pass the URL of a storage you have, for example:\n"
            f"  python {sys.argv[0]} postgresql://postgres@127.0.0.1:5432/test\n"
            f"  python {sys.argv[0]} sqlite:///distributed.db",
            file=sys.stderr,
        )
        return 1
    run_id = uuid.uuid4().hex[:8]
    workers = start_workers(url, worker_count)
    try:
        print(
            f"Started {worker_count} workers: "
            + ", ".join(f"{worker_id} (pid {pid})" for pid, (worker_id, _) in workers.items())
        )
        scheduler = Scheduler(storage)
        started = time.monotonic()
        ids = [
            await scheduler.schedule(
                Shipment(f"ORD-{number:03d}", PICKUP_WINDOW_SECONDS),
                flow_id=f"shipment-{run_id}-{number:03d}",
            )
            for number in range(1, order_count + 1)
        ]
        print(
            f"Scheduled {order_count} shipments, each waiting {PICKUP_WINDOW_SECONDS} s on a timer"
        )
        outcomes = await scheduler.wait(ids, timeout=60)
        elapsed = time.monotonic() - started
        print(f"All {order_count} shipments completed in {elapsed:.1f} s")
        results = [outcomes[flow_id].result for flow_id in ids]
        completed_by = Counter(workers[booked_by][0] for _, booked_by in results)
        for pid, (worker_id, _) in sorted(workers.items(), key=lambda item: item[1][0]):
            print(f"  {worker_id} (pid {pid}) completed {completed_by[worker_id]} flow(s)")
        moved = sum(reserved_by != booked_by for reserved_by, booked_by in results)
        print(
            f"{moved} of {order_count} flows finished on another worker than the one that "
            "started them"
        )
        for flow_id in ids:
            await storage.delete_flow(flow_id)
    finally:
        failed = stop_workers(workers)
        await storage.close()
    if failed:
        print(f"Workers that did not stop cleanly: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"Stopped {worker_count} workers")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default: {DEFAULT_URL}")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default: 3)")
    parser.add_argument("--orders", type=int, default=12, help="flows to run (default: 12)")
    arguments = parser.parse_args()
    share_a_key()
    raise SystemExit(asyncio.run(run(arguments.url, arguments.workers, arguments.orders)))


if __name__ == "__main__":
    main()
