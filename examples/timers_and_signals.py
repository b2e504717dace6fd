"""A flow that waits on a durable timer and on a signal, driven by the direct Executor.

An expense report is submitted, must sit out a cooling-off period (a durable timer) and needs a
manager's approval (a signal). The first run stops at the timer and returns ``Suspended`` with
its wake time. The manager approves while the flow is suspended, before it even waits for the
approval: the signal is kept. Once the wake time has passed, the second run replays the
submission, fires the timer, picks up the approval and completes.

Everything lives in a SQLite file, so each run could as well be a separate process, days apart.
Run it with ``uv run python examples/timers_and_signals.py [PATH.db]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pyergon import (
    Completed,
    Executor,
    Suspended,
    await_external_signal,
    flow,
    flow_type,
    schedule_timer_named,
    send_signal,
    step,
)
from pyergon.storage.sqlite import SqliteExecutionLog

COOLING_OFF_SECONDS = 1.0


@dataclass
@flow_type
class ExpenseReport:
    report_id: str
    amount: float

    @step
    async def submit(self) -> str:
        print(f"[{self.report_id}] submitted {self.amount:.2f} EUR for approval")
        return f"ticket-{self.report_id}"

    @step
    async def pay_out(self, ticket: str, approver: str) -> str:
        print(f"[{self.report_id}] paying out {ticket}, approved by {approver}")
        return f"paid {self.amount:.2f} EUR on {ticket} (approved by {approver})"

    @flow
    async def run(self) -> str:
        ticket = await self.submit()
        await schedule_timer_named(COOLING_OFF_SECONDS, "cooling-off")
        approver = await await_external_signal("approval")
        return await self.pay_out(ticket, approver)


async def sleep_until(wake_at: float) -> None:
    # Timers compare wall-clock times while the event loop sleeps on a monotonic clock;
    # a few milliseconds of margin keep the two from disagreeing at the boundary.
    await asyncio.sleep(max(wake_at - time.time(), 0.0) + 0.02)


async def drive(db_path: Path) -> str:
    report = ExpenseReport("EXP-0042", 118.40)
    flow_id = "expense-EXP-0042"
    async with SqliteExecutionLog(db_path) as storage:
        outcome = await Executor(report, storage, flow_id).run(lambda flow: flow.run())
        print(f"Run 1: {outcome!r}")
        if not isinstance(outcome, Suspended) or outcome.wake_at is None:
            raise SystemExit(f"expected the flow to wait on its timer, got {outcome!r}")

        delivered = await send_signal(storage, flow_id, "approval", "dana")
        print(f"Signal 'approval' delivered: {delivered}")

        print(f"Waiting {outcome.wake_at - time.time():.1f} s for the cooling-off timer...")
        await sleep_until(outcome.wake_at)

        outcome = await Executor(report, storage, flow_id).run(lambda flow: flow.run())
        print(f"Run 2: {outcome!r}")
        if not isinstance(outcome, Completed) or not outcome.succeeded:
            raise SystemExit(f"expected the flow to complete, got {outcome!r}")
        result: str = outcome.result
        return result


def main() -> None:
    if len(sys.argv) > 1:
        result = asyncio.run(drive(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory(prefix="pyergon-example-") as directory:
            result = asyncio.run(drive(Path(directory) / "expenses.db"))
    print(f"Result: {result}")


if __name__ == "__main__":
    main()
