"""``@step(isolate="process")``: each attempt in a child process, its answer sent back pickled."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pyergon
from pyergon import (
    Completed,
    Executor,
    RetryPolicy,
    Scheduler,
    StepFailedError,
    StepProcessError,
    StepTimeoutError,
    Worker,
    flow,
    flow_type,
    step,
)
from pyergon.core import InvocationStatus, TaskStatus
from pyergon.executor import _process
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog


@dataclass
@flow_type
class Crunch:
    numbers: list[int]

    @step(isolate="process")
    def total(self) -> tuple[int, int, str]:
        print(f"summing {len(self.numbers)} numbers")
        print("careful", file=sys.stderr)
        return sum(self.numbers), os.getpid(), pyergon.idempotency_key()

    @flow
    async def run(self) -> tuple[int, int, str]:
        return await self.total()


async def test_a_process_step_runs_in_another_process_and_its_result_is_recorded(
    storage: ExecutionLog, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await Executor(Crunch([1, 2, 3]), storage, "proc-1").run(Crunch.run)

    assert isinstance(outcome, Completed) and outcome.result is not None
    total, pid, key = outcome.result
    assert (total, key) == (6, "proc-1:1")
    assert pid != os.getpid()
    [record] = await storage.load_invocations("proc-1")
    assert (record.name, record.status) == ("total", InvocationStatus.COMPLETE)
    printed = capsys.readouterr()
    assert printed.out == "summing 3 numbers\n"  # written out here when the attempt ended
    assert printed.err == "careful\n"


class Unpicklable(Exception):
    """An error that holds a lock: it cannot travel back from the child."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@dataclass
@flow_type
class Failing:
    how: str
    marker: str = ""

    @step(isolate="process", retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.0))
    def work(self) -> str:
        print(f"attempt in {self.how}")
        first = not Path(self.marker).exists() if self.marker else True
        if self.marker:
            Path(self.marker).touch()
        if self.how == "raise":
            raise ValueError(f"bad input {self.how}")
        if self.how == "unpicklable":
            raise Unpicklable("holds a lock")
        if self.how == "kill" and first:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.how == "exit" and first:
            os._exit(3)
        if self.how == "lambda":
            return lambda: "cannot travel"  # type: ignore[return-value]
        return f"survived {self.how}"

    @flow
    async def run(self) -> str:
        return await self.work()


async def run_failing(how: str, marker: str = "") -> tuple[Completed[str], int]:
    storage = InMemoryExecutionLog()
    outcome = await Executor(Failing(how, marker), storage, "proc").run(Failing.run)
    assert isinstance(outcome, Completed)
    [record] = await storage.load_invocations("proc")
    return outcome, record.attempts


async def test_an_error_raised_in_the_process_comes_back_as_itself() -> None:
    outcome, attempts = await run_failing("raise")

    assert isinstance(outcome.error, ValueError)
    assert str(outcome.error) == "bad input raise"
    assert attempts == 2
    assert any("raised in the process of step 'work'" in note for note in outcome.error.__notes__)


async def test_an_error_that_cannot_be_pickled_comes_back_as_text() -> None:
    outcome, _ = await run_failing("unpicklable")

    assert isinstance(outcome.error, StepFailedError)
    assert outcome.error.error_type.endswith("Unpicklable")
    assert outcome.error.error_message == "holds a lock"
    assert 'raise Unpicklable("holds a lock")' in outcome.error.traceback_text


@pytest.mark.parametrize("how", ["kill", "exit"])
async def test_a_process_that_dies_fails_the_attempt_and_is_retried(
    how: str, tmp_path: Path
) -> None:
    outcome, attempts = await run_failing(how, str(tmp_path / "ran-once"))

    assert outcome.result == f"survived {how}"
    assert attempts == 2


@pytest.mark.parametrize(
    ("how", "ended"), [("kill", "was killed by signal SIGKILL"), ("exit", "exited with code 3")]
)
async def test_a_process_that_dies_on_every_attempt_fails_the_step(how: str, ended: str) -> None:
    outcome, attempts = await run_failing(how)

    assert isinstance(outcome.error, StepProcessError)
    assert f"step 'work' of flow 'proc' at position 1: its process {ended}" in str(outcome.error)
    assert attempts == 2


async def test_a_result_that_cannot_be_pickled_fails_the_step_once() -> None:
    outcome, attempts = await run_failing("lambda")

    assert isinstance(outcome.error, StepProcessError)
    assert "cannot be sent back from its process" in str(outcome.error)
    assert attempts == 1  # it would fail the same way again


def nap(pid_file: str) -> str:
    Path(pid_file).write_text(str(os.getpid()))
    threading.Event().wait(30)
    return "woke"


@dataclass
@flow_type
class Sleepy:
    pid_file: str

    @step(isolate="process", timeout=0.5)
    def timed_nap(self) -> str:
        return nap(self.pid_file)

    @step(isolate="process")
    def nap(self) -> str:
        return nap(self.pid_file)

    @flow
    async def run(self) -> str:
        return await self.timed_nap()

    @flow
    async def run_untimed(self) -> str:
        return await self.nap()


def process_is_gone(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_timeout_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    outcome = await Executor(Sleepy(str(pid_file)), InMemoryExecutionLog()).run(Sleepy.run)

    assert isinstance(outcome, Completed) and isinstance(outcome.error, StepTimeoutError)
    assert "timeout of 0.5 s" in str(outcome.error)
    assert process_is_gone(pid_file)


async def test_cancelling_the_flow_task_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    executor = Executor(Sleepy(str(pid_file)), InMemoryExecutionLog())
    run = asyncio.create_task(executor.run(Sleepy.run_untimed))
    async with asyncio.timeout(10):
        while not pid_file.exists() or not pid_file.read_text():  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.01)

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert process_is_gone(pid_file)


class Model:
    """Stands for a class a notebook defines: its module is ``__main__``."""

    def predict(self) -> int:
        return 1


@dataclass
@flow_type
class Scoring:
    model: object
    locked: bool = False
    lock: object = field(default=None, init=False, compare=False)  # not stored with the flow

    def __post_init__(self) -> None:
        if self.locked:
            self.lock = threading.Lock()

    @step(isolate="process", retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0))
    def score(self, extra: object = None) -> int:
        return 1

    @flow
    async def run(self) -> int:
        return await self.score()


async def test_a_class_of_main_under_spawn_gives_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_process, "START_METHOD", "spawn")
    monkeypatch.setattr(Model, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Model", Model, raising=False)
    storage = InMemoryExecutionLog()

    outcome = await Executor(Scoring(Model()), storage, "scoring").run(Scoring.run)

    assert isinstance(outcome, Completed) and isinstance(outcome.error, StepProcessError)
    message = str(outcome.error)
    assert "step 'score' of flow 'scoring'" in message
    assert "field 'model' of the flow uses the class Model, defined in __main__" in message
    assert "'spawn'" in message and "Move the class into a module" in message
    [record] = await storage.load_invocations("scoring")
    assert record.attempts == 1  # not retried: it would fail the same way


async def test_a_field_that_cannot_be_pickled_gives_a_clear_error() -> None:
    outcome = await Executor(Scoring(Model(), locked=True), InMemoryExecutionLog()).run(Scoring.run)

    assert isinstance(outcome, Completed) and isinstance(outcome.error, StepProcessError)
    assert "field 'lock' of the flow cannot be pickled" in str(outcome.error)
    assert "run the step in a thread" in str(outcome.error)


def test_process_output_is_kept_to_its_last_64_kib() -> None:
    tail = _process._Tail()
    for index in range(200):
        tail.write(f"{index:04d}" + "x" * 1020 + "\n")

    kept = tail.text()
    assert len(kept) == _process.OUTPUT_LIMIT
    assert kept.endswith("0199" + "x" * 1020 + "\n")


async def test_a_worker_runs_a_process_step_beside_its_heartbeats(storage: ExecutionLog) -> None:
    worker = Worker(storage, "forker", lease_seconds=1.0)
    worker.register(Crunch)
    flow_id = await Scheduler(storage).schedule(Crunch([4, 5]))

    await worker.run_until_idle()

    stored = await storage.get_flow(flow_id)
    assert stored is not None and stored.status is TaskStatus.COMPLETE
    [record] = await storage.load_invocations(flow_id)
    assert record.status is InvocationStatus.COMPLETE
