"""Waiting on storage state that another task or process changes."""

from __future__ import annotations

import asyncio

from pyergon.core import ScheduledFlow, TaskStatus
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
