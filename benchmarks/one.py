"""Run one scenario on one backend in this process and print its JSON line.

``python -m benchmarks.one SCENARIO BACKEND --runs R [--n N | --quick] [--variant V]``
(``--variant`` for the scenarios that have variants, and only for them). ``python -m
benchmarks`` starts one such process per line, so each line's peak RSS is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import traceback
from collections.abc import Awaitable

from benchmarks.result import RunResult, error_line, result_line
from benchmarks.scenarios import SCENARIOS


async def _stoppable(run: Awaitable[RunResult]) -> RunResult:
    """Await ``run``; SIGTERM cancels it, so its storage and worker processes are cleaned up."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.one")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("backend")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variant")
    args = parser.parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    n = args.n or scenario.size(args.backend, quick=args.quick)
    runs: list[RunResult] = []
    loads: list[float] = []
    try:
        run_once = scenario.runner(args.variant)
        for number in range(1, args.runs + 1):
            # Before the run, so it tells what else kept the machine busy, not the run itself.
            loads.append(round(os.getloadavg()[0], 2))
            runs.append(asyncio.run(_stoppable(run_once(args.backend, n))))
            print(
                f"  {scenario.name} on {args.backend}, run {number}/{args.runs}: "
                f"{runs[-1].wall_s:.3f} s (load average before it: {loads[-1]})",
                file=sys.stderr,
            )
    except (Exception, asyncio.CancelledError) as error:
        traceback.print_exc()
        line = error_line(
            scenario.name, args.backend, f"{type(error).__name__}: {error}", variant=args.variant
        )
        print(json.dumps(line), flush=True)
        return 1
    line = result_line(
        scenario.name,
        args.backend,
        n,
        runs,
        latency_of=scenario.latency_of,
        variant=args.variant,
        loads_before_runs=loads,
    )
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
