"""The ``cell_latency`` scenario: how long a trivial cell takes while a CPU-heavy step runs.

Measured as a notebook user feels it: a real Jupyter kernel, started with jupyter_client as
Jupyter starts one, defines a flow of one step that computes in pure Python for ``n`` seconds,
opens a ``Session`` on a new SQLite file with two workers and schedules the flow. While the
step runs, the harness sends ``1 + 1`` cells one after another, each once the previous one's
reply came, and times each ``execute_request`` → ``execute_reply`` round trip. Variants: ``def``
(the step is a ``def`` step: its body runs in the worker's thread pool) and ``async`` (an
``async def`` step: its body holds the kernel's event loop, so a cell waits for it — the
"before" of issue 15). The step notes its start and end in a file; afterwards the harness
reads the flow and the step's record from storage: the flow must be complete, and the step
must have run exactly once (one attempt, one body start).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.backends import fresh_storage
from benchmarks.result import RunResult
from pyergon.core.status import OperationKind, TaskStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager

__all__ = ["IDLE_CELLS", "LATENCY_TARGET_MS", "VARIANTS", "cell_latency"]

VARIANTS = ("def", "async")
"""How the CPU-heavy step is written: ``def`` (runs in a thread) or ``async def`` (on the loop)."""
LATENCY_TARGET_MS = 500
"""Issue 15: a trivial cell completes within 0.5 s while the step runs."""
IDLE_CELLS = 20
"""Cells timed before the flow is scheduled, workers idle: what a cell costs anyway."""
FLOW_ID = "burn"
CELL = "1 + 1"
START_TIMEOUT = 60.0
"""Seconds to wait for the kernel, a setup cell or the step's start."""

_SETUP = """
import os, time
from dataclasses import dataclass
from pyergon import flow, flow_type, step
from pyergon.notebook import Session

def note(path, word):
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{{word}} {{time.time()!r}}\\n".encode())
    finally:
        os.close(descriptor)

def burn_cpu(seconds, notes):
    note(notes, "start")
    deadline, rounds = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        total = 0
        for value in range(10_000):
            total += value * value
        rounds += 1
    note(notes, "end")
    return rounds

@dataclass
@flow_type
class Burn:
    seconds: float
    notes: str

    @step
    {keyword} burn(self) -> int:
        return burn_cpu(self.seconds, self.notes)

    @flow
    async def run(self) -> int:
        return await self.burn()

session = await Session.open({url!r})
await session.start_workers(Burn, count=2)
"""


@dataclass
class _Timings:
    """What the harness measured against the kernel in one run."""

    idle_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)


class _Kernel:
    """A kernel and its client; cells run one at a time and are timed client-side."""

    def __init__(self, manager: AsyncKernelManager, client: AsyncKernelClient) -> None:
        self.manager = manager
        self.client = client

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls) -> AsyncIterator[_Kernel]:
        """A new ``python3`` kernel, shut down on exit."""
        from jupyter_client.manager import start_new_async_kernel

        manager, client = await start_new_async_kernel(
            startup_timeout=START_TIMEOUT, kernel_name="python3"
        )
        try:
            yield cls(manager, client)
        finally:
            client.stop_channels()
            await manager.shutdown_kernel(now=True)

    async def run(self, code: str, timeout: float = START_TIMEOUT) -> float:
        """Run ``code``; return the request → reply round trip in ms. An error fails the run."""
        started = time.perf_counter()
        msg_id = self.client.execute(code)
        while True:
            try:
                reply = await self.client.get_shell_msg(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"no reply from the kernel to {code!r} in {timeout} s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        elapsed = (time.perf_counter() - started) * 1000
        content: dict[str, Any] = reply["content"]
        if content["status"] != "ok":
            raise RuntimeError(
                f"the cell {code[:60]!r}... failed in the kernel: "
                f"{content.get('ename')}: {content.get('evalue')}"
            )
        await self._drop_output()
        return elapsed

    async def _drop_output(self) -> None:
        """Read what the kernel published (unread, it piles up), outside the timed round trip.

        Not ``iopub_channel.get_msgs()``: in jupyter_client 8.10 it waits forever for the
        next message once none is left.
        """
        with contextlib.suppress(queue.Empty):
            while True:
                await self.client.get_iopub_msg(timeout=0)


def _notes(path: Path, word: str) -> list[float]:
    """The times the step noted ``word`` (``start`` or ``end``) in its file."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [float(line.split()[1]) for line in lines if line.startswith(f"{word} ")]


async def _until_started(notes: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not _notes(notes, "start"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the step did not start within {START_TIMEOUT} s")
        await asyncio.sleep(0.001)


async def _measure(url: str, seconds: int, variant: str, notes: Path) -> _Timings:
    """Drive a new kernel through one run."""
    keyword = "def" if variant == "def" else "async def"
    timings = _Timings()
    async with _Kernel.started() as kernel:
        await kernel.run(_SETUP.format(keyword=keyword, url=url))
        timings.idle_ms = [await kernel.run(CELL) for _ in range(IDLE_CELLS)]
        await kernel.run(f"await session.schedule(Burn({seconds}, {str(notes)!r}), {FLOW_ID!r})")
        await _until_started(notes)
        # Each cell is sent before the step's end was seen, so each waited on a running step.
        while not _notes(notes, "end"):
            timings.busy_ms.append(await kernel.run(CELL, timeout=seconds + START_TIMEOUT))
        wait = seconds * 3 + START_TIMEOUT
        await kernel.run(f"await session.wait({FLOW_ID!r}, timeout={wait})", timeout=wait + 10)
        await kernel.run("await session.close()")
    return timings


async def cell_latency(backend: str, n: int, *, variant: str) -> RunResult:
    """Time trivial cells while a flow's ``n``-second CPU step runs on the session's workers."""
    if variant not in VARIANTS:
        raise ValueError(f"cell_latency has no variant {variant!r}; choose one of {VARIANTS}")
    with tempfile.TemporaryDirectory(prefix="pyergon-bench-cells-") as directory:
        notes = Path(directory) / "step-notes.txt"
        async with fresh_storage(backend) as fresh:
            timings = await _measure(fresh.url, n, variant, notes)
            stored = await fresh.storage.get_flow(FLOW_ID)
            records = await fresh.storage.load_invocations(FLOW_ID)
        starts, ends = _notes(notes, "start"), _notes(notes, "end")
    if stored is None or stored.status is not TaskStatus.COMPLETE:
        raise RuntimeError(f"flow {FLOW_ID!r} did not complete: {stored!r}")
    (record,) = [record for record in records if record.kind is OperationKind.STEP]
    return RunResult(
        ends[-1] - starts[0],
        latencies_ms=timings.busy_ms,
        extra={
            "variant": variant,
            "cells": len(timings.busy_ms),
            "idle_cell_p50_ms": statistics.median(timings.idle_ms),
            "step_seconds": n,
            "latency_target_ms": LATENCY_TARGET_MS,
        },
        # Each must be 0: the step ran exactly once, and no second worker took it.
        totals={
            "extra_attempts": record.attempts - 1,
            "extra_body_starts": len(starts) - 1,
        },
    )
