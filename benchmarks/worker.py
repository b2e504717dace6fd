"""A benchmark worker process: ``python -m benchmarks.worker URL WORKER_ID MAX_CONCURRENT``.

It connects, registers the benchmark flows and prints ``ready``; it starts serving when it reads
``go`` on stdin, prints ``finished N`` whenever its count of finished flows changes, shuts down
on SIGTERM (or when stdin closes) and prints ``peak_rss_mb X`` as it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from benchmarks.flows import FLOW_TYPES
from benchmarks.stats import peak_rss_mb
from pyergon import Worker
from pyergon.storage import open_storage

REPORT_INTERVAL = 0.005
"""Seconds between checks of the finished count; bounds the error of the parent's wall time."""


def say(line: str) -> None:
    print(line, flush=True)


async def serve(url: str, worker_id: str, max_concurrent_flows: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    storage = await open_storage(url)
    try:
        worker = Worker(storage, worker_id, max_concurrent_flows=max_concurrent_flows)
        for flow_class in FLOW_TYPES:
            await worker.register(flow_class)
        say("ready")
        if (await commands.readline()).strip() != b"go":
            return  # stdin closed: the parent gave up before starting us
        handle = await worker.start()
        watch_stdin = asyncio.create_task(commands.read())  # EOF means the parent is gone
        watch_stdin.add_done_callback(lambda _: stop.set())
        reported = -1
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
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, worker_id, max_concurrent = sys.argv[1:4]
    asyncio.run(serve(url, worker_id, int(max_concurrent)))
    say(f"peak_rss_mb {peak_rss_mb()}")


if __name__ == "__main__":
    main()
