"""In a real kernel: an interrupted wait or run ends the cell with one line, errors are one line.

A kernel is started with jupyter_client, as Jupyter starts one; the tests interrupt it as the
stop button does, once the cell waits: the cell schedules a print with ``call_soon`` before it
awaits, so the print comes out only when the cell's task is suspended inside the wait.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

READY = "pyergon-test: the cell waits"
SETUP = """
import asyncio
from dataclasses import dataclass
from pyergon import await_external_signal, flow, flow_type, step
from pyergon.notebook import Session

@dataclass
@flow_type
class Gate:
    @flow
    async def run(self) -> object:
        return await await_external_signal("open")

@dataclass
@flow_type
class Stuck:
    @step
    async def forever(self) -> None:
        await asyncio.Event().wait()

    @flow
    async def run(self) -> None:
        await self.forever()

session = await Session.open("memory://")
await session.start_workers(Gate)
[await session.schedule(Gate(), flow_id) for flow_id in ("a", "b")]
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Cell:
    """What a cell sent: its streams, its error outputs, and the kernel's reply."""

    streams: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""
    ename: str | None = None

    @property
    def error_lines(self) -> list[str]:
        return [_ANSI.sub("", line) for error in self.errors for line in error["traceback"]]


class Kernel:
    def __init__(self, manager: KernelManager, client: BlockingKernelClient) -> None:
        self.manager = manager
        self.client = client

    def run(self, code: str, *, interrupt_on: str | None = None) -> Cell:
        """Run ``code``; interrupt the kernel once ``interrupt_on`` is printed."""
        msg_id = self.client.execute(code)
        cell = Cell()
        while True:
            try:
                message = self.client.get_iopub_msg(timeout=60)
            except queue.Empty:  # pragma: no cover - a hung kernel fails the test clearly
                raise AssertionError(f"no output from the kernel for {code!r}") from None
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                cell.streams += content["text"]
                if interrupt_on is not None and interrupt_on in cell.streams:
                    self.manager.interrupt_kernel()
                    interrupt_on = None
            elif kind == "error":
                cell.errors.append(content)
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:
            reply = self.client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        cell.status, cell.ename = reply["content"]["status"], reply["content"].get("ename")
        return cell

    def ok(self, code: str) -> Cell:
        cell = self.run(code)
        assert cell.status == "ok", cell
        return cell


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        running = Kernel(manager, client)
        running.ok(SETUP)
        yield running
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def waits(statement: str) -> str:
    """A cell that prints READY once it is suspended in ``statement``, then runs it."""
    announce = f"asyncio.get_running_loop().call_soon(lambda: print({READY!r}, flush=True))"
    return f"{announce}\n{statement}"


def test_an_interrupted_wait_ends_the_cell_with_one_line_and_the_flows_go_on(
    kernel: Kernel,
) -> None:
    cell = kernel.run(waits("await session.wait(['a', 'b'])"), interrupt_on=READY)

    assert (cell.status, cell.ename) == ("error", "CancelledError")  # ended as interrupted
    assert cell.error_lines == [
        "Interrupted: the wait stopped, not the flows: 'a', 'b' go on in the background. "
        "`await session.wait(['a', 'b'])` waits again; `await session.cancel('a')` stops one "
        "(a def step that is running finishes first: a thread cannot be killed)."
    ]
    # The flows did go on: a signal finishes one, and waiting again returns it.
    kernel.ok("await session.signal('a', 'open', 'yes')")
    done = kernel.ok("print((await session.wait('a', timeout=10))['a'].result)")
    assert done.streams == "yes\n"

    traceback = kernel.run("%tb").error_lines
    assert any("CancelledError" in line for line in traceback)
    assert any("await session.wait(['a', 'b'])" in line for line in traceback)


def test_an_interrupted_run_says_the_flow_stopped_and_how_to_go_on(kernel: Kernel) -> None:
    cell = kernel.run(waits("await session.run(Stuck(), 'stuck')"), interrupt_on=READY)

    assert (cell.status, cell.ename) == ("error", "CancelledError")
    (line,) = cell.error_lines
    assert line.startswith("Interrupted: flow 'stuck' stopped at its current step;")
    assert "`await session.run(flow, 'stuck')` goes on from there" in line


def test_a_pyergon_error_is_one_line_and_other_errors_keep_their_traceback(
    kernel: Kernel,
) -> None:
    missing = kernel.run("await session.history('ghost')")
    assert (missing.status, missing.ename) == ("error", "FlowNotFoundError")
    assert missing.error_lines == [
        "FlowNotFoundError: no flow with id 'ghost' in storage; list flows to see the ids "
        "that exist"
    ]

    bug = kernel.run("1 / 0")
    assert bug.ename == "ZeroDivisionError"
    assert len(bug.error_lines) > 1
    assert "Traceback" in bug.error_lines[1]


def test_programmatic_cancellation_keeps_asyncio_semantics(kernel: Kernel) -> None:
    timed_out = kernel.run("async with asyncio.timeout(0.1):\n    await session.wait('b')")
    assert timed_out.ename == "TimeoutError"

    cancelled = kernel.ok(
        "task = asyncio.ensure_future(session.wait('b'))\n"
        "await asyncio.sleep(0)\n"
        "task.cancel()\n"
        "try:\n"
        "    await task\n"
        "except asyncio.CancelledError:\n"
        "    pass\n"
        "print(task.cancelled())"
    )
    assert cancelled.streams == "True\n"


def test_a_magic_error_is_one_line_and_traceback_shows_it_in_full(kernel: Kernel) -> None:
    kernel.ok("%load_ext pyergon")
    try:
        kernel.ok("%pyergon connect memory://")
        missing = kernel.run("%pyergon show ghost")
        assert (missing.status, missing.ename) == ("error", "FlowNotFoundError")
        assert missing.error_lines == [
            "FlowNotFoundError: no flow with id 'ghost' in storage; list flows to see the ids "
            "that exist"
        ]

        full = kernel.run("%pyergon --traceback show ghost")
        assert full.ename == "FlowNotFoundError"
        assert len(full.error_lines) > 1
        assert "Traceback" in full.error_lines[1]

        usage = kernel.run("%pyergon schedule Gate() --id")
        assert usage.ename == "UsageError"
        shown = usage.streams + "\n".join(usage.error_lines)
        assert "%pyergon schedule: --id needs a value" in shown
        assert "usage: %pyergon schedule [-h] [--id ID] EXPR" in shown
    finally:
        kernel.ok("%unload_ext pyergon")
