"""Waiting on storage state that another task or process changes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pyergon.core import ScheduledFlow, TaskStatus
from pyergon.storage import open_storage
from pyergon.storage.base import ExecutionLog


async def flow_reaches(
    storage: ExecutionLog, flow_id: str, status: TaskStatus, within: float = 10.0
) -> ScheduledFlow:
    """Return the flow once it has ``status``; fail after ``within`` seconds.

    Storage offers no per-flow change event, so this polls with a short interval under a
    deadline; it never decides an outcome by sleeping a fixed time.
    """
    async with asyncio.timeout(within):
        while True:
            flow = await storage.get_flow(flow_id)
            if flow is not None and flow.status is status:
                return flow
            await asyncio.sleep(0.002)


async def until(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Return once ``condition()`` is true; fail after ``within`` seconds.

    For state that another task changes without an event to await (a worker's view of a
    flow); polls under a deadline, never decides an outcome by a fixed sleep.
    """
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 - the state has no event to await
            await asyncio.sleep(0.002)


def stored_status(url: str, flow_id: str) -> TaskStatus | None:
    """The status storage at ``url`` holds for ``flow_id``, read from a fresh connection of its own.

    For tests of blocking front doors (``pyergon.run``, a sync session), from synchronous code.
    """

    async def read() -> TaskStatus | None:
        storage = await open_storage(url)
        try:
            flow = await storage.get_flow(flow_id)
        finally:
            await storage.close()
        return None if flow is None else flow.status

    return asyncio.run(read())
