"""Workers for the queued scenarios: OS processes running ``benchmarks.worker``, or one
in-process worker for the memory backend (which other processes cannot see).

Both are async context managers with the same surface: ``go()`` starts serving,
``wait_finished(count)`` returns once the workers together finished ``count`` flows, and leaving
the block stops them (SIGTERM, then SIGKILL after a grace period, for processes). Afterwards
``peak_rss_mb`` is the largest worker process's peak RSS (``None`` in process). Processes can
also be SIGKILLed (``kill``) and started again under the same worker id (``restart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from benchmarks.flows import FLOW_TYPES
from pyergon import Worker, WorkerHandle
from pyergon.storage.base import ExecutionLog

__all__ = ["InProcessWorkers", "ProcessWorkers", "Workers"]

MAX_CONCURRENT_FLOWS = 50
STARTUP_TIMEOUT = 60.0
STOP_GRACE = 15.0
REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkerFailedError(RuntimeError):
    """A worker process exited or stopped answering before the scenario was over."""


class Workers(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def go(self) -> None: ...

    async def wait_finished(self, count: int, timeout: float) -> None: ...

    @property
    def peak_rss_mb(self) -> float | None: ...

    @property
    def pids(self) -> list[int]: ...


class ProcessWorkers:
    """``count`` worker processes on the storage at ``url``.

    ``max_concurrent`` is each one's ``max_concurrent_flows``; ``options`` are more arguments of
    ``benchmarks.worker`` (``--lease-seconds``, ``--types``, ``--no-reports``).
    """

    def __init__(
        self,
        url: str,
        count: int,
        *,
        max_concurrent: int = MAX_CONCURRENT_FLOWS,
        options: Sequence[str] = (),
    ) -> None:
        self._url = url
        self._count = count
        self._max_concurrent = max_concurrent
        self._options = tuple(options)
        self._processes: list[asyncio.subprocess.Process] = []
        self._finished: list[int] = [0] * count
        self._peaks: list[float] = []
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        try:
            for number in range(self._count):
                self._processes.append(await self._spawn(number))
            async with asyncio.timeout(STARTUP_TIMEOUT):
                for number, process in enumerate(self._processes):
                    await self._expect_ready(number, process)
        except BaseException:
            await self._stop()
            raise
        self._readers = [
            asyncio.create_task(self._read_reports(number, process))
            for number, process in enumerate(self._processes)
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    @staticmethod
    def worker_id(number: int) -> str:
        """The ``worker_id`` of worker ``number``."""
        return f"bench-worker-{number}"

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, by number."""
        return [process.pid for process in self._processes]

    async def kill(self, number: int) -> None:
        """SIGKILL worker ``number`` and wait for it: it stops holding whatever it held.

        ``wait_finished`` fails from then on (a worker exited); wait on storage instead.
        """
        process = self._processes[number]
        process.kill()
        await process.wait()

    async def restart(self, number: int) -> None:
        """Start worker ``number`` again under its id, once ``kill`` ended it, and let it serve.

        The new process registers under the same ``worker_id`` (taking over the flows its
        killed incarnation held) and serves as soon as it is ready.
        """
        process = await self._spawn(number)
        self._processes[number] = process  # stopped on exit even if it never gets ready
        async with asyncio.timeout(STARTUP_TIMEOUT):
            await self._expect_ready(number, process)
        await self._send_go(process)
        self._readers.append(asyncio.create_task(self._read_reports(number, process)))

    async def go(self) -> None:
        for process in self._processes:
            await self._send_go(process)

    async def _spawn(self, number: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.worker",
            self._url,
            self.worker_id(number),
            str(self._max_concurrent),
            *self._options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )

    @staticmethod
    async def _send_go(process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()

    async def wait_finished(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while sum(self._finished) < count:
                self._changed.clear()
                dead = [p.pid for p in self._processes if p.returncode is not None]
                if dead:
                    raise WorkerFailedError(f"worker process(es) {dead} exited early")
                await self._changed.wait()

    async def _expect_ready(self, number: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if line.strip() != b"ready":
            await process.wait()
            raise WorkerFailedError(
                f"worker {number} did not start (exit code {process.returncode}); "
                "its stderr is above"
            )

    async def _read_reports(self, number: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            word, _, value = line.decode().partition(" ")
            if word == "finished":
                self._finished[number] = int(value)
                self._changed.set()
            elif word == "peak_rss_mb":
                self._peaks.append(float(value))
        await process.wait()
        self._changed.set()  # let wait_finished notice the exit

    async def _stop(self) -> None:
        for process in self._processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), max(deadline - time.monotonic(), 0.1))
            except TimeoutError:
                print(f"worker {process.pid} ignored SIGTERM; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._readers:  # they end at the workers' EOF, after the last report
            _, late = await asyncio.wait(self._readers, timeout=STOP_GRACE)
            for reader in late:
                reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)

    @property
    def peak_rss_mb(self) -> float | None:
        return max(self._peaks, default=None)


class InProcessWorkers:
    """One worker on this event loop, for storage only this process can see."""

    def __init__(self, storage: ExecutionLog, flow_types: Sequence[type] = FLOW_TYPES) -> None:
        self._worker = Worker(storage, "bench-inprocess", max_concurrent_flows=MAX_CONCURRENT_FLOWS)
        self._flow_types = tuple(flow_types)
        self._handle: WorkerHandle | None = None

    async def __aenter__(self) -> Self:
        for flow_class in self._flow_types:
            await self._worker.register(flow_class)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            await self._handle.shutdown(deadline=5.0)

    async def go(self) -> None:
        self._handle = await self._worker.start()

    @property
    def peak_rss_mb(self) -> float | None:
        return None  # part of this process's

    @property
    def pids(self) -> list[int]:
        return []  # the worker shares this process

    async def wait_finished(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            # The worker exposes a counter, not an event: poll it, as the worker processes do.
            while self._worker.flows_finished < count:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
