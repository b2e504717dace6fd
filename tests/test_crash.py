"""Crash tests: a real process running a flow on SQLite is SIGKILLed mid-flow and resumed.

The flow's steps append ``"<step> start"`` to a side-effect file (flushed and fsynced) before
doing their work, so the test can count, across processes, how many times each body ran and
compare that with the records the killed process left in the database.

Run as a script, this module is the worker process:
``python test_crash.py DB SIDE_EFFECTS FLOW_ID STEPS STEP_SECONDS``; with ``CRASH_BLOCK_AT=k`` in
the environment, step ``k`` blocks forever after writing its start line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyergon import Completed, Executor, flow, flow_type, step
from pyergon.core import Invocation, InvocationStatus, ScheduledFlow, TaskStatus
from pyergon.serialization import default_serializer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

WAIT_DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.005
BLOCK_VARIABLE = "CRASH_BLOCK_AT"


@dataclass
@flow_type
class CrashFlow:
    steps: int
    side_effects: str
    step_seconds: float

    @step
    async def work(self, number: int) -> int:
        append_line(self.side_effects, f"{number} start")
        if os.environ.get(BLOCK_VARIABLE) == str(number):
            await asyncio.Event().wait()  # never set: the step is cut by the kill
        await asyncio.sleep(self.step_seconds)
        return number * number

    @flow
    async def run(self) -> int:
        total = 0
        for number in range(1, self.steps + 1):
            total += await self.work(number)
        return total


def append_line(path: str, line: str) -> None:
    # fsync: the line must be on disk before the body goes on, whatever happens next.
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"{line}\n")
        log.flush()
        os.fsync(log.fileno())


def expected_result(steps: int) -> int:
    return sum(number * number for number in range(1, steps + 1))


# -- the worker process ---------------------------------------------------------------------


async def run_worker(db: str, side_effects: str, flow_id: str, steps: int, seconds: float) -> None:
    from pyergon.storage.sqlite import SqliteExecutionLog

    async with SqliteExecutionLog(db) as storage:
        outcome = await Executor(CrashFlow(steps, side_effects, seconds), storage, flow_id).run(
            lambda crash_flow: crash_flow.run()
        )
    assert isinstance(outcome, Completed), outcome
    print(json.dumps({"status": outcome.status.value, "result": outcome.result}))


# -- helpers of the tests --------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    db: Path
    side_effects: Path


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "crash.db", tmp_path / "side-effects.log")


def start_worker(
    paths: Paths, flow_id: str, steps: int, step_seconds: float, block_at: int | None = None
) -> subprocess.Popen[str]:
    environment = dict(os.environ)
    environment.pop(BLOCK_VARIABLE, None)
    if block_at is not None:
        environment[BLOCK_VARIABLE] = str(block_at)
    command = [sys.executable, __file__, str(paths.db), str(paths.side_effects), flow_id]
    command += [str(steps), str(step_seconds)]
    return subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def started_steps(paths: Paths) -> list[int]:
    """The step numbers of every complete start line, in the order they were written."""
    try:
        text = paths.side_effects.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.splitlines(keepends=True)
    return [int(line.split()[0]) for line in lines if line.endswith(" start\n")]


def wait_until_started(
    process: subprocess.Popen[str], paths: Paths, number: int, after: int
) -> None:
    """Poll the side-effect file until step ``number`` starts beyond its first ``after`` lines."""
    deadline = time.monotonic() + WAIT_DEADLINE_SECONDS
    while number not in started_steps(paths)[after:]:
        if process.poll() is not None:
            _, errors = process.communicate()
            pytest.fail(f"worker exited with {process.returncode} before step {number}: {errors}")
        if time.monotonic() > deadline:
            kill(process)
            pytest.fail(f"step {number} did not start within {WAIT_DEADLINE_SECONDS} s")
        time.sleep(POLL_SECONDS)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode in (-signal.SIGKILL, 0)


def finish(process: subprocess.Popen[str]) -> dict[str, object]:
    output, errors = process.communicate(timeout=WAIT_DEADLINE_SECONDS)
    assert process.returncode == 0, errors
    reported: dict[str, object] = json.loads(output)
    return reported


def read_storage(paths: Paths, flow_id: str) -> tuple[ScheduledFlow | None, list[Invocation]]:
    from pyergon.storage.sqlite import SqliteExecutionLog

    async def read() -> tuple[ScheduledFlow | None, list[Invocation]]:
        async with SqliteExecutionLog(paths.db) as storage:
            return await storage.get_flow(flow_id), await storage.load_invocations(flow_id)

    return asyncio.run(read())


def recorded_steps(records: list[Invocation]) -> set[int]:
    return {record.sequence for record in records if record.is_final}


def assert_completed_once_per_position(paths: Paths, flow_id: str, steps: int) -> list[Invocation]:
    stored, records = read_storage(paths, flow_id)
    assert stored is not None
    assert stored.status is TaskStatus.COMPLETE
    assert stored.result is not None
    assert default_serializer().loads(stored.result) == expected_result(steps)
    positions = [(record.sequence, record.sub_sequence) for record in records]
    assert len(positions) == len(set(positions)), "a position holds two records"
    assert positions == [(number, 0) for number in range(1, steps + 1)]
    assert all(record.status is InvocationStatus.COMPLETE for record in records)
    return records


# -- the tests -------------------------------------------------------------------------------


def test_kill_during_a_step_reruns_only_that_step(paths: Paths) -> None:
    steps, cut = 6, 4
    flow_id = "crash-blocked"
    first = start_worker(paths, flow_id, steps, 0.01, block_at=cut)
    wait_until_started(first, paths, cut, after=0)
    kill(first)

    _, at_kill = read_storage(paths, flow_id)
    assert recorded_steps(at_kill) == set(range(1, cut))
    assert all(record.sequence < cut for record in at_kill)

    reported = finish(start_worker(paths, flow_id, steps, 0.01))

    assert reported == {"status": "COMPLETE", "result": expected_result(steps)}
    assert_completed_once_per_position(paths, flow_id, steps)
    runs = Counter(started_steps(paths))
    assert runs == {number: 2 if number == cut else 1 for number in range(1, steps + 1)}


def test_the_killed_run_shows_as_an_abandoned_attempt_of_its_step(paths: Paths) -> None:
    steps, cut = 4, 3
    flow_id = "crash-shown"
    first = start_worker(paths, flow_id, steps, 0.01, block_at=cut)
    wait_until_started(first, paths, cut, after=0)
    kill(first)
    finish(start_worker(paths, flow_id, steps, 0.01))

    _, records = read_storage(paths, flow_id)
    by_sequence = {record.sequence: record for record in records}
    (abandoned,) = by_sequence[cut].earlier_attempts
    assert (abandoned.number, abandoned.end, abandoned.ended_at) == (1, "abandoned", None)
    # The killed run was last known alive when its last record ended.
    assert abandoned.started_at == by_sequence[cut - 1].completed_at
    assert by_sequence[cut].attempts == 2
    assert all(not by_sequence[n].earlier_attempts for n in by_sequence if n != cut)


def test_repeated_kills_at_random_points_rerun_only_unrecorded_steps(paths: Paths) -> None:
    steps, step_seconds, kills = 20, 0.03, 5
    all_steps = set(range(1, steps + 1))
    flow_id = "crash-random"
    choices = random.Random(20_240_611)
    # What the database and the side-effect file held right after each kill.
    snapshots: list[tuple[int, set[int]]] = []
    recorded: set[int] = set()
    for _ in range(kills):
        lines_before = len(started_steps(paths))
        first_open = min(all_steps - recorded)
        target = choices.randint(first_open, first_open + 2)
        delay = choices.uniform(0.0, 1.5 * step_seconds)  # where in or after the step to kill
        process = start_worker(paths, flow_id, steps, step_seconds)
        wait_until_started(process, paths, target, after=lines_before)
        time.sleep(delay)
        kill(process)
        _, records = read_storage(paths, flow_id)
        assert len({(r.sequence, r.sub_sequence) for r in records}) == len(records)
        recorded = recorded_steps(records)
        snapshots.append((len(started_steps(paths)), recorded))

    reported = finish(start_worker(paths, flow_id, steps, step_seconds))

    assert reported == {"status": "COMPLETE", "result": expected_result(steps)}
    assert_completed_once_per_position(paths, flow_id, steps)
    starts = started_steps(paths)
    assert set(starts) == all_steps
    previous_end, previously_recorded = 0, set[int]()
    for end, recorded_at_kill in [*snapshots, (len(starts), all_steps)]:
        run = starts[previous_end:end]
        # A resumed run replays what was recorded and starts at the first unrecorded step.
        assert not set(run) & previously_recorded, (run, previously_recorded, snapshots)
        if run:
            assert run[0] == min(all_steps - previously_recorded)
            assert run == list(range(run[0], run[0] + len(run)))
        # One step at most was cut by each kill: the flow runs its steps one after another.
        assert len(set(run) - recorded_at_kill) <= 1, (run, recorded_at_kill, snapshots)
        # Records of a sequential flow form a prefix and are never lost.
        assert previously_recorded <= recorded_at_kill
        assert recorded_at_kill == set(range(1, len(recorded_at_kill) + 1))
        previous_end, previously_recorded = end, recorded_at_kill
    reruns = Counter(starts) - Counter(all_steps)
    assert sum(reruns.values()) <= kills, (reruns, snapshots)


if __name__ == "__main__":
    database, side_effect_file, flow_name, step_count, seconds_per_step = sys.argv[1:]
    asyncio.run(
        run_worker(database, side_effect_file, flow_name, int(step_count), float(seconds_per_step))
    )
