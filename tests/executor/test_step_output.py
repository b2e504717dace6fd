"""What a step prints and how far it says it is: kept with its record, shown while it runs."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import pyergon
from pyergon import Completed, Executor, RetryPolicy, flow, flow_type, step
from pyergon._output import OUTPUT_LIMIT, StepStream, capture_step_output, tidy_output
from pyergon.core import InvocationStatus
from pyergon.core.records import Invocation
from pyergon.executor.worker import Worker
from pyergon.storage.base import ExecutionLog, WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from tests.waiting import until

attempts: list[int] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    attempts.clear()


async def records(storage: ExecutionLog, flow_id: str) -> dict[str, Invocation]:
    return {record.name: record for record in await storage.load_invocations(flow_id)}


@dataclass
@flow_type
class Chatty:
    rows: int

    @step
    async def load(self) -> int:
        print(f"loading {self.rows} rows")
        print("a warning", file=sys.stderr)
        return self.rows

    @step
    def clean(self, rows: int) -> int:
        print("cleaning in a thread")
        return rows - 1

    @flow
    async def run(self) -> int:
        print("the flow body itself")
        return await self.clean(await self.load())


async def test_what_a_step_prints_is_kept_with_its_record(
    storage: ExecutionLog, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await Executor(Chatty(10), storage, "chatty").run(lambda f: f.run())

    assert isinstance(outcome, Completed) and outcome.result == 9
    stored = await records(storage, "chatty")
    assert stored["load"].output == "loading 10 rows\na warning\n"
    assert stored["clean"].output == "cleaning in a thread\n"
    # Outside a Jupyter kernel the text goes through to the terminal as well.
    shown = capsys.readouterr()
    assert "loading 10 rows" in shown.out and "a warning" in shown.err
    assert "the flow body itself" in shown.out


async def test_a_replay_prints_nothing_and_keeps_the_output(
    storage: ExecutionLog, capsys: pytest.CaptureFixture[str]
) -> None:
    await Executor(Chatty(3), storage, "again").run(lambda f: f.run())
    capsys.readouterr()

    await Executor(Chatty(3), storage, "again").run(lambda f: f.run())

    assert "loading" not in capsys.readouterr().out
    assert (await records(storage, "again"))["load"].output == "loading 3 rows\na warning\n"


@dataclass
@flow_type
class Flaky:
    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0))
    def fetch(self) -> str:
        attempts.append(1)
        print(f"try {len(attempts)}")
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "ok"

    @flow
    async def run(self) -> str:
        return await self.fetch()


async def test_each_attempt_s_output_is_kept_under_its_own_heading(storage: ExecutionLog) -> None:
    await Executor(Flaky(), storage, "flaky").run(lambda f: f.run())

    record = (await records(storage, "flaky"))["fetch"]
    assert record.attempts == 3
    assert record.output == "try 1\n── attempt 2 ──\ntry 2\n── attempt 3 ──\ntry 3\n"


@dataclass
@flow_type
class Loud:
    lines: int

    @step
    async def shout(self) -> None:
        for number in range(self.lines):
            print(f"line {number:06d} " + "x" * 90)

    @flow
    async def run(self) -> None:
        await self.shout()


async def test_long_output_keeps_its_last_64_kib() -> None:
    storage = InMemoryExecutionLog()
    await Executor(Loud(2_000), storage, "loud").run(lambda f: f.run())

    output = (await records(storage, "loud"))["shout"].output
    assert output is not None and len(output) == OUTPUT_LIMIT
    assert output.endswith(f"line {1999:06d} " + "x" * 90 + "\n")


@dataclass
@flow_type
class Odd:
    @step
    async def draw(self) -> None:
        sys.stdout.write("10%\r50%\r100%\ndone \x00 here\n")

    @flow
    async def run(self) -> None:
        await self.draw()


async def test_redrawn_lines_and_unstorable_characters_are_cleaned(storage: ExecutionLog) -> None:
    await Executor(Odd(), storage, "odd").run(lambda f: f.run())

    assert (await records(storage, "odd"))["draw"].output == "100%\ndone \ufffd here\n"


def test_tidy_output_keeps_each_line_s_last_drawing() -> None:
    assert tidy_output("a\rb\rc\nd\r\n") == "c\nd\n"
    assert tidy_output("no returns\n") == "no returns\n"


@dataclass
@flow_type
class Silent:
    @step
    async def quiet(self) -> int:
        return 1

    @flow
    async def run(self) -> int:
        return await self.quiet()


async def test_a_step_that_prints_nothing_has_no_output(storage: ExecutionLog) -> None:
    await Executor(Silent(), storage, "silent").run(lambda f: f.run())

    record = (await records(storage, "silent"))["quiet"]
    assert record.output is None and record.progress is None


class KernelStream(io.StringIO):
    """Stands in for ipykernel's stream, which shows text in whichever cell runs now."""


KernelStream.__module__ = "ipykernel.iostream"


async def test_in_a_kernel_a_step_s_output_is_kept_and_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cell = KernelStream()
    monkeypatch.setattr(sys, "stdout", cell)
    storage = InMemoryExecutionLog()

    await Executor(Chatty(5), storage, "kernel").run(lambda f: f.run())

    assert isinstance(sys.stdout, StepStream) and sys.stdout.wrapped is cell
    assert "loading" not in cell.getvalue() and "cleaning" not in cell.getvalue()
    assert "the flow body itself" in cell.getvalue()  # not a step's: it goes to the cell
    assert (await records(storage, "kernel"))["load"].output is not None


def test_wrapping_is_done_once_and_forwards_what_it_does_not_handle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    capture_step_output()
    wrapped = sys.stdout
    capture_step_output()

    assert sys.stdout is wrapped and isinstance(wrapped, StepStream)
    assert wrapped.getvalue() == ""  # type: ignore[attr-defined]  # forwarded to StringIO
    print("outside any step")
    assert terminal.getvalue() == "outside any step\n"


# -- progress ------------------------------------------------------------------------------------


@dataclass
@flow_type
class Crunch:
    size: int

    @step
    def crunch(self) -> int:
        total = 0
        for number in pyergon.track(range(self.size), message="crunching"):
            total += number
        return total

    @step
    async def summarize(self, total: int) -> str:
        pyergon.progress(1, 2, "half way")
        pyergon.progress(2, 2)
        return f"sum {total}"

    @flow
    async def run(self) -> str:
        return await self.summarize(await self.crunch())


async def test_the_last_progress_is_kept_with_the_record(storage: ExecutionLog) -> None:
    outcome = await Executor(Crunch(1000), storage, "crunch").run(lambda f: f.run())

    assert isinstance(outcome, Completed) and outcome.result == "sum 499500"
    stored = await records(storage, "crunch")
    crunched = stored["crunch"].progress
    assert crunched is not None
    assert (crunched.done, crunched.total, crunched.message) == (1000, 1000, "crunching")
    summarized = stored["summarize"].progress
    assert summarized is not None and summarized.fraction == 1.0 and summarized.message is None


def test_progress_outside_a_step_goes_nowhere() -> None:
    pyergon.progress(1, 10, "testing the step's code by hand")
    assert list(pyergon.track([1, 2, 3])) == [1, 2, 3]


@dataclass
@flow_type
class Careless:
    @step
    async def report(self) -> None:
        pyergon.progress(float("nan"))

    @flow
    async def run(self) -> None:
        await self.report()


async def test_bad_progress_names_the_step() -> None:
    outcome = await Executor(Careless(), InMemoryExecutionLog(), "careless").run(lambda f: f.run())

    assert isinstance(outcome, Completed) and outcome.error is not None
    assert "pyergon.progress() in step 'report'" in str(outcome.error)


# -- what runs now -------------------------------------------------------------------------------

gate = threading.Event()
inside = threading.Event()


@dataclass
@flow_type
class Waiting:
    @step
    def hold(self) -> str:
        pyergon.progress(3, 10, "waiting for the test")
        print("holding")
        inside.set()
        assert gate.wait(10), "the test never let the step go"
        return "let go"

    @flow
    async def run(self) -> str:
        return await self.hold()


@pytest.fixture
def held() -> Iterator[None]:
    gate.clear()
    inside.clear()
    yield
    gate.set()


@pytest.mark.usefixtures("held")
async def test_a_worker_shows_its_running_step_and_its_heartbeat_stores_it(
    storage: ExecutionLog,
) -> None:
    worker = Worker(storage, "shower", lease_seconds=0.4)
    await worker.register(Waiting)
    await pyergon.Scheduler(storage).schedule(Waiting(), "waiting")
    handle = await worker.start()
    try:
        assert await asyncio.to_thread(inside.wait, 10)
        (running,) = worker.activity()
        assert (running.flow_id, running.position, running.step) == ("waiting", "1", "hold")
        assert running.progress is not None and running.progress.describe() == (
            "3/10 · waiting for the test"
        )
        if isinstance(storage, WorkerRegistry):

            async def stored() -> bool:
                record = await storage.get_worker("shower")
                return record is not None and [a.step for a in record.activity] == ["hold"]

            await until(stored)
        gate.set()

        async def done() -> bool:
            flow = await storage.get_flow("waiting")
            return flow is not None and flow.status.is_final

        await until(done)
        assert worker.activity() == ()
        record = (await records(storage, "waiting"))["hold"]
        assert record.status is InvocationStatus.COMPLETE and record.output == "holding\n"
    finally:
        await handle.shutdown()
