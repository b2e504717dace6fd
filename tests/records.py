"""Reading one stored record of a flow, as tests look at what a run left behind."""

from __future__ import annotations

from pyergon.core import Invocation
from pyergon.storage.base import ExecutionLog


async def record_at(
    storage: ExecutionLog, flow_id: str, sequence: int, sub_sequence: int = 0
) -> Invocation | None:
    """Return the record of ``flow_id`` at ``(sequence, sub_sequence)``, or ``None``."""
    for record in await storage.load_invocations(flow_id):
        if (record.sequence, record.sub_sequence) == (sequence, sub_sequence):
            return record
    return None
