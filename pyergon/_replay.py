"""Replaying a flow's recorded log against today's code, writing nothing: what it finds.

:meth:`pyergon.management.FlowManager.replay` checks the flow and its class, then calls
:func:`replay_flow`, which runs the code on a copy of the log in memory.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from pyergon._context import FlowContext, ReplayEnded
from pyergon._rerun import stale_child_positions
from pyergon.clock import Clock
from pyergon.core.changes import Change
from pyergon.core.outcome import Completed, FlowOutcome
from pyergon.core.records import Invocation, ScheduledFlow, format_position
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.decorators import flow_entry
from pyergon.errors import NonDeterminismError
from pyergon.executor._inputs import decode_flow
from pyergon.executor._runner import FLOW_RETRY_SEQUENCE, FlowRun, drive_flow
from pyergon.serialization import Serializer
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog

__all__ = ["Divergence", "ReplayResult", "replay_flow"]


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where today's code parts from a flow's recorded log.

    Attributes:
        position: The log position, such as ``"3"`` or ``"3.1"``.
        recorded: The operation the log holds there.
        current: The operation the code calls there now.
    """

    position: str
    recorded: str
    current: str


@dataclass(frozen=True, slots=True, repr=False)
class ReplayResult:
    """What replaying a flow's log against today's code found.

    Attributes:
        flow_id: The replayed flow.
        consistent: Whether the code matched every record it reached.
        replayed: How many recorded operations the code reached and took from the log.
        recorded: How many records the log holds (flow-level retry timers not counted).
        ended_at: The position where the log ran out (the flow is waiting or was running
            there), or ``None`` if the code ran to its end.
        divergence: The first mismatch, if any.
        outcome: The flow's outcome when the replay ran to its end, else ``None``.
        stale: The recorded steps the replay reached whose code changed since they were
            recorded, as ``"<position> <name>"``: consistent, but today's code would compute
            them anew (``rerun`` does).
    """

    flow_id: str
    consistent: bool
    replayed: int
    recorded: int
    ended_at: str | None = None
    divergence: Divergence | None = None
    outcome: FlowOutcome[Any] | None = field(default=None, compare=False)
    stale: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line saying what the replay found."""
        if self.divergence is not None:
            return (
                f"flow {self.flow_id!r} diverges at position {self.divergence.position}: the log "
                f"records {self.divergence.recorded} but the code calls {self.divergence.current}"
            )
        reached = f"{self.replayed} of {self.recorded} recorded operations replayed"
        if self.ended_at is not None:
            ending = f"; the log ends at position {self.ended_at}"
        elif isinstance(self.outcome, Completed) and self.outcome.error is None:
            ending = f"; it returns {_short(repr(self.outcome.result))}"
        elif isinstance(self.outcome, Completed):
            ending = f"; it fails with {_short(repr(self.outcome.error))}"
        else:
            ending = ""
        if self.stale:
            plural = "s were" if len(self.stale) > 1 else " was"
            ending = (
                f", but {len(self.stale)} recorded step{plural} made by code that has changed "
                f"since ({', '.join(self.stale)}; await session.rerun({self.flow_id!r}) "
                f"recomputes from there){ending}"
            )
        return f"flow {self.flow_id!r} is consistent with its log ({reached}){ending}"

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"ReplayResult({self.summary()})"

    def _repr_html_(self) -> str:
        colour = "#c62828" if not self.consistent else "#ef6c00" if self.stale else "#2e7d32"
        return f'<span style="color:{colour}">{html.escape(self.summary())}</span>'


async def replay_flow(
    storage: ExecutionLog,
    flow: ScheduledFlow,
    cls: type,
    *,
    serializer: Serializer,
    clock: Clock,
    classes: dict[str, type],
) -> ReplayResult:
    """Run ``cls``'s code against ``flow``'s log on a copy in memory; see ``FlowManager.replay``.

    Args:
        storage: Where the flow's records and signals are read.
        flow: The flow, of ``cls``'s type.
        cls: The flow's class today.
        serializer: The serializer the flow was stored with.
        clock: The time source of the replay.
        classes: Registered flow classes, to tell which child flows hold stale results.

    Raises:
        SerializationError: The stored inputs no longer fit the class's fields.
    """
    flow_id = flow.flow_id
    method_name, _ = flow_entry(cls)
    instance: Any = decode_flow(serializer, cls, flow.payload)
    records = await storage.load_invocations(flow_id)
    copy = InMemoryExecutionLog()
    await copy.create_flow(flow.replace(status=TaskStatus.RUNNING))
    signals = await storage.list_signals(flow_id)
    await copy.apply(Change(records=tuple(records), signals=tuple(signals)))
    contexts: list[FlowContext] = []
    run = FlowRun(
        flow=instance,
        flow_id=flow_id,
        storage=copy,
        serializer=serializer,
        clock=clock,
        entry=lambda running: getattr(running, method_name)(),
        run_child=_no_live_children,
        writer=_DiscardingWriter(),
        attempt=flow.attempt,
        replay_only=True,
        observe=contexts.append,
    )
    recorded = sum(1 for record in records if record.sequence != FLOW_RETRY_SEQUENCE)
    outcome: FlowOutcome[Any] | None = None
    divergence: Divergence | None = None
    ended_at: str | None = None
    try:
        outcome = await drive_flow(run)
    except NonDeterminismError as error:
        divergence = Divergence(error.sequence, error.recorded, error.current)
    except ReplayEnded as ended:
        ended_at = format_position(*ended.position)
    children = await _stale_children(storage, records, classes)
    return ReplayResult(
        flow_id,
        consistent=divergence is None,
        replayed=_replayed(contexts),
        recorded=recorded,
        ended_at=ended_at,
        divergence=divergence,
        outcome=outcome,
        stale=_stale_steps(contexts) + children,
    )


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _stale_steps(contexts: list[FlowContext]) -> tuple[str, ...]:
    """The stale records the replay returned, as ``"<position> <name>"``."""
    stale = contexts[-1].stale if contexts else None
    return tuple(f"{record.position} {record.name}" for record in stale or ())


async def _stale_children(
    storage: ExecutionLog, records: list[Invocation], classes: dict[str, type]
) -> tuple[str, ...]:
    """The child flows holding stale results, as ``"<position> child <type>"``."""
    positions = await stale_child_positions(storage, records, classes)
    return tuple(
        f"{record.position} child {record.name}"
        for record in records
        if record.child_flow_id is not None and record.sequence in positions
    )


def _replayed(contexts: list[FlowContext]) -> int:
    return contexts[-1].replayed_count if contexts else 0


async def _no_live_children(*_args: object) -> FlowOutcome[Any]:  # pragma: no cover - guarded
    raise AssertionError("a replay reached a live child; before_live_work should stop it")


class _DiscardingWriter:
    """A replay writes nothing back: its records and every state change are dropped."""

    async def write(self, context: FlowContext, end: RunEnd) -> None:
        del end
        context.discard_unsaved()
