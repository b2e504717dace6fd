"""``pyergon.run``: a script runs a flow to its end with one call, durably."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyergon
from pyergon import Scheduler, await_external_signal, flow, flow_type, schedule_timer, step
from pyergon.core import TaskStatus
from pyergon.errors import FlowDefinitionError
from pyergon.storage import open_storage
from pyergon.storage.memory import InMemoryExecutionLog
from tests.waiting import stored_status

RUNS: list[str] = []
"""What the steps below did, in order; cleared before each test."""


@pytest.fixture(autouse=True)
def _clear_runs() -> Iterator[None]:
    RUNS.clear()
    yield
    RUNS.clear()


@dataclass
@flow_type
class Report:
    region: str

    @step
    async def load(self) -> list[int]:
        RUNS.append(f"load {self.region}")
        return [1, 2, 3]

    @step
    async def total(self, values: list[int]) -> int:
        RUNS.append("total")
        return sum(values)

    @flow
    async def run(self) -> str:
        values = await self.load()
        await schedule_timer(0.05)
        return f"{self.region}: {await self.total(values)}"


@dataclass
@flow_type
class Broken:
    @step
    async def fail(self) -> None:
        raise ValueError("no such column: 'price'")

    @flow
    async def run(self) -> None:
        await self.fail()


@dataclass
@flow_type
class Approval:
    request: str

    @flow
    async def run(self) -> str:
        decision = await await_external_signal("decision")
        return f"{self.request}: {decision}"


@dataclass
@flow_type
class Batch:
    @flow
    async def run(self) -> list[str]:
        # The children run inline: neither class is registered anywhere.
        first = await self.invoke(Report("south")).result()
        second = await self.invoke(Approval("budget")).result()
        return [first, second]


def url_in(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flows.db'}"


def signal_once_waiting(url: str, flow_id: str, name: str, value: object) -> threading.Thread:
    """Send a signal from another thread (as another process would) once the flow waits for it."""

    async def send() -> None:
        storage = await open_storage(url)
        try:
            async with asyncio.timeout(20):
                while True:
                    flow = await storage.get_flow(flow_id)
                    if flow is not None and flow.status is TaskStatus.SUSPENDED:
                        break
                    await asyncio.sleep(0.005)
            await Scheduler(storage).signal(flow_id, name, value)
        finally:
            await storage.close()

    thread = threading.Thread(target=asyncio.run, args=(send(),))
    thread.start()
    return thread


def test_run_returns_the_result_after_the_timer_and_again_from_storage(tmp_path: Path) -> None:
    url = url_in(tmp_path)

    first = pyergon.run(Report("north"), storage=url, flow_id="report")
    again = pyergon.run(Report("north"), storage=url, flow_id="report")

    assert first == again == "north: 6"
    assert RUNS == ["load north", "total"]  # the second call ran no step
    assert stored_status(url, "report") is TaskStatus.COMPLETE


def test_run_raises_the_flow_error_as_a_script_expects(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such column"):
        pyergon.run(Broken(), storage=url_in(tmp_path), flow_id="broken")

    assert stored_status(url_in(tmp_path), "broken") is TaskStatus.FAILED


def test_run_without_storage_uses_the_default_file_of_the_pyergon_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYERGON_STORAGE", raising=False)

    assert pyergon.run(Report("east"), flow_id="east") == "east: 6"

    assert stored_status("sqlite:///pyergon.db", "east") is TaskStatus.COMPLETE
    monkeypatch.setenv("PYERGON_STORAGE", url_in(tmp_path))
    assert pyergon.run(Report("west"), flow_id="west") == "west: 6"
    assert stored_status(url_in(tmp_path), "west") is TaskStatus.COMPLETE


def test_run_names_the_flow_it_made_up_an_id_for(tmp_path: Path) -> None:
    storage = InMemoryExecutionLog()

    assert pyergon.run(Report("north"), storage=storage) == "north: 6"

    flows = asyncio.run(storage.list_flows())
    assert [flow.flow_id.startswith("Report-") for flow in flows] == [True]


def test_a_flow_waiting_for_a_signal_times_out_saying_how_to_go_on(tmp_path: Path) -> None:
    url = url_in(tmp_path)

    with pytest.raises(TimeoutError) as raised:
        pyergon.run(Approval("laptop"), storage=url, flow_id="approval", timeout=0.2)

    message = str(raised.value)
    assert "flow 'approval' is still waiting for signal 'decision' after 0.2 s" in message
    assert f"`pyergon signal approval decision VALUE --storage {url}`" in message
    assert "flow_id='approval') again resumes it" in message
    assert stored_status(url, "approval") is TaskStatus.SUSPENDED

    sender = signal_once_waiting(url, "approval", "decision", "yes")
    sender.join()
    assert pyergon.run(Approval("laptop"), storage=url, flow_id="approval") == "laptop: yes"


def test_run_blocks_until_a_signal_sent_from_elsewhere_arrives(tmp_path: Path) -> None:
    url = url_in(tmp_path)
    sender = signal_once_waiting(url, "approval", "decision", "approved")

    result = pyergon.run(Approval("laptop"), storage=url, flow_id="approval", timeout=20)
    sender.join()

    assert result == "laptop: approved"


def test_children_run_inline_and_a_childs_signal_wakes_the_run(tmp_path: Path) -> None:
    url = url_in(tmp_path)
    # The second child is the parent's second operation: its id is derived from that position.
    sender = signal_once_waiting(url, "batch~child-2", "decision", "ok")

    result = pyergon.run(Batch(), storage=url, flow_id="batch", timeout=20)
    sender.join()

    assert result == ["south: 6", "budget: ok"]
    assert stored_status(url, "batch~child-1") is TaskStatus.COMPLETE


def test_a_timeout_inside_a_child_names_the_signal_and_the_child(tmp_path: Path) -> None:
    url = url_in(tmp_path)

    with pytest.raises(TimeoutError, match=r"signal 'decision'.*pyergon signal batch~child-2 "):
        pyergon.run(Batch(), storage=url, flow_id="batch", timeout=0.5)


def test_run_refuses_what_is_not_a_flow_before_touching_storage(tmp_path: Path) -> None:
    with pytest.raises(FlowDefinitionError):
        pyergon.run(object(), storage=url_in(tmp_path))

    assert not (tmp_path / "flows.db").exists()


RUN_IN_A_RUNNING_LOOP = """
import asyncio, sys
sys.path.insert(0, {root!r})
import pyergon
from tests.test_run import Report

async def cell():
    # A notebook cell calling the sync front door inside the kernel's running loop.
    assert "nest_asyncio2" not in sys.modules
    print(pyergon.run(Report("cell"), storage="memory://"))
    print(getattr(asyncio.get_running_loop(), "_nest_patched", False))

asyncio.run(cell())
"""


@pytest.mark.slow
def test_run_inside_a_running_loop_uses_that_loop_through_nest_asyncio2(tmp_path: Path) -> None:
    # nest-asyncio2 patches asyncio for the whole process: a fresh interpreter keeps it there.
    root = str(Path(__file__).resolve().parent.parent)
    finished = subprocess.run(
        [sys.executable, "-W", "error", "-c", RUN_IN_A_RUNNING_LOOP.format(root=root)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == ["cell: 6", "True"]
