"""The ``executor_sequential`` workload on DBOS Transact, run with the DBOS venv's interpreter.

``python dbos_workload.py DIRECTORY N [--style sync|async] [--sqlite default|wal]``: N workflows
of three trivial steps, one after another, on a DBOS SQLite system database in DIRECTORY (empty;
made by the caller). ``--sqlite wal`` sets on every connection DBOS opens what pyergon sets on
its own (``journal_mode=WAL``, ``synchronous=NORMAL``: no fsync per commit); ``default`` leaves
DBOS's settings (a rollback journal, ``synchronous=FULL``). Prints one JSON object: wall seconds,
per-workflow milliseconds, the DBOS version and this process's peak RSS. This file is not part
of the project: it imports only DBOS (and its SQLAlchemy) and the stdlib.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy
from dbos import DBOS, DBOSConfig, SetWorkflowID


@DBOS.step()
def first(number: int) -> int:
    return number + 1


@DBOS.step()
def second(value: int) -> int:
    return value * 2


@DBOS.step()
def third(value: int) -> int:
    return value - 1


@DBOS.workflow()
def three_steps(number: int) -> int:
    return third(second(first(number)))


@DBOS.step()
async def first_async(number: int) -> int:
    return number + 1


@DBOS.step()
async def second_async(value: int) -> int:
    return value * 2


@DBOS.step()
async def third_async(value: int) -> int:
    return value - 1


@DBOS.workflow()
async def three_steps_async(number: int) -> int:
    return await third_async(await second_async(await first_async(number)))


def _check(number: int, result: int) -> None:
    expected = (number + 1) * 2 - 1
    if result != expected:
        raise RuntimeError(f"workflow {number} returned {result}, expected {expected}")


def _run_sync(n: int, samples: list[float]) -> None:
    for number in range(n):
        started = time.perf_counter()
        with SetWorkflowID(f"flow-{number}"):
            result = three_steps(number)
        samples.append((time.perf_counter() - started) * 1000)
        _check(number, result)


async def _run_async(n: int, samples: list[float]) -> None:
    for number in range(n):
        started = time.perf_counter()
        with SetWorkflowID(f"flow-{number}"):
            result = await three_steps_async(number)
        samples.append((time.perf_counter() - started) * 1000)
        _check(number, result)


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _like_pyergon(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("n", type=int)
    parser.add_argument("--style", choices=("sync", "async"), default="sync")
    parser.add_argument("--sqlite", choices=("default", "wal"), default="default")
    args = parser.parse_args()
    if args.sqlite == "wal":  # every engine, so the one DBOS makes for its system database too
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _like_pyergon)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.chdir(args.directory)  # no dbos-config.yaml or other state is picked up from elsewhere
    database = os.path.join(args.directory, "dbos.sqlite")
    config: DBOSConfig = {
        "name": "pyergon-bench",
        "system_database_url": f"sqlite:///{database}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    samples: list[float] = []
    run: Callable[[], Any] = (
        (lambda: _run_sync(args.n, samples))
        if args.style == "sync"
        else (lambda: asyncio.run(_run_async(args.n, samples)))
    )
    try:
        started = time.perf_counter()
        run()
        wall = time.perf_counter() - started
    finally:
        DBOS.destroy()
    print(
        json.dumps(
            {
                "wall_s": wall,
                "latencies_ms": samples,
                "dbos_version": importlib.metadata.version("dbos"),
                "style": args.style,
                "sqlite": args.sqlite,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
