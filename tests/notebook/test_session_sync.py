"""``Session.open_sync``: the session's methods without ``await``, for scripts and plain cells."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pyergon import await_external_signal, flow, flow_type, step
from pyergon.core import Completed, TaskStatus
from pyergon.errors import PyergonError
from pyergon.history import FlowHistory
from pyergon.notebook import Session, SyncSession
from pyergon.notebook._sync import LoopThread
from pyergon.storage import open_storage
from tests.waiting import flow_reaches

OPEN: list[SyncSession] = []
"""The session a step below reaches for, as careless user code would."""


@dataclass
@flow_type
class Double:
    n: int

    @step
    async def double(self) -> int:
        return self.n * 2

    @flow
    async def run(self) -> int:
        return await self.double()


@dataclass
@flow_type
class Gate:
    @flow
    async def run(self) -> object:
        return await await_external_signal("open")


@dataclass
@flow_type
class Careless:
    @step
    async def peek(self) -> int:
        return len(OPEN[0].flows())

    @flow
    async def run(self) -> int:
        return await self.peek()


@pytest.fixture
def sync(tmp_path: Path) -> Iterator[SyncSession]:
    with Session.open_sync(f"sqlite:///{tmp_path / 'flows.db'}") as session:
        yield session


def test_the_methods_of_a_session_block_and_return_what_the_session_returns(
    sync: SyncSession,
) -> None:
    (worker,) = sync.start_workers(Double, Gate)
    assert sync.workers == [worker]

    flow_id = sync.schedule(Double(21), "double")
    outcomes = sync.wait(flow_id, timeout=10)
    assert outcomes == {"double": Completed("double", 42)}
    assert sync.run(Double(1), "direct") == Completed("direct", 2)

    sync.schedule(Gate(), "gate")
    assert sync.signal("gate", "open", "now") is True
    assert sync.wait("gate", timeout=10)["gate"].result == "now"

    sync.schedule(Gate(), "closed")
    assert sync.cancel("closed").flow_id == "closed"
    history = sync.history("double")
    assert isinstance(history, FlowHistory)
    frame = sync.flows()
    assert isinstance(frame, pd.DataFrame)
    assert sorted(frame["flow_id"]) == ["closed", "direct", "double", "gate"]
    assert list(sync.invocations("double")["name"]) == ["double"]
    assert "pyergon session" in sync._repr_html_()
    sync.raise_for_errors()


def test_workers_run_between_calls_on_the_session_s_own_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    with Session.open_sync(url) as sync:
        sync.start_workers(Double)
        sync.schedule(Double(5), "between")

        # No call into the session from here on: only its loop thread can run the flow.
        async def complete() -> None:
            storage = await open_storage(url)
            try:
                await flow_reaches(storage, "between", TaskStatus.COMPLETE, within=20)
            finally:
                await storage.close()

        asyncio.run(complete())


def test_closing_stops_the_workers_and_the_loop_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    sync = Session.open_sync(f"sqlite:///{tmp_path / 'flows.db'}")
    (worker,) = sync.start_workers(Double)
    session = sync.session

    sync.close()

    assert session.workers == []
    assert not any(thread.name == "pyergon-session" for thread in threading.enumerate())
    assert set(threading.enumerate()) <= before | {t for t in before if t.is_alive()}
    with pytest.raises(PyergonError, match="closed"):
        sync.flows()
    assert worker.worker_id.startswith("notebook-")


def test_a_step_calling_the_blocking_session_fails_instead_of_hanging(sync: SyncSession) -> None:
    OPEN.append(sync)
    try:
        sync.start_workers(Careless)
        outcome = sync.wait(sync.schedule(Careless(), "careless"), timeout=10)["careless"]
    finally:
        OPEN.clear()

    assert outcome.status is TaskStatus.FAILED
    assert "blocking pyergon call was made on the loop it waits for" in str(outcome.error)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself is POSIX")
def test_an_interrupt_while_blocked_cancels_the_call_and_is_raised_again() -> None:
    runner = LoopThread()
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt() -> None:
        started.wait(10)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, to a script blocked in a call

    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.call(forever())
        assert cancelled.wait(10)
        assert runner.call(asyncio.sleep(0, "still serving")) == "still serving"
    finally:
        interrupter.join()
        runner.close()


OPEN_SYNC_IN_A_RUNNING_LOOP = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pyergon.notebook import Session
from tests.notebook.test_session_sync import Double

async def kernel():
    loop = asyncio.get_running_loop()
    # A cell without await, inside the kernel's running loop: the session uses that loop.
    sync = Session.open_sync("memory://")
    (worker,) = sync.start_workers(Double)
    names = {{task.get_name() for task in asyncio.all_tasks(loop)}}
    print(f"pyergon-worker-{{worker.worker_id}}" in names)
    sync.schedule(Double(4), "cell")
    print(sync.wait("cell", timeout=10)["cell"].result)
    sync.close()
    print(loop.is_running())

asyncio.run(kernel())
"""


@pytest.mark.slow
def test_open_sync_inside_a_running_loop_keeps_the_workers_on_that_loop(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent.parent)
    finished = subprocess.run(
        [sys.executable, "-W", "error", "-c", OPEN_SYNC_IN_A_RUNNING_LOOP.format(root=root)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == ["True", "8", "True"]
