"""Three worker processes share one persistent storage; one is SIGKILLed mid-run.

The test schedules 300 flows (three steps, a durable timer, and for a third of them a signal)
for worker processes running ``tests/worker/mp_worker.py``, kills one worker with SIGKILL once
about a third of the flows are done, and checks that the others finish every flow with the
right result, that no step has two records, and that the only step bodies that ran twice are
steps the killed worker was running: steps whose record was not written when it died.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from pyergon import Scheduler
from pyergon.core import FlowQuery, InvocationStatus, OperationKind, TaskStatus
from pyergon.storage import open_storage
from pyergon.storage._flows import find_signal
from pyergon.storage.base import ExecutionLog
from tests.conftest import drop_redis_keys, drop_schema, require_postgres, require_redis
from tests.records import record_at
from tests.worker import mp_worker
from tests.worker.mp_worker import RelayFlow, expected_result, signal_value, step_positions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and SIGTERM are POSIX"),
]

FLOWS = 300
WORKERS = 3
VICTIM = "worker-0"
POLL_SECONDS = 0.02
START_DEADLINE = 30.0
"""Seconds for a third of the flows to finish, counting the workers' start-up."""
FINISH_DEADLINE = 90.0
"""Seconds for every flow to finish after the kill."""
STOP_DEADLINE = 30.0
NOT_PERSISTING = "neither snapshots (save) nor logs writes (appendonly)"
"""What the Redis backend warns at connect when the server keeps data in memory only."""

Position = tuple[str, int]
"""A step of one flow: (flow id, log position)."""


def with_query(url: str, **parameters: str) -> str:
    """``url`` with ``parameters`` added to its query string."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), *parameters.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture(params=["postgres", "redis", "sqlite-file"])
async def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty persistent storage that several processes can share; wiped after."""
    suffix = uuid.uuid4().hex[:12]
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path / 'flows.db'}"
    elif request.param == "redis":
        prefix = f"pyergon-mp-{suffix}"
        url = with_query(await require_redis(), prefix=prefix)
        try:
            yield url
        finally:
            await drop_redis_keys(prefix)
    else:
        schema = f"pyergon_mp_{suffix}"
        url = with_query(await require_postgres(), schema=schema)
        try:
            yield url
        finally:
            await drop_schema(schema)


@dataclass
class WorkerProcesses:
    """The worker processes of one test, each with its side-effect file and its output log."""

    url: str
    directory: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def side_effect_file(self, worker_id: str) -> Path:
        return self.directory / f"{worker_id}.side-effects"

    def output_file(self, worker_id: str) -> Path:
        return self.directory / f"{worker_id}.log"

    def start(self, worker_id: str) -> None:
        command = [sys.executable, mp_worker.__file__, self.url, worker_id]
        command.append(str(self.side_effect_file(worker_id)))
        with self.output_file(worker_id).open("wb") as output:
            self.processes[worker_id] = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT
            )

    def output(self, worker_id: str) -> str:
        return self.output_file(worker_id).read_text(encoding="utf-8", errors="replace")

    def check_running(self) -> None:
        """Fail with its output if a worker exited by itself."""
        for worker_id, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(
                    f"{worker_id} exited with {process.returncode}:\n{self.output(worker_id)}"
                )

    def kill(self, worker_id: str) -> None:
        """SIGKILL one worker and wait until it is gone."""
        process = self.processes.pop(worker_id)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=STOP_DEADLINE) == -signal.SIGKILL

    def stop(self) -> dict[str, int]:
        """SIGTERM every worker left and return their exit codes once they have stopped."""
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        codes = {
            worker_id: process.wait(timeout=STOP_DEADLINE)
            for worker_id, process in self.processes.items()
        }
        self.processes.clear()
        return codes

    def logged(self, worker_id: str) -> list[str]:
        """The lines of a worker's output that its loggers wrote, but for a server's setup.

        A Redis server without persistence (as test servers often run) draws a warning at
        connect that says nothing about the run itself.
        """
        levels = ("WARNING ", "ERROR ", "CRITICAL ", "Traceback")
        return [
            line
            for line in self.output(worker_id).splitlines()
            if line.startswith(levels) and NOT_PERSISTING not in line
        ]

    def kill_all(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()
        self.processes.clear()

    def step_starts(self) -> dict[str, Counter[Position]]:
        """Per worker, how many times each step body started, from its side-effect file."""
        starts: dict[str, Counter[Position]] = {}
        for worker_id in (f"worker-{number}" for number in range(WORKERS)):
            counted: Counter[Position] = Counter()
            path = self.side_effect_file(worker_id)
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            for line in text.splitlines(keepends=True):
                flow_id, position, event = line.split()
                assert event == "start" and line.endswith("\n"), line
                counted[flow_id, int(position)] += 1
            starts[worker_id] = counted
        return starts


@pytest.fixture
def workers(storage_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker processes on ``storage_url``; any still running at the end are killed."""
    processes = WorkerProcesses(storage_url, tmp_path)
    try:
        yield processes
    finally:
        processes.kill_all()


@dataclass(frozen=True)
class Plan:
    """One flow of the run and how the test talks to it."""

    flow_id: str
    flow: RelayFlow
    early_signal: bool
    """Send the signal right after scheduling, before the flow can wait for it."""

    @property
    def late_signal(self) -> bool:
        return self.flow.wants_signal and not self.early_signal


def plans() -> list[Plan]:
    made = []
    for number in range(FLOWS):
        relay = RelayFlow(number, timer_seconds=0.05 + 0.05 * (number % 4), wants_signal=False)
        if number % 3 == 0:
            relay = RelayFlow(number, relay.timer_seconds, wants_signal=True)
        made.append(Plan(f"relay-{number:03d}", relay, early_signal=number % 6 == 0))
    return made


@dataclass
class Driver:
    """Polls storage under deadlines and sends late signals to flows that wait for them."""

    storage: ExecutionLog
    scheduler: Scheduler
    workers: WorkerProcesses
    awaiting_signal: dict[str, Plan]

    async def until(
        self, condition: Callable[[], Awaitable[bool]], within: float, what: str
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            await self.deliver_late_signals()
            if await condition():
                return
            self.workers.check_running()
            if loop.time() > deadline:
                pytest.fail(f"{what} not reached within {within} s\n{await self.snapshot()}")
            await asyncio.sleep(POLL_SECONDS)

    async def snapshot(self) -> str:
        """What storage and the workers' logs show: why a deadline was missed."""
        flows = await self.storage.list_flows(FlowQuery(limit=FLOWS))
        statuses = Counter(flow.status.value for flow in flows)
        holders = Counter(flow.lease_owner for flow in flows if flow.status is TaskStatus.RUNNING)
        lines = [
            f"statuses: {dict(statuses)}",
            f"running flows per worker: {dict(holders)}",
            f"signals still to send: {len(self.awaiting_signal)}",
        ]
        for worker_id in self.workers.processes:
            output = self.workers.output(worker_id).splitlines()
            lines.append(f"{worker_id} output (last 20 lines):")
            lines.extend(f"  {line}" for line in output[-20:])
        return "\n".join(lines)

    async def deliver_late_signals(self) -> None:
        """Signal the flows that are suspended waiting for their signal."""
        suspended = await self.storage.list_flows(
            FlowQuery(status=TaskStatus.SUSPENDED, limit=FLOWS)
        )
        for stored in suspended:
            plan = self.awaiting_signal.get(stored.flow_id)
            if plan is None:
                continue
            wait = await record_at(self.storage, plan.flow_id, mp_worker.SIGNAL_POSITION)
            if wait is not None and wait.status is InvocationStatus.WAITING_FOR_SIGNAL:
                value = signal_value(plan.flow.number)
                assert await self.scheduler.signal(plan.flow_id, mp_worker.SIGNAL_NAME, value)
                del self.awaiting_signal[plan.flow_id]

    async def completed(self) -> int:
        failed = await self.storage.list_flows(FlowQuery(status=TaskStatus.FAILED, limit=FLOWS))
        assert not failed, [(flow.flow_id, flow.error) for flow in failed]
        return len(
            await self.storage.list_flows(FlowQuery(status=TaskStatus.COMPLETE, limit=FLOWS))
        )

    async def held_by(self, worker_id: str) -> set[str]:
        running = await self.storage.list_flows(FlowQuery(status=TaskStatus.RUNNING, limit=FLOWS))
        return {flow.flow_id for flow in running if flow.lease_owner == worker_id}

    async def recorded_steps(self, flow_ids: list[str], before: float) -> set[Position]:
        """Steps with a COMPLETE record that was written before ``before`` (epoch seconds)."""
        logs = await asyncio.gather(*(self.storage.load_invocations(i) for i in flow_ids))
        return {
            (record.flow_id, record.sequence)
            for log in logs
            for record in log
            if record.kind is OperationKind.STEP
            and record.status is InvocationStatus.COMPLETE
            and record.completed_at is not None
            and record.completed_at < before
        }


async def test_flows_survive_a_killed_worker_process(
    storage_url: str, workers: WorkerProcesses
) -> None:
    flows = plans()
    for number in range(WORKERS):
        workers.start(f"worker-{number}")
    storage = await open_storage(storage_url)
    try:
        scheduler = Scheduler(storage)
        driver = Driver(storage, scheduler, workers, {p.flow_id: p for p in flows if p.late_signal})
        for plan in flows:
            assert await scheduler.schedule(plan.flow, flow_id=plan.flow_id) == plan.flow_id
            if plan.early_signal:
                value = signal_value(plan.flow.number)
                assert await scheduler.signal(plan.flow_id, mp_worker.SIGNAL_NAME, value)

        async def a_third_done() -> bool:
            return await driver.completed() >= FLOWS // 3

        async def victim_inside_steps() -> bool:
            return len(await driver.held_by(VICTIM)) >= 2

        await driver.until(a_third_done, START_DEADLINE, "a third of the flows")
        # From now on the victim stops inside every step body it starts, so it still holds
        # flows mid-step when the kill lands, however fast the others finish the rest.
        mp_worker.hold_file(workers.side_effect_file(VICTIM)).touch()
        await driver.until(victim_inside_steps, START_DEADLINE, "the victim inside two steps")
        # Kill first, then read: what storage holds now is what the victim left behind. Its
        # leases run for at least two thirds of LEASE_SECONDS more, so nobody has taken over.
        workers.kill(VICTIM)
        killed_at = time.time()
        held = await driver.held_by(VICTIM)
        held_read_within = time.time() - killed_at
        recorded_at_kill = await driver.recorded_steps([p.flow_id for p in flows], killed_at)

        async def all_done() -> bool:
            return await driver.completed() == FLOWS

        await driver.until(all_done, FINISH_DEADLINE, "every flow finished")
        outcomes = await scheduler.wait([plan.flow_id for plan in flows], timeout=10)
        logs = {plan.flow_id: await storage.load_invocations(plan.flow_id) for plan in flows}
        signals = {
            plan.flow_id: await find_signal(storage, plan.flow_id, mp_worker.SIGNAL_NAME)
            for plan in flows
            if plan.flow.wants_signal
        }
    finally:
        await storage.close()
    exit_codes = await asyncio.to_thread(workers.stop)

    assert exit_codes == {f"worker-{n}": 0 for n in range(1, WORKERS)}, [
        workers.output(worker_id) for worker_id in exit_codes
    ]
    # The survivors took the victim's flows over without a lost lease or an error to report.
    assert {worker_id: workers.logged(worker_id) for worker_id in exit_codes} == {
        worker_id: [] for worker_id in exit_codes
    }
    assert held_read_within < mp_worker.LEASE_SECONDS * 2 / 3, "the post-kill read was too slow"
    assert 0 < len(held) <= mp_worker.MAX_CONCURRENT_FLOWS

    # Every flow completed with the right result.
    for plan in flows:
        assert outcomes[plan.flow_id].succeeded, outcomes[plan.flow_id]
        assert outcomes[plan.flow_id].result == expected_result(
            plan.flow.number, plan.flow.wants_signal
        )

    # One record per position, and exactly the steps, timer and signal the flow made.
    for plan in flows:
        positions = [(record.sequence, record.sub_sequence) for record in logs[plan.flow_id]]
        assert len(positions) == len(set(positions)), (plan.flow_id, positions)
        steps = [r.sequence for r in logs[plan.flow_id] if r.kind is OperationKind.STEP]
        assert steps == step_positions(plan.flow.wants_signal), (plan.flow_id, positions)
        assert {r.status for r in logs[plan.flow_id]} == {InvocationStatus.COMPLETE}

    # A recorded step never ran again; only steps the victim was running ran twice.
    starts = workers.step_starts()
    total = sum(starts.values(), Counter[Position]())
    every_step = {(p.flow_id, n) for p in flows for n in step_positions(p.flow.wants_signal)}
    assert set(total) == every_step
    reruns = {position: count for position, count in total.items() if count > 1}
    assert not set(reruns) & recorded_at_kill, (reruns, "were recorded before the kill")
    for flow_id, position in reruns:
        assert reruns[flow_id, position] == 2, (flow_id, position, reruns)
        assert flow_id in held, (flow_id, position, "ran twice but the victim did not hold it")
        assert starts[VICTIM][flow_id, position] == 1, (flow_id, position, starts[VICTIM])
    assert len(reruns) <= len(held), (reruns, held)
    # A step the victim's last heartbeat listed keeps that attempt, abandoned by the victim;
    # one it started after its last beat cannot be known. No other step keeps any attempt.
    for flow_id, log in logs.items():
        for record in log:
            for attempt in record.earlier_attempts:
                assert (flow_id, record.sequence) in reruns, (flow_id, record)
                assert (attempt.number, attempt.end, attempt.worker_id) == (1, "abandoned", VICTIM)
                assert record.attempts == 2, (flow_id, record)
    assert starts[VICTIM], "the killed worker ran no step"
    assert all(starts[f"worker-{n}"] for n in range(1, WORKERS))

    # Signals arrived both before the flow waited for them and while it waited.
    orders: Counter[str] = Counter()
    for flow_id, sent in signals.items():
        assert sent is not None
        wait = next(r for r in logs[flow_id] if r.kind is OperationKind.SIGNAL)
        assert wait.started_at is not None
        orders["before the wait" if sent.sent_at <= wait.started_at else "during it"] += 1
    assert orders["before the wait"] and orders["during it"], orders
