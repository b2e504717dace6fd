"""Recomputing part of a finished flow under its own id, keeping what it replaces.

``rerun`` forgets the records of a flow from a chosen step on (by default the first step whose
code changed since it was recorded, see :mod:`pyergon._code`) and puts the flow back in the
queue, so its next run replays the records before that step and computes the rest again. In a
DAG flow (``pyergon.dag``) only the chosen steps and the steps that depend on them are
forgotten.

What it replaces is not lost: first the whole flow as it stood is copied to a *previous
generation*, a finished flow of its own with the id ``"<flow id>~gen-<n>"`` (1 for the first
rerun, then 2...), and child flows started at the forgotten positions move there too
(``"<flow id>~gen-<n>~child-<position>"``), so the next run starts them afresh.

The order of writes keeps a crash harmless and two reruns apart: the flow is taken first (its
version moves on, so a second rerun planned on the same state is refused before it writes),
then copied, and reset last in one change guarded by its version. A rerun that dies leaves the
flow finished as it was; its partial copy keeps its generation id from being used again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pyergon._code import stale_records, step_fingerprints
from pyergon.clock import Clock
from pyergon.core.changes import Change, FlowWrite, Forget
from pyergon.core.query import FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import OperationKind, TaskStatus
from pyergon.core.transitions import requeue
from pyergon.errors import FlowStateError, StepNotFoundError
from pyergon.executor._dag import declared_graph
from pyergon.storage._flows import save_records
from pyergon.storage.base import ExecutionLog

__all__ = [
    "GENERATION_MARK",
    "DagSteps",
    "RerunPlan",
    "dag_steps",
    "generation_id",
    "generations",
    "new_steps",
    "plan_forgotten",
    "require_finished",
    "rerun_flow",
    "stale_child_positions",
]

GENERATION_MARK = "~gen-"
"""What joins a flow's id and a generation number in the id of a previous generation."""

FromStep = str | int
"""Where a rerun starts: a step's name, a log position (from 1), or ``"changed"``."""


@dataclass(frozen=True, slots=True)
class RerunPlan:
    """What a rerun did to storage before the flow runs again.

    Attributes:
        flow_id: The flow, now ``PENDING`` with the records before the rerun's start kept.
        previous: The id the replaced generation is kept under.
        recomputed: The names of the recorded steps that run again, in log order.
        positions: The top-level log positions that were forgotten.
    """

    flow_id: str
    previous: str
    recomputed: tuple[str, ...]
    positions: tuple[int, ...]

    def summary(self) -> str:
        """One line saying what runs again and where the old results are."""
        steps = (
            f"recomputing {', '.join(self.recomputed)}"
            if self.recomputed
            else "keeping every recorded step and running the steps it has no record of"
        )
        return f"flow {self.flow_id!r}: {steps}; the previous results are kept as {self.previous!r}"


def generation_id(flow_id: str, number: int) -> str:
    """The id of generation ``number`` (from 1) of ``flow_id`` kept by a rerun."""
    return f"{flow_id}{GENERATION_MARK}{number}"


@dataclass(frozen=True, slots=True)
class DagSteps:
    """The steps of a DAG flow (``pyergon.dag``) as a rerun needs them.

    Attributes:
        order: The DAG's steps in the order they take their log positions.
        descendants: The steps that depend, directly or not, on the given ones.
    """

    order: tuple[str, ...]
    descendants: Callable[[frozenset[str]], frozenset[str]]

    @property
    def nodes(self) -> frozenset[str]:
        """The names of the DAG's steps."""
        return frozenset(self.order)

    def first_moved(self, steps: Sequence[Invocation]) -> int | None:
        """The first position where ``steps`` (a flow's step records) no longer fit the DAG.

        ``dag`` gives its steps consecutive positions in :attr:`order`; a step added, removed
        or reordered since the flow ran moves the ones after it. ``None``: nothing moved.
        """
        recorded = {r.name: r.sequence for r in steps if r.name in self.nodes}
        if not recorded:
            return None
        base = min(recorded.values())
        expected = {name: base + index for index, name in enumerate(self.order)}
        moved = [
            min(sequence, expected[name])
            for name, sequence in recorded.items()
            if expected[name] != sequence
        ]
        return min(moved) if moved else None


def dag_steps(flow_class: type) -> DagSteps | None:
    """The DAG ``flow_class`` declares, if it declares one."""
    graph = declared_graph(flow_class)
    if graph is None:
        return None
    nodes = frozenset(graph.order())
    return DagSteps(graph.order(), lambda names: frozenset(graph.descendants(names & nodes)))


def plan_forgotten(
    flow_id: str,
    records: Sequence[Invocation],
    from_step: FromStep,
    flow_class: type | None,
    dag: DagSteps | None = None,
    stale_children: frozenset[int] = frozenset(),
) -> frozenset[int]:
    """The top-level positions a rerun from ``from_step`` forgets.

    Args:
        flow_id: The flow (for messages).
        records: Its records, in log order.
        from_step: A step name, a position from 1, or ``"changed"``: the steps whose code
            changed, or, if none did but the class has steps the flow never ran (added since),
            nothing (the next run replays every record and runs the new steps). In a DAG flow
            whose steps moved (one added, removed or reordered before others), every position
            from the first that moved.
        flow_class: The flow's class today; needed for ``"changed"``.
        dag: For a DAG flow, its steps: then only the chosen DAG steps and their descendants
            are forgotten, with whatever the flow recorded after them outside the DAG, rather
            than every later position.
        stale_children: Positions of child flows with stale results (see
            :func:`stale_child_positions`): they count as changed too.

    Raises:
        StepNotFoundError: No recorded step has that name or position.
        FlowStateError: ``"changed"`` without a class, or no step's code changed.
    """
    steps = [r for r in records if r.kind in _RERUNNABLE and r.sub_sequence == 0]
    positions = sorted({record.sequence for record in records if record.sequence > 0})
    known = [_shown(record) for record in steps]
    if from_step == "changed":
        if flow_class is None:
            raise FlowStateError(
                flow_id,
                f"rerun of flow {flow_id!r} from the changed steps needs the flow's class; "
                "register it, or name the step to start from",
            )
        moved = None if dag is None else dag.first_moved(steps)
        if moved is not None:  # the DAG's steps moved: from there on, nothing fits the log
            return frozenset(p for p in positions if p >= moved) | _retry_timers(records)
        chosen = stale_records(flow_class, steps)
        chosen += [r for r in steps if r.kind is _CHILD and r.sequence in stale_children]
        if not chosen and new_steps(flow_class, records):
            return _retry_timers(records)  # nothing to forget: the next run adds the new steps
        if not chosen:
            raise FlowStateError(
                flow_id,
                f"no step of flow {flow_id!r} changed since it was recorded (its steps: "
                f"{', '.join(known) or 'none'}); name one to recompute it: "
                f"rerun({flow_id!r}, from_step='<step name>')",
            )
    elif isinstance(from_step, bool) or not isinstance(from_step, int | str):
        raise StepNotFoundError(flow_id, repr(from_step), known)
    elif isinstance(from_step, int):
        if from_step < 1 or from_step > (positions[-1] if positions else 0):
            raise StepNotFoundError(flow_id, from_step, known)
        return frozenset(p for p in positions if p >= from_step) | _retry_timers(records)
    else:
        chosen = [record for record in steps if record.name == from_step][:1]
        if not chosen:
            raise StepNotFoundError(flow_id, from_step, known)
    if dag is not None and all(record.name in dag.nodes for record in chosen):
        names = frozenset(record.name for record in chosen)
        names |= dag.descendants(names)
        forgotten = {r.sequence for r in steps if r.name in names}
        first = min(forgotten)
        in_dag = {r.sequence for r in steps if r.name in dag.nodes}
        forgotten |= {p for p in positions if p > first and p not in in_dag}
        return frozenset(forgotten) | _retry_timers(records)
    first = min(record.sequence for record in chosen)
    return frozenset(p for p in positions if p >= first) | _retry_timers(records)


_CHILD = OperationKind.CHILD
_RERUNNABLE = (OperationKind.STEP, _CHILD)
"""What a rerun can start from: a step, or a child flow (started afresh)."""


def _shown(record: Invocation) -> str:
    kind = "child " if record.kind is _CHILD else ""
    return f"{record.position} {kind}{record.name}"


async def stale_child_positions(
    storage: ExecutionLog, records: Sequence[Invocation], classes: Mapping[str, type]
) -> frozenset[int]:
    """The top-level positions of ``records`` whose child flows (or theirs) hold stale results.

    Only children whose flow type has a class in ``classes`` can be told stale.
    """
    positions = set()
    for record in records:
        child_id = record.child_flow_id
        if record.kind is _CHILD and child_id is not None and record.sequence not in positions:
            child = await storage.get_flow(child_id)
            if child is None:
                continue
            child_records = await storage.load_invocations(child_id)
            cls = classes.get(child.flow_type)
            if (cls is not None and stale_records(cls, child_records)) or (
                await stale_child_positions(storage, child_records, classes)
            ):
                positions.add(record.sequence)
    return frozenset(positions)


def new_steps(flow_class: type, records: Sequence[Invocation]) -> tuple[str, ...]:
    """The steps of ``flow_class`` today that ``records`` hold no record of, in their order."""
    recorded = {record.name for record in records if record.kind is OperationKind.STEP}
    return tuple(name for name in step_fingerprints(flow_class) if name not in recorded)


def _retry_timers(records: Sequence[Invocation]) -> frozenset[int]:
    """Position 0: the flow-level retry timers, which a rerun's fresh attempts do not keep."""
    return frozenset({0}) if any(record.sequence == 0 for record in records) else frozenset()


async def rerun_flow(
    storage: ExecutionLog,
    flow: ScheduledFlow,
    forgotten: frozenset[int],
    clock: Clock,
    payload: bytes | None = None,
) -> RerunPlan:
    """Keep ``flow`` as a previous generation, forget ``forgotten`` and queue it again.

    Args:
        storage: The flow's storage.
        flow: The flow as read, final.
        forgotten: The top-level positions to forget (see :func:`plan_forgotten`).
        clock: For the times of the copies.
        payload: New inputs for the flow, if they change.

    Raises:
        FlowStateError: The flow is not final, a child flow to recompute has not finished, or
            the flow changed while the rerun was prepared (nothing of it was changed).
    """
    flow_id = flow.flow_id
    require_finished(flow)
    # 0. Take the flow: its version moves on, so a second rerun planned from the same version
    # is refused here, before anything of this one is written.
    taken = await storage.apply(
        Change(writes=(FlowWrite(flow_id, {}, expected_version=flow.version),))
    )
    if taken.moved is not None:
        raise _moved_meanwhile(flow_id)
    flow = flow.replace(version=flow.version + 1)
    records = await storage.load_invocations(flow_id)
    previous = await _free_generation(storage, flow_id)
    moving = [
        record.child_flow_id
        for record in records
        if record.sequence in forgotten and record.child_flow_id is not None
    ]
    children = await _subtrees(storage, moving)
    unfinished = [child for child in children if not child.status.is_final]
    if unfinished:
        raise FlowStateError(
            flow_id,
            f"child flow {unfinished[0].flow_id!r} of flow {flow_id!r} is "
            f"{unfinished[0].status.value}; wait for it (or cancel it) before the rerun",
        )

    moving_ids = {child.flow_id for child in children}

    def moved(old_id: str | None) -> str | None:
        """Where a flow id points in the previous generation."""
        if old_id == flow_id:
            return previous
        if old_id is None or old_id not in moving_ids:
            return old_id
        return previous + old_id[len(flow_id) :]

    # 1. The previous generation: records first, the flow last (finished, never runnable).
    await _copy(
        storage,
        previous,
        [r.replace(flow_id=previous, child_flow_id=moved(r.child_flow_id)) for r in records],
    )
    for child in children:
        child_records = await storage.load_invocations(child.flow_id)
        new_id = moved(child.flow_id)
        assert new_id is not None
        await _copy(
            storage,
            new_id,
            [
                r.replace(flow_id=new_id, child_flow_id=moved(r.child_flow_id))
                for r in child_records
            ],
        )
        await storage.create_flow(
            child.replace(flow_id=new_id, parent_flow_id=moved(child.parent_flow_id), version=1)
        )
    await storage.create_flow(_kept(flow, previous, clock.now()))
    # 2. The children recomputed start afresh: their old copies go (deepest first).
    for child in reversed(children):
        await storage.delete_flow(child.flow_id)
    # 3. The flow itself, in one guarded change.
    await _reset(storage, flow, forgotten, payload, clock.now())
    recomputed = tuple(
        record.name
        for record in records
        if record.sequence in forgotten and record.sub_sequence == 0 and record.kind in _RERUNNABLE
    )
    return RerunPlan(flow_id, previous, recomputed, tuple(sorted(p for p in forgotten if p)))


def require_finished(flow: ScheduledFlow) -> None:
    """Refuse to rerun a flow that has not finished.

    Raises:
        FlowStateError: It has not.
    """
    if not flow.status.is_final:
        raise FlowStateError(
            flow.flow_id,
            f"flow {flow.flow_id!r} is {flow.status.value}; rerun a flow once it has finished "
            "(cancel it first to stop it)",
        )


def _kept(flow: ScheduledFlow, previous: str, now: float) -> ScheduledFlow:
    """``flow`` as its previous generation keeps it: finished, held by nobody."""
    return flow.replace(
        flow_id=previous,
        updated_at=now,
        lease_owner=None,
        lease_token=None,
        lease_expires_at=None,
        cancel_requested=False,
        version=1,
    )


async def _reset(
    storage: ExecutionLog,
    flow: ScheduledFlow,
    forgotten: frozenset[int],
    payload: bytes | None,
    now: float,
) -> None:
    fields: dict[str, object] = {"result": None, "error": None, "attempt": 1, "wake_at": None}
    if payload is not None:
        fields["payload"] = payload
    finished = frozenset(status for status in TaskStatus if status.is_final)
    transition = requeue(flow, from_statuses=finished, fields=fields, at=now)
    assert transition is not None  # the flow was read final
    change = dataclasses.replace(
        transition.change, forget=(Forget(flow.flow_id, forgotten),), notify=True
    )
    applied = await storage.apply(change)
    if applied.moved is not None:
        raise _moved_meanwhile(flow.flow_id)


def _moved_meanwhile(flow_id: str) -> FlowStateError:
    return FlowStateError(
        flow_id,
        f"flow {flow_id!r} changed while its rerun was prepared (another rerun, or a retry?); "
        "it keeps its records, look at it and try again",
    )


async def _copy(storage: ExecutionLog, flow_id: str, records: Sequence[Invocation]) -> None:
    """Store ``records`` of a previous generation's flow ``flow_id``, which holds none yet.

    Raises:
        FlowStateError: It holds other records already (left by a rerun that died).
    """
    if (await save_records(storage, records)).record_conflict:
        raise FlowStateError(
            flow_id,
            f"flow {flow_id!r} already holds other records; delete it and try again",
        )


async def _free_generation(storage: ExecutionLog, flow_id: str) -> str:
    """The first generation id with neither a flow nor records.

    A rerun that died leaves records without their flow: that id is not reused, so nothing
    mixes with them.
    """
    number = 1
    while await _taken(storage, generation_id(flow_id, number)):
        number += 1
    return generation_id(flow_id, number)


async def _taken(storage: ExecutionLog, flow_id: str) -> bool:
    return await storage.get_flow(flow_id) is not None or bool(
        await storage.load_invocations(flow_id)
    )


async def _subtrees(storage: ExecutionLog, roots: Sequence[str]) -> list[ScheduledFlow]:
    """The flows ``roots`` and all their children, parents before children."""
    found: list[ScheduledFlow] = []
    pending = list(roots)
    while pending:
        flow = await storage.get_flow(pending.pop(0))
        if flow is None:
            continue
        found.append(flow)
        children = await storage.list_flows(FlowQuery(parent_flow_id=flow.flow_id, limit=10_000))
        pending.extend(child.flow_id for child in children)
    return found


async def generations(storage: ExecutionLog, flow_id: str) -> list[ScheduledFlow]:
    """The previous generations of ``flow_id`` that reruns kept, oldest first.

    They are numbered from 1 on, as :func:`_free_generation` hands the numbers out: up to the
    first number with neither a flow nor records (one with records only, left by a rerun that
    died, is passed over).
    """
    kept = []
    number = 1
    while await _taken(storage, generation_id(flow_id, number)):
        flow = await storage.get_flow(generation_id(flow_id, number))
        if flow is not None:
            kept.append(flow)
        number += 1
    return kept
