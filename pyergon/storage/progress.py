"""Saving a run's progress: its new records and, optionally, the state it leaves its flow in.

A run does not wait for each record on its own. The records a step or a fired timer produces
are kept until the run next has to know they are stored (before live work such as the next
step's body, or when the run ends), then written together by
:meth:`~pyergon.storage.base.ExecutionLog.save_progress`. Records and the flow's new state share
one transaction (or round trip) where the backend can do that, so the last step of a flow and
its completion cost one commit, not two.

Recording stays first-writer-wins. Records after one that another writer had already stored
differently are not written, and neither is the flow's new state: the run computed them from
a value that is not the stored truth, so it has to run again from the stored log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import TaskStatus
from pyergon.storage.base import UNCHANGED, FlowUpdate

if TYPE_CHECKING:
    from pyergon.storage.base import ExecutionLog

__all__ = [
    "FlowTransition",
    "SavedProgress",
    "SavesProgressInSteps",
    "apply_transition",
    "save_progress_in_steps",
    "stored_as_given",
]


@dataclass(frozen=True, slots=True)
class FlowTransition:
    """The state a run leaves its flow in, written after the run's records.

    With ``lease_token`` it is written as :meth:`~pyergon.storage.base.ExecutionLog.release_flow`
    (a worker's run), otherwise as :meth:`~pyergon.storage.base.ExecutionLog.update_flow`
    (a direct run). Fields left ``UNCHANGED`` keep their stored value.

    Attributes:
        status: The flow's new status.
        result: New serialized result, or ``UNCHANGED``.
        error: New error (or ``None``), or ``UNCHANGED``.
        wake_at: New wake time (or ``None``), or ``UNCHANGED``.
        attempt: New flow-level attempt, or ``UNCHANGED``.
        lease_token: The lease the run holds, if a worker runs it.
        waiting_signals: Signals a suspending flow waits for.
        waiting_children: Child flows a suspending flow waits for.
    """

    status: TaskStatus
    result: bytes | FlowUpdate | None = UNCHANGED
    error: StoredError | FlowUpdate | None = UNCHANGED
    wake_at: float | FlowUpdate | None = UNCHANGED
    attempt: int | FlowUpdate = UNCHANGED
    lease_token: str | None = None
    waiting_signals: tuple[str, ...] = ()
    waiting_children: tuple[str, ...] = ()

    @property
    def payload_size(self) -> int:
        """Bytes of result the transition writes."""
        return len(self.result) if isinstance(self.result, bytes) else 0


@dataclass(frozen=True, slots=True)
class SavedProgress:
    """What :meth:`~pyergon.storage.base.ExecutionLog.save_progress` stored.

    Attributes:
        records: The records as stored, in the order given, up to and including the first
            conflicting one; records after a conflict are not written.
        conflict: Whether a record's position already held a final record that differs from
            the one given; the transition was then not applied.
        flow: The flow after the transition; ``None`` when there was no transition, a
            conflict, or the flow was not changed (its lease is held by another token, or it
            does not exist).
    """

    records: list[Invocation] = field(default_factory=list)
    conflict: bool = False
    flow: ScheduledFlow | None = None


def stored_as_given(given: Invocation, stored: Invocation) -> bool:
    """Whether ``stored`` holds what ``given`` says: the same status and outcome.

    A final record written first by another writer with the same outcome is no conflict.
    """
    return stored is given or (
        stored.status is given.status
        and stored.result == given.result
        and stored.error == given.error
        and stored.fire_at == given.fire_at
    )


async def apply_transition(
    storage: ExecutionLog, flow_id: str, transition: FlowTransition
) -> ScheduledFlow | None:
    """Write ``transition`` with the storage's own methods (release or update)."""
    if transition.lease_token is not None:
        return await storage.release_flow(
            flow_id,
            transition.lease_token,
            status=transition.status,
            result=transition.result,
            error=transition.error,
            wake_at=transition.wake_at,
            attempt=transition.attempt,
            waiting_signals=transition.waiting_signals,
            waiting_children=transition.waiting_children,
        )
    return await storage.update_flow(
        flow_id,
        status=transition.status,
        result=transition.result,
        error=transition.error,
        wake_at=transition.wake_at,
        attempt=transition.attempt,
    )


async def save_progress_in_steps(
    storage: ExecutionLog,
    flow_id: str,
    records: Sequence[Invocation],
    transition: FlowTransition | None,
) -> SavedProgress:
    """Save progress one write after another: for backends that have no single-write form.

    Each write is atomic on its own and they happen in order, so a crash between two leaves
    a prefix of the progress stored, which replay continues from.
    """
    stored_records: list[Invocation] = []
    for record in records:
        stored = await storage.record_invocation(record)
        stored_records.append(stored)
        if not stored_as_given(record, stored):
            return SavedProgress(stored_records, conflict=True)
    if transition is None:
        return SavedProgress(stored_records)
    return SavedProgress(stored_records, flow=await apply_transition(storage, flow_id, transition))


class SavesProgressInSteps:
    """Mixin giving a backend ``save_progress`` as a sequence of its own writes."""

    async def save_progress(
        self,
        flow_id: str,
        records: Sequence[Invocation],
        transition: FlowTransition | None = None,
    ) -> SavedProgress:
        """Store records and a flow's new state; see :meth:`ExecutionLog.save_progress`."""
        storage: ExecutionLog = self  # type: ignore[assignment]
        return await save_progress_in_steps(storage, flow_id, records, transition)
