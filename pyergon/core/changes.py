"""What a storage applies in one atomic step: the value types of the storage contract.

The flow state machine (:mod:`pyergon.core.transitions`) decides a change; a backend applies
it with :meth:`~pyergon.storage.ExecutionLog.apply` and knows nothing of why. A change holds
new records, new signals and guarded writes of flows; each write names the flow's ``version``
it was decided on, so a change decided on a stale copy is refused as a whole and decided again.
A run's own writes can also name the lease it holds its flow under (:attr:`Change.held`), so
they are refused once another run holds the flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import TaskStatus

__all__ = ["ABSENT", "Applied", "Change", "FlowWrite", "Forget", "stored_as_given"]

ABSENT = 0
"""The ``expected_version`` of a write decided on a flow that did not exist."""


@dataclass(frozen=True, slots=True)
class FlowWrite:
    """A write of one stored flow's fields; the flow's ``version`` moves on by one with it.

    Attributes:
        flow_id: The flow to write.
        changes: New values of :class:`~pyergon.core.ScheduledFlow` fields, by field name
            (never ``flow_id`` or ``version``). Empty: only the version moves on, which tells
            anyone holding a copy of the flow that something happened to it.
        expected_version: The version the write was decided on. If the stored flow has
            another version (or, for :data:`ABSENT`, exists), the whole change is refused.
            ``None``: the write is not guarded and applies to whatever is stored.
        only_if_status: Apply ``changes`` only while the flow has one of these statuses; the
            version moves on either way. ``None``: whatever the status.
    """

    flow_id: str
    changes: Mapping[str, object] = field(default_factory=dict)
    expected_version: int | None = None
    only_if_status: frozenset[TaskStatus] | None = None

    def applied_to(self, flow: ScheduledFlow) -> ScheduledFlow:
        """Return ``flow`` as this write leaves it (it matched the guard)."""
        if self.only_if_status is not None and flow.status not in self.only_if_status:
            return flow.replace(version=flow.version + 1)
        return flow.replace(**self.changes, version=flow.version + 1)


@dataclass(frozen=True, slots=True)
class Forget:
    """The records of one flow at some top-level positions: deleted by a change (nested ones too).

    Every record of ``flow_id`` whose ``sequence`` is one of ``sequences`` goes, whatever its
    status and ``sub_sequence``, so the flow runs those positions again (a rerun).

    Attributes:
        flow_id: The flow whose records are deleted.
        sequences: The top-level positions whose records are deleted; empty: none.
    """

    flow_id: str
    sequences: frozenset[int]


@dataclass(frozen=True, slots=True)
class Change:
    """Everything one atomic step of storage writes.

    A backend applies the parts in this order, all or nothing except where said:

    1. The guards: every guarded write's ``expected_version`` is checked, and with ``held``,
       that its flow is stored ``RUNNING`` with its lease token. One that does not hold
       refuses the whole change (:attr:`Applied.moved` names its flow), and nothing is written.
    2. ``forget_failed``: the ``FAILED`` records of these flows are deleted; ``forget``: the
       records at the positions it names are deleted, whatever their status.
    3. ``records``, in order, first writer wins: a record whose position holds a final record
       is not written (the stored one stands). If the stored final record differs from the
       given one (see :func:`stored_as_given`), the records after it, the signals and the
       writes are not applied; what was written before stays.
    4. ``signals``: each stored unless a signal of its flow and name exists.
    5. ``writes``, in order; a write of a flow that does not exist does nothing.
    6. If ``notify``: workers waiting for work (here and in other processes) are woken.

    Attributes:
        records: Records to store.
        signals: Signals to store.
        writes: Writes of flows.
        forget_failed: Flows whose failed records are deleted, so a retry runs them again.
        forget: Records deleted by position (see :class:`Forget`), so a rerun runs them again;
            records the same change stores at those positions stand.
        notify: Whether waiting workers should look for runnable flows afterwards.
        held: ``(flow id, lease token)`` of the run that sends the change: it applies only while
            that flow is stored ``RUNNING`` under that token, so a run that lost its flow to
            another stores nothing more (a write sent before the loss and delayed cannot land
            after the new holder started). ``None``: no such guard (a direct run, an operator).
    """

    records: tuple[Invocation, ...] = ()
    signals: tuple[SignalRecord, ...] = ()
    writes: tuple[FlowWrite, ...] = ()
    forget_failed: tuple[str, ...] = ()
    notify: bool = False
    held: tuple[str, str] | None = None
    forget: tuple[Forget, ...] = ()

    @property
    def payload_size(self) -> int:
        """Bytes of payload the change writes (backends move large changes off their loop)."""
        size = 0
        for record in self.records:
            size += len(record.result or b"")
            if record.error is not None:
                size += len(record.error.payload or b"")
        for signal in self.signals:
            size += len(signal.payload)
        for write in self.writes:
            result = write.changes.get("result")
            if isinstance(result, bytes):
                size += len(result)
        return size


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`~pyergon.storage.ExecutionLog.apply` did.

    Attributes:
        records: The records as stored after the call, in the order given, up to and including
            a conflicting one (an earlier final record that differs from the one given).
        record_conflict: Whether a record met such a conflict; the signals and writes were
            then not applied.
        moved: The id of a flow whose stored version was not the expected one, or of the
            ``held`` flow if it no longer runs under the change's lease token; nothing at all
            was written. ``None`` when every guard held.
        signals_stored: How many of the signals were new and stored.
    """

    records: list[Invocation] = field(default_factory=list)
    record_conflict: bool = False
    moved: str | None = None
    signals_stored: int = 0

    @property
    def complete(self) -> bool:
        """Whether the whole change was applied."""
        return self.moved is None and not self.record_conflict


def stored_as_given(given: Invocation, stored: Invocation) -> bool:
    """Whether ``stored`` holds what ``given`` says: the same status and outcome.

    A final record written first by another writer with the same outcome is no conflict. Only
    the outcome counts: not the attempts and times, not a step's output and progress, and not
    its ``code_hash``, since two runs of one step whose code differs may well agree.
    """
    return stored is given or (
        stored.status is given.status
        and stored.result == given.result
        and stored.error == given.error
        and stored.fire_at == given.fire_at
    )
