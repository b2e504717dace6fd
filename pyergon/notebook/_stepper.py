"""Driving a flow one durable operation at a time, from notebook cells.

``stepper = session.step_through(Flow(...))``; each ``await stepper.next()`` lets exactly one
operation that the log does not hold yet run (a step, a timer, a signal wait, a child or a
recorded value), then pauses the flow before the next one and returns the log so far. Recorded
operations replay without pausing. The pause is the executor's step-boundary hook, so a paused
flow is an ordinary running flow: its records are real and any later cell, kernel or worker can
pick it up.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyergon._context import FlowContext, current_context
from pyergon.core.outcome import FlowOutcome
from pyergon.core.records import Invocation
from pyergon.executor.executor import Executor

if TYPE_CHECKING:
    from pyergon.management import ReplayResult
    from pyergon.notebook.session import Session

__all__ = ["StepReport", "Stepper"]


@dataclass(frozen=True, slots=True)
class StepReport:
    """The state of a stepped flow after one ``next()``.

    Attributes:
        flow_id: The flow.
        records: Its log so far, by position.
        ran: Positions recorded by this ``next()`` (empty if it only replayed or waited).
        outcome: The run's outcome once it finished or suspended, else ``None`` (paused).
    """

    flow_id: str
    records: tuple[Invocation, ...]
    ran: tuple[str, ...]
    outcome: FlowOutcome[Any] | None

    @property
    def paused(self) -> bool:
        """Whether the flow waits at a step boundary for the next ``next()``."""
        return self.outcome is None

    def _state(self) -> str:
        if self.outcome is None:
            return "paused before the next operation"
        return repr(self.outcome)

    def __repr__(self) -> str:
        lines = [f"StepReport({self.flow_id!r}: {self._state()})"]
        for record in self.records:
            marker = "→" if record.position in self.ran else " "
            lines.append(
                f" {marker} {record.position:>5}  {record.kind.value:<6} {record.name:<24} "
                f"{record.status.value}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr{style}><td>{position}</td><td>{kind}</td><td>{name}</td><td>{status}</td>"
            "<td>{attempts}</td></tr>".format(
                style=' style="font-weight:bold"' if record.position in self.ran else "",
                position=html.escape(record.position),
                kind=html.escape(record.kind.value),
                name=html.escape(record.name),
                status=html.escape(record.status.value),
                attempts=record.attempts,
            )
            for record in self.records
        )
        return (
            f"<div><b>{html.escape(self.flow_id)}</b>: {html.escape(self._state())}"
            "<table><thead><tr><th>position</th><th>kind</th><th>name</th><th>status</th>"
            f"<th>attempts</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )


class _Gate:
    """The step-boundary hook of a stepped run: each operation waits for one permit.

    It counts the operations that arrived at a boundary and those let through, and keeps the
    task and the flow context of the last one let through, so a stepper can wait for that
    operation to end even when nothing arrives after it (a gathered operation, a DAG step).
    """

    def __init__(self) -> None:
        self._permits = asyncio.Semaphore(0)
        self.arrivals = 0
        self.admissions = 0
        self.admitted: asyncio.Task[Any] | None = None
        self.context: FlowContext | None = None
        self._changed = asyncio.Condition()

    async def requested(self) -> bool:
        async with self._changed:
            self.arrivals += 1
            self._changed.notify_all()
        await self._permits.acquire()
        async with self._changed:
            self.admissions += 1
            self.admitted = asyncio.current_task()
            self.context = current_context()
            self._changed.notify_all()
        return False

    def allow(self, count: int = 1) -> None:
        for _ in range(count):
            self._permits.release()

    async def wait_until(self, reached: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(reached)


class Stepper:
    """Runs one flow operation by operation; create it with ``Session.step_through``.

    Args:
        session: The session whose storage records the flow.
        flow: The flow instance.
        flow_id: The flow's id.
    """

    def __init__(self, session: Session, flow: Any, flow_id: str) -> None:
        self._session = session
        self._flow = flow
        self.flow_id = flow_id
        self._gate = _Gate()
        self._run: asyncio.Task[FlowOutcome[Any]] | None = None
        self.outcome: FlowOutcome[Any] | None = None
        """The last run's outcome, once it finished or suspended."""

    def __repr__(self) -> str:
        state = "not started" if self._run is None else "paused" if self.outcome is None else ""
        return f"Stepper({self.flow_id!r}, {state or repr(self.outcome)})"

    async def next(self) -> StepReport:
        """Let the next unrecorded operation run, then pause; return the log so far.

        A flow that suspended (on a timer or signal) is run again from its log. A flow that
        finished stays finished. Gathered operations are released one per call.
        """
        before = {record.position for record in await self._records()}
        if self._run is None or (self._run.done() and not _is_final(self.outcome)):
            await self._start_and_reach_first_boundary()
        if self._run is not None and not self._run.done():
            await self._let_one_through()
        return await self._report(before)

    async def run_to_end(self) -> StepReport:
        """Let every remaining operation run without pausing (until the flow ends or waits)."""
        before = {record.position for record in await self._records()}
        if self._run is None or (self._run.done() and not _is_final(self.outcome)):
            await self._start_and_reach_first_boundary()
        while self._run is not None and not self._run.done():
            await self._let_one_through()
        return await self._report(before)

    async def replay(self) -> ReplayResult:
        """Walk the recorded operations again against today's code, running none of them."""
        return await self._session.replay(self.flow_id, type(self._flow))

    async def _start_and_reach_first_boundary(self) -> None:
        self._gate = _Gate()
        self.outcome = None
        executor = Executor(
            self._flow,
            self._session.storage,
            self.flow_id,
            serializer=self._session.serializer,
            clock=self._session.clock,
            cancellation=self._gate,
        )
        method = _entry_name(type(self._flow))
        self._run = asyncio.create_task(
            executor.run(lambda flow: getattr(flow, method)()),
            name=f"pyergon-stepper-{self.flow_id}",
        )
        self._session._keep(self._run)
        await self._until(lambda: self._gate.arrivals > 0)

    async def _let_one_through(self) -> None:
        """Let one operation through; return once it ended, the next arrived or the run did.

        A gathered operation (or a DAG step) ends in a task of its own with nothing arriving
        after it, so its end is waited for too, and what it kept is stored before the report.
        """
        assert self._run is not None
        gate = self._gate
        seen, admitted = gate.arrivals, gate.admissions
        gate.allow()
        await self._until(lambda: gate.admissions > admitted)
        if self._run.done():
            return
        operation = gate.admitted
        if operation is None or not operation.done():  # a quick operation may be over already
            also = () if operation is None else (operation,)
            await self._until(lambda: gate.arrivals > seen, *also)
        if gate.context is not None:
            await gate.context.save_kept()

    async def _until(self, reached: Callable[[], bool], *also: asyncio.Future[Any]) -> None:
        """Wait until ``reached()``, the run ends, or one of ``also`` is done."""
        assert self._run is not None
        waiting = asyncio.ensure_future(self._gate.wait_until(reached))
        try:
            await asyncio.wait({waiting, self._run, *also}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if self._run.done():
            self.outcome = self._run.result()

    async def _records(self) -> list[Invocation]:
        return await self._session.storage.load_invocations(self.flow_id)

    async def _report(self, before: set[str]) -> StepReport:
        records = tuple(await self._records())
        ran = tuple(record.position for record in records if record.position not in before)
        return StepReport(self.flow_id, records, ran, self.outcome)


def _is_final(outcome: FlowOutcome[Any] | None) -> bool:
    return outcome is not None and outcome.status.is_final


def _entry_name(cls: type) -> str:
    from pyergon.decorators import flow_entry

    name, _ = flow_entry(cls)
    return name
