"""The ``chaos`` scenario: flows run while workers are killed, the server stalls and steps block.

``n`` flows of five steps (``ChaosSteps``: 10-30 ms each; in a tenth of the flows one step
blocks the event loop with ``time.sleep`` for longer than the lease) are enqueued, and three
worker processes with the default settings (lease, heartbeats) and fixed ids run them. Meanwhile
every 0.5-1.5 s a random worker is SIGKILLed and started again under its id (it takes over its
dead incarnation's flows), and every 3-6 s the storage stalls for longer than the lease: the
Redis server, or the PostgreSQL backends serving the workers' connections, are SIGSTOPped and
then SIGCONTed. The chaos ends when every flow is final (or after ``CHAOS_LIMIT``); the flows
then get ``DRAIN_SECONDS`` to finish.

Afterwards every flow's log is read, and so is the file in which each step body noted its start
(``time.time()``, worker id, pid, and whether a read of its log just before found its record
stored). The numbers: flows not ``COMPLETE`` (lost), log positions with more than one record,
bodies that started more than once (allowed: a worker killed inside a step leaves it to be run
again), bodies that started after their stored record's ``completed_at`` (which must be 0: a
recorded step is replayed, never run again), and, narrower, bodies whose read found their
record stored already. ``completed_at`` is when the stored body returned, before its record was
written: a write in flight when the server stalled lands when it resumes, so the first count
also takes in bodies that started before that write landed; the second does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.backends import POSTGRES_URL, REDIS_URL, fresh_storage
from benchmarks.flows import ChaosSteps
from benchmarks.pool import ProcessWorkers
from benchmarks.queued import schedule_all
from benchmarks.result import RunResult
from pyergon import Scheduler
from pyergon.core import FlowQuery
from pyergon.core.outcome import Completed
from pyergon.core.records import Invocation
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.decorators import flow_type_name
from pyergon.errors import StorageError
from pyergon.executor.worker import DEFAULT_LEASE_SECONDS
from pyergon.storage.base import ExecutionLog

__all__ = ["chaos"]

SEED = int(os.environ.get("PYERGON_BENCH_CHAOS_SEED", "14"))
"""Seeds the flows' shapes, which worker is killed when, and when the server stalls."""

WORKERS = 3
SLOTS = 10
"""Flows each worker runs at once (the ``Worker``'s default)."""
STEPS = 5
STEP_MS = (10, 30)
BLOCKING_SHARE = 0.1
"""Share of the flows with a step that blocks the loop (``flows.BLOCK_SECONDS``)."""
KILL_EVERY = (0.5, 1.5)
"""Seconds between a restarted worker being ready and the next kill (uniform)."""
PAUSE_EVERY = (3.0, 6.0)
"""Seconds between the end of one server stall and the next (uniform)."""
PAUSE_SECONDS = DEFAULT_LEASE_SECONDS + 1.0
"""How long the server stalls: longer than the lease, so leases run out meanwhile."""
CHAOS_LIMIT = 300.0
"""Longest the chaos goes on; the flows not final by then get the drain deadline."""
DRAIN_SECONDS = 60.0
"""How long the flows get to finish once the chaos stopped: many leases and flow runs."""
POLL_INTERVAL = 0.1
FINAL = (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass
class _Tally:
    """What the chaos did, with wall-clock times to explain a body that started too late."""

    kills: list[tuple[float, str, int]] = field(default_factory=list)
    """When, which worker id, which pid."""
    pauses: list[tuple[float, float, list[int]]] = field(default_factory=list)
    """From when, until when, which server processes."""
    restart_s: list[float] = field(default_factory=list)


async def chaos(backend: str, n: int) -> RunResult:
    """Run ``n`` flows through kills, server stalls and blocked loops; count what went wrong."""
    flow_name = flow_type_name(ChaosSteps)
    tally = _Tally()
    with tempfile.TemporaryDirectory(prefix="pyergon-chaos-") as directory:
        starts_file = Path(directory) / "starts"
        async with fresh_storage(backend) as fresh:
            scheduler = Scheduler(fresh.storage)
            flows = _flows(n, str(starts_file))
            flow_ids = await schedule_all(scheduler, flows)
            url, stalled_pids = await _server_stalls(backend, fresh.url, fresh.location)
            options = ("--types", ChaosSteps.__name__)  # the default lease and heartbeats
            async with ProcessWorkers(url, WORKERS, max_concurrent=SLOTS, options=options) as pool:
                went_at = time.monotonic()
                await pool.go()
                stop = asyncio.Event()
                mayhem = [asyncio.create_task(_kill_workers(pool, stop, tally))]
                if stalled_pids is not None:
                    mayhem.append(asyncio.create_task(_stall_server(stalled_pids, stop, tally)))
                try:
                    await _until_final(fresh.storage, flow_name, n, CHAOS_LIMIT, mayhem)
                finally:
                    stop.set()  # the stall under way ends with SIGCONT, even when cancelled
                    await _end(mayhem)
                chaos_s = time.monotonic() - went_at
                counts = await _until_final(fresh.storage, flow_name, n, DRAIN_SECONDS, [])
                wall = time.monotonic() - went_at
            records, two_records = await _read_logs(fresh.storage, flow_ids)
            wrong = await _wrong_results(scheduler, fresh.storage, flows, flow_ids)
        starts = _read_starts(starts_file)
    complete = counts[TaskStatus.COMPLETE]
    if complete < n:
        left = {status.value: count for status, count in counts.items() if count}
        print(f"chaos on {backend}: flows by status at the end: {left}", file=sys.stderr)
    return RunResult(
        wall,
        complete,
        complete * STEPS,
        extra={
            "chaos_s": chaos_s,
            "restart_s": statistics.median(tally.restart_s or [0.0]),
            "seed": SEED,
            "lease_seconds": DEFAULT_LEASE_SECONDS,
        },
        totals={
            "flows_lost": n - complete,
            "wrong_results": wrong,
            "steps_with_two_records": two_records,
            "bodies_started_after_record": _started_after_record(starts, records, tally),
            "bodies_started_on_stored_record": sum(start.record_stored for start in starts),
            "bodies_rerun": sum(count > 1 for count in Counter(s.key for s in starts).values()),
            "body_starts": len(starts),
            "kills": len(tally.kills),
            "pauses": len(tally.pauses),
        },
    )


def _flows(n: int, starts_file: str) -> list[ChaosSteps]:
    rng = random.Random(f"{SEED} flows")
    blocking = set(rng.sample(range(n), max(1, round(n * BLOCKING_SHARE))))
    return [
        ChaosSteps(
            number,
            tuple(rng.randint(*STEP_MS) for _ in range(STEPS)),
            rng.randrange(STEPS) if number in blocking else None,
            starts_file,
        )
        for number in range(n)
    ]


def _expected(flow: ChaosSteps) -> int:
    return flow.number + sum(range(STEPS))


# -- the chaos ---------------------------------------------------------------------------------


async def _kill_workers(pool: ProcessWorkers, stop: asyncio.Event, tally: _Tally) -> None:
    """SIGKILL a random worker now and then and start it again under its id, until ``stop``."""
    rng = random.Random(f"{SEED} kills")
    while not await _set_within(stop, rng.uniform(*KILL_EVERY)):
        number = rng.randrange(WORKERS)
        pid = pool.pids[number]
        await pool.kill(number)
        tally.kills.append((time.time(), pool.worker_id(number), pid))
        started = time.monotonic()
        await pool.restart(number)
        tally.restart_s.append(time.monotonic() - started)


async def _stall_server(
    pids: Callable[[], Awaitable[list[int]]], stop: asyncio.Event, tally: _Tally
) -> None:
    """Stop the processes ``pids`` gives for ``PAUSE_SECONDS`` now and then, until ``stop``."""
    rng = random.Random(f"{SEED} pauses")
    while not await _set_within(stop, rng.uniform(*PAUSE_EVERY)):
        stalled = await pids()
        if stalled:
            paused_at = time.time()
            try:
                await _pause(stalled, stop)
            finally:
                tally.pauses.append((paused_at, time.time(), stalled))


async def _pause(pids: list[int], stop: asyncio.Event) -> None:
    """SIGSTOP ``pids`` for ``PAUSE_SECONDS`` (or until ``stop``), then SIGCONT them, always.

    The server is shared with whatever else runs on this machine: should this process die
    before its ``finally`` (SIGKILL), a shell of its own session resumes them a second later.
    """
    listed = " ".join(map(str, pids))
    watchdog = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        f"sleep {PAUSE_SECONDS + 1}; kill -CONT {listed} 2>/dev/null",
        start_new_session=True,
    )
    try:
        for pid in pids:
            _send(pid, signal.SIGSTOP)
        await _set_within(stop, PAUSE_SECONDS)
    finally:
        for pid in pids:
            _send(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            watchdog.kill()
        await watchdog.wait()


def _send(pid: int, signal_number: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # a backend whose worker died may be gone
        os.kill(pid, signal_number)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; return whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def _end(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for the chaos tasks to stop; raise the first error one of them met."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _server_stalls(
    backend: str, url: str, location: str
) -> tuple[str, Callable[[], Awaitable[list[int]]] | None]:
    """The workers' storage URL, and what gives the server processes to stall (``None``: none).

    Redis: the server itself (``INFO server``'s ``process_id``). PostgreSQL: the backends of the
    workers' connections, which carry an ``application_name`` of their own so the harness's
    connections are left running.
    """
    if backend == "redis":
        pid = await _redis_pid()

        async def redis_server() -> list[int]:
            return [pid]

        return url, redis_server
    if backend == "postgres":
        application = f"chaos-workers-{location}"
        return f"{url}&application_name={application}", _postgres_backends(application)
    return url, None


async def _redis_pid() -> int:
    from redis.asyncio import Redis

    _require_local(REDIS_URL)
    client = Redis.from_url(REDIS_URL)
    try:
        pid = int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()
    _require_process(pid, "redis-server")
    return pid


def _postgres_backends(application: str) -> Callable[[], Awaitable[list[int]]]:
    import asyncpg

    _require_local(POSTGRES_URL)

    async def backends() -> list[int]:
        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = $1 AND pid <> pg_backend_pid()",
                application,
            )
        finally:
            await connection.close()
        pids = [int(row["pid"]) for row in rows]
        for pid in pids:
            _require_process(pid, "postgres")
        return pids

    return backends


def _require_local(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(
            f"chaos stops the server's processes, so the server must run on this machine, "
            f"not {host!r}; point the benchmark's URL at a local server"
        )


def _require_process(pid: int, command: str) -> None:
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return  # gone already (a backend whose worker was killed): nothing to stop
    if name != command:
        raise RuntimeError(f"process {pid} is {name!r}, not {command!r}; not stopping it")


# -- what happened -----------------------------------------------------------------------------


async def _until_final(
    storage: ExecutionLog,
    flow_name: str,
    n: int,
    seconds: float,
    watched: list[asyncio.Task[None]],
) -> dict[TaskStatus, int]:
    """Return the flows' counts by status once all ``n`` are final or ``seconds`` passed.

    Raises the error of a ``watched`` task that failed meanwhile.
    """
    deadline = time.monotonic() + seconds
    counts: dict[TaskStatus, int] = {}
    while True:
        for task in watched:
            if task.done():
                task.result()
        try:
            counts = await storage.count_flows(flow_type=flow_name)
        except StorageError as error:  # a stalled server can fail a call; ask again
            print(f"counting flows failed ({error}); trying again", file=sys.stderr)
        if sum(counts.get(status, 0) for status in FINAL) >= n or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(POLL_INTERVAL)


async def _read_logs(
    storage: ExecutionLog, flow_ids: list[str]
) -> tuple[dict[str, Invocation], int]:
    """Every ``COMPLETE`` step record by its key, and the positions with 2+ records."""
    complete: dict[str, Invocation] = {}
    two_records = 0
    for flow_id in flow_ids:
        records = await storage.load_invocations(flow_id)
        per_position = Counter(record.position for record in records)
        two_records += sum(count > 1 for count in per_position.values())
        for record in records:
            if record.status is InvocationStatus.COMPLETE and record.completed_at is not None:
                complete[record.idempotency_key] = record
    return complete, two_records


async def _wrong_results(
    scheduler: Scheduler, storage: ExecutionLog, flows: list[ChaosSteps], flow_ids: list[str]
) -> int:
    """How many ``COMPLETE`` flows returned something else than their steps add up to."""
    query = FlowQuery(status=TaskStatus.COMPLETE, limit=max(len(flow_ids), 1))
    complete = {flow.flow_id for flow in await storage.list_flows(query)}
    pairs = zip(flows, flow_ids, strict=True)
    checked = [(flow, flow_id) for flow, flow_id in pairs if flow_id in complete]
    outcomes = await scheduler.wait([flow_id for _, flow_id in checked], timeout=60)
    return sum(not _returned(outcomes[flow_id], _expected(flow)) for flow, flow_id in checked)


def _returned(outcome: object, expected: int) -> bool:
    return isinstance(outcome, Completed) and outcome.succeeded and outcome.result == expected


@dataclass(frozen=True, slots=True)
class _Start:
    """One line of the starts file: a step body began."""

    at: float
    worker_id: str
    pid: int
    key: str
    record_stored: bool
    """A read of the flow's log just before found the body's record ``COMPLETE``."""


def _read_starts(path: Path) -> list[_Start]:
    if not path.exists():
        return []
    starts = []
    for line in path.read_text().splitlines():
        at, worker_id, pid, key, verdict = line.split(" ")
        starts.append(_Start(float(at), worker_id, int(pid), key, verdict == "stored"))
    return starts


def _started_after_record(
    starts: list[_Start], records: dict[str, Invocation], tally: _Tally
) -> int:
    """Count the bodies that started after their stored record's body had returned."""
    late = [
        start
        for start in starts
        if start.key in records and start.at > (records[start.key].completed_at or math.inf)
    ]
    for start in late[:5]:
        _explain(start, starts, records[start.key], tally)
    return len(late)


def _explain(late: _Start, starts: list[_Start], record: Invocation, tally: _Tally) -> None:
    """Print, on stderr, what happened around a body that started after its record's."""
    flow_id = record.flow_id
    events = [
        (
            start.at,
            f"body {start.key} starts in {start.worker_id} (pid {start.pid})"
            + (", its record read as stored just before" if start.record_stored else ""),
        )
        for start in starts
        if start.key.rpartition(":")[0] == flow_id
    ]
    events.append((record.started_at or 0.0, f"the stored record of {late.key}: started_at"))
    events.append((record.completed_at or 0.0, f"the stored record of {late.key}: completed_at"))
    since, until = min(at for at, _ in events) - 5, max(at for at, _ in events) + 5
    events += [
        (at, f"{worker_id} (pid {pid}) killed")
        for at, worker_id, pid in tally.kills
        if since <= at <= until
    ]
    for stopped, continued, pids in tally.pauses:
        if since <= stopped <= until or since <= continued <= until:
            events.append((stopped, f"server processes {pids} stopped"))
            events.append((continued, f"server processes {pids} continued"))
    print(
        f"body {late.key} started in {late.worker_id} (pid {late.pid}) "
        f"{late.at - (record.completed_at or 0.0):.3f} s after its stored record's "
        "completed_at; around it (seconds from that start):",
        file=sys.stderr,
    )
    for at, what in sorted(events):
        print(f"  {at - late.at:+8.3f}  {what}", file=sys.stderr)
