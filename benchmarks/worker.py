"""A benchmark worker process.

``python -m benchmarks.worker URL WORKER_ID MAX_CONCURRENT [--lease-seconds S] [--types A,B]
[--no-reports]``. It connects, registers the benchmark flows (``--types``: these classes of
``flows.py`` instead of the default three) and prints ``ready``; it starts serving when it reads
``go`` on stdin, prints ``finished N`` whenever its count of finished flows changes (not with
``--no-reports``, which leaves nothing but the worker to wake the process), shuts down on SIGTERM
(or when stdin closes) and prints ``peak_rss_mb X`` as it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from benchmarks.flows import FLOW_TYPES, FLOWS_BY_NAME, WORKER_ID_VARIABLE
from benchmarks.stats import peak_rss_mb
from pyergon import Worker
from pyergon.storage import open_storage

REPORT_INTERVAL = 0.005
"""Seconds between checks of the finished count; bounds the error of the parent's wall time."""


def say(line: str) -> None:
    print(line, flush=True)


async def serve(
    url: str,
    worker_id: str,
    max_concurrent_flows: int,
    *,
    lease_seconds: float | None = None,
    flow_types: tuple[type, ...] = FLOW_TYPES,
    reports: bool = True,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    storage = await open_storage(url)
    try:
        if lease_seconds is None:  # the Worker's own default lease
            worker = Worker(storage, worker_id, max_concurrent_flows=max_concurrent_flows)
        else:
            worker = Worker(
                storage,
                worker_id,
                max_concurrent_flows=max_concurrent_flows,
                lease_seconds=lease_seconds,
            )
        for flow_class in flow_types:
            await worker.register(flow_class)
        say("ready")
        if (await commands.readline()).strip() != b"go":
            return  # stdin closed: the parent gave up before starting us
        handle = await worker.start()
        watch_stdin = asyncio.create_task(commands.read())  # EOF means the parent is gone
        watch_stdin.add_done_callback(lambda _: stop.set())
        reported = -1
        if not reports:  # nothing of ours wakes the process: its CPU time is the worker's
            await stop.wait()
        while not stop.is_set():
            if worker.flows_finished != reported:
                reported = worker.flows_finished
                say(f"finished {reported}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_INTERVAL)
        watch_stdin.cancel()
        await handle.shutdown(deadline=5.0)
    finally:
        await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    parser.add_argument("url")
    parser.add_argument("worker_id")
    parser.add_argument("max_concurrent", type=int)
    parser.add_argument("--lease-seconds", type=float)
    parser.add_argument("--types", help="comma-separated class names from benchmarks/flows.py")
    parser.add_argument("--no-reports", action="store_true", help="do not print finished counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ[WORKER_ID_VARIABLE] = args.worker_id  # for step bodies that note who ran them
    types = FLOW_TYPES
    if args.types:
        types = tuple(FLOWS_BY_NAME[name] for name in args.types.split(","))
    asyncio.run(
        serve(
            args.url,
            args.worker_id,
            args.max_concurrent,
            lease_seconds=args.lease_seconds,
            flow_types=types,
            reports=not args.no_reports,
        )
    )
    say(f"peak_rss_mb {peak_rss_mb()}")


if __name__ == "__main__":
    main()
