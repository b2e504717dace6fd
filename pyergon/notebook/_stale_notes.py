"""What a notebook session says about stale results: warnings in the right cell, table counts.

A run that returned recorded results made by code that has changed since (see
:mod:`pyergon._code`) is told so once per flow: at once in the cell of a run made there, or,
for a run of the session's workers, in the cell that waits for the flow.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

from pyergon._code import stale_records
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.errors import StaleResultWarning
from pyergon.executor._stale import stale_message
from pyergon.storage.base import ExecutionLog

__all__ = ["StaleNotes", "count_stale_steps"]


class StaleNotes:
    """A session's notes of stale results, and the warnings it gave of them."""

    def __init__(self) -> None:
        self._pending: dict[str, Sequence[Invocation]] = {}
        self._warned: set[str] = set()

    def note(self, flow_id: str, _flow: object, records: Sequence[Invocation]) -> None:
        """A worker's run returned stale results: kept for the wait that sees the flow end."""
        self._pending[flow_id] = records

    def warn(self, flow_id: str, records: Sequence[Invocation]) -> None:
        """Warn, once per flow, that a run returned stale results.

        Called by a method of this class called by the session's method the cell awaited: the
        warning names the cell's line (three frames up).
        """
        if flow_id in self._warned:
            return
        self._warned.add(flow_id)
        warnings.warn(stale_message(flow_id, records), StaleResultWarning, stacklevel=4)

    async def check(self, storage: ExecutionLog, flow_id: str, flow_class: type) -> None:
        """Warn if the flow's records hold stale results, from ``Session.run`` in a cell."""
        if flow_id not in self._warned:
            records = stale_records(flow_class, await storage.load_invocations(flow_id))
            if records:
                self.warn(flow_id, records)

    def warn_noted(self, flow_ids: Iterable[str]) -> None:
        """Warn of what workers noted about ``flow_ids``, in the cell that waited for them."""
        for flow_id in flow_ids:
            records = self._pending.pop(flow_id, None)
            if records is not None:
                self.warn(flow_id, records)

    def forget(self, flow_id: str) -> None:
        """A rerun recomputed the flow: a later stale result of it is news again."""
        self._warned.discard(flow_id)
        self._pending.pop(flow_id, None)


async def count_stale_steps(
    storage: ExecutionLog, flows: Iterable[ScheduledFlow], classes: Mapping[str, type]
) -> dict[str, int]:
    """How many stale step records each flow of a type in ``classes`` has, by flow id."""
    counts = {}
    for flow in flows:
        cls = classes.get(flow.flow_type)
        if cls is not None:
            records = await storage.load_invocations(flow.flow_id)
            counts[flow.flow_id] = len(stale_records(cls, records))
    return counts
