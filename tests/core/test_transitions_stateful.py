"""The flow state machine under random events: a child and its parent, changes applied to a dict.

Runs keep the copy of their flow their claim gave them and decide on it, as a worker does, so
their decisions meet flows that moved on; outside events may decide on a stale copy too. Every
change is applied as storage applies it (version guards first, then the writes), and every
write is checked against the rules of a flow's life.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from pyergon.core.changes import ABSENT, Change, FlowWrite
from pyergon.core.query import ClaimRequest
from pyergon.core.records import ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import (
    Transition,
    claim_changes,
    holds,
    is_runnable,
    leave_run,
    new_lease_token,
    request_cancel,
    requeue,
    signal_arrival,
    start_direct_run,
    wake,
)
from pyergon.testing import make_flow

FLOW_IDS = st.sampled_from(["parent", "child"])
END_STATUSES = st.sampled_from(
    [status for status in TaskStatus if status is not TaskStatus.RUNNING]
)
WAITING = (TaskStatus.PENDING, TaskStatus.SUSPENDED)
LEASE_SECONDS = 30.0


@dataclass
class Run:
    """A run holding a flow: its token (``None``: a direct run) and its copy of the flow."""

    flow_id: str
    lease_token: str | None
    flow: ScheduledFlow


class FlowLife(RuleBasedStateMachine):
    """A parent and its child, driven by claims, runs, cancels, signals, requeues and wake-ups."""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.flows: dict[str, ScheduledFlow] = {}
        self.snapshots: dict[str, ScheduledFlow] = {}
        self.signalled: set[str] = set()  # flows whose awaited signal is stored

    @initialize(
        parent=st.sampled_from([TaskStatus.PENDING, TaskStatus.SUSPENDED, TaskStatus.COMPLETE]),
        child=st.sampled_from([TaskStatus.PENDING, TaskStatus.SUSPENDED]),
        wake_at=st.none() | st.floats(1_000.0, 1_100.0),
    )
    def create(self, parent: TaskStatus, child: TaskStatus, wake_at: float | None) -> None:
        suspended_wake = wake_at if child is TaskStatus.SUSPENDED else None
        self.flows["parent"] = make_flow("parent", status=parent)
        self.flows["child"] = make_flow(
            "child",
            status=child,
            wake_at=suspended_wake,
            parent_flow_id="parent",
            parent_sequence="1",
        )

    # -- applying a change, as storage does ----------------------------------------------------

    def apply(self, change: Change, *, requeue: bool = False) -> bool:
        """Apply ``change`` if its guards hold, checking every write; return whether it did.

        Only an operator's ``requeue`` takes a flow out of a final status.
        """
        for write in change.writes:
            stored = self.flows.get(write.flow_id)
            version = ABSENT if stored is None else stored.version
            if write.expected_version is not None and write.expected_version != version:
                return False
        before = dict(self.flows)
        for write in change.writes:
            flow = self.flows.get(write.flow_id)
            if flow is None:
                continue
            after = write.applied_to(flow)
            check_write(flow, after, requeue=requeue)
            self.flows[write.flow_id] = after
        self.check_parent_woken(before, change)
        return True

    def check_parent_woken(self, before: dict[str, ScheduledFlow], change: Change) -> None:
        child_before, child_after = before["child"], self.flows["child"]
        if child_after.status.is_final and not child_before.status.is_final:
            assert wake("parent", child_after.updated_at) in change.writes
            assert change.notify
            if before["parent"].status is TaskStatus.SUSPENDED:
                assert self.flows["parent"].status is TaskStatus.PENDING

    def decide_and_apply(
        self,
        flow_id: str,
        decide: Callable[[ScheduledFlow], Transition | None],
        stale: bool,
        *,
        requeue: bool = False,
    ) -> None:
        """Decide on a stale copy (if asked and kept) or the stored flow; again while it moved."""
        flow = self.snapshots.get(flow_id) if stale else None
        flow = flow or self.flows[flow_id]
        for _ in range(10):
            transition = decide(flow)
            if transition is None or self.apply(transition.change, requeue=requeue):
                return
            flow = self.flows[flow_id]
        raise AssertionError(f"a decision on {flow_id} kept meeting a moved flow")

    # -- events --------------------------------------------------------------------------------

    @rule(flow_id=FLOW_IDS)
    def snapshot(self, flow_id: str) -> None:
        """Someone reads a flow, to decide on it later."""
        self.snapshots[flow_id] = self.flows[flow_id]

    @rule(seconds=st.floats(0.0, 60.0))
    def advance(self, seconds: float) -> None:
        """Time passes; leases and timers run out."""
        self.now += seconds

    @rule(target=runs, flow_id=FLOW_IDS)
    def claim(self, flow_id: str) -> Run | MultipleResults[Run]:
        flow = self.flows[flow_id]
        if not is_runnable(flow, self.now):
            return multiple()
        token = new_lease_token()
        request = ClaimRequest(
            "worker", [flow.flow_type], limit=1, lease_seconds=LEASE_SECONDS, now=self.now
        )
        changes = claim_changes(request, lease_token=token, at=self.now, flow=flow)
        write = Change(writes=(_write(flow, changes),))
        assert self.apply(write)
        claimed = self.flows[flow_id]
        assert holds(claimed, token) and claimed.version == flow.version + 1
        taken_over = flow.status is TaskStatus.RUNNING  # its lease expired: a loss
        assert claimed.lease_losses == flow.lease_losses + taken_over
        if taken_over:
            assert claimed.last_lost_by == flow.lease_owner == "worker"
        return Run(flow_id, token, claimed)

    @rule(target=runs, flow_id=FLOW_IDS)
    def start_direct(self, flow_id: str) -> Run | MultipleResults[Run]:
        flow = self.flows[flow_id]
        transition = start_direct_run(flow, at=self.now)
        if transition is None:
            return multiple()
        assert self.apply(transition.change)
        return Run(flow_id, None, self.flows[flow_id])

    @rule(
        run=consumes(runs),
        status=END_STATUSES,
        wake_in=st.none() | st.floats(0.0, 100.0),
        waits_for=st.sampled_from(["a timer", "a signal", "the child"]),
    )
    def leave(self, run: Run, status: TaskStatus, wake_in: float | None, waits_for: str) -> None:
        """A run leaves its flow as ``HeldFlow.leave`` does: on its copy, again if it moved.

        Decided again, a suspension is requeued only if what it waits for has arrived.
        """
        fields = {"wake_at": None if wake_in is None else self.now + wake_in}
        flow: ScheduledFlow | None = run.flow
        woken = False
        for _ in range(10):
            if not holds(flow, run.lease_token):
                return  # another run took the flow: only the records would be stored
            assert flow is not None
            transition = leave_run(flow, status, fields, at=self.now, woken=woken)
            if self.apply(transition.change):
                return
            flow = self.flows[run.flow_id]
            woken = status is TaskStatus.SUSPENDED and self.arrived(run.flow_id, waits_for)
        raise AssertionError("a run kept meeting a moved flow")

    def arrived(self, flow_id: str, waits_for: str) -> bool:
        if waits_for == "a signal":
            return flow_id in self.signalled
        return waits_for == "the child" and self.flows["child"].status.is_final

    @rule(flow_id=FLOW_IDS, stale=st.booleans())
    def cancel(self, flow_id: str, stale: bool) -> None:
        self.decide_and_apply(flow_id, lambda flow: request_cancel(flow, at=self.now), stale)
        flow = self.flows[flow_id]
        if not stale:  # a stale copy that was final decides nothing, as if cancelled back then
            assert flow.status.is_final or (
                flow.status is TaskStatus.RUNNING and flow.cancel_requested
            )

    @rule(flow_id=FLOW_IDS, waits_for_it=st.booleans(), stale=st.booleans())
    def signal(self, flow_id: str, waits_for_it: bool, stale: bool) -> None:
        def decide(flow: ScheduledFlow) -> Transition:
            return signal_arrival(flow_id, flow, waits_for_it=waits_for_it, at=self.now)

        self.decide_and_apply(flow_id, decide, stale)
        self.signalled.add(flow_id)

    @rule(
        flow_id=FLOW_IDS,
        from_statuses=st.frozensets(st.sampled_from(list(TaskStatus)), min_size=1),
        stale=st.booleans(),
        lost_by=st.none() | st.sampled_from(["worker", "another"]),
    )
    def requeue(
        self, flow_id: str, from_statuses: frozenset[TaskStatus], stale: bool, lost_by: str | None
    ) -> None:
        def decide(flow: ScheduledFlow) -> Transition | None:
            fields = {"attempt": 1}
            return requeue(
                flow, from_statuses=from_statuses, fields=fields, at=self.now, lost_by=lost_by
            )

        self.decide_and_apply(flow_id, decide, stale, requeue=True)

    @rule(flow_id=FLOW_IDS)
    def wake(self, flow_id: str) -> None:
        assert self.apply(Change(writes=(wake(flow_id, self.now),)))

    # -- what always holds ---------------------------------------------------------------------

    @invariant()
    def flows_are_consistent(self) -> None:
        for flow in self.flows.values():
            if flow.status is not TaskStatus.RUNNING:
                assert (flow.lease_owner, flow.lease_token, flow.lease_expires_at) == (
                    None,
                    None,
                    None,
                ), flow
            if flow.status is TaskStatus.PENDING:
                assert not flow.cancel_requested, flow
            if flow.status.is_final or flow.status is TaskStatus.PENDING:
                assert flow.wake_at is None, flow


def _write(flow: ScheduledFlow, changes: dict[str, object]) -> FlowWrite:
    return FlowWrite(flow.flow_id, changes, expected_version=flow.version)


def check_write(before: ScheduledFlow, after: ScheduledFlow, *, requeue: bool) -> None:
    """The rules every single write of a flow keeps."""
    assert after.version == before.version + 1
    # A write counts at most one lost lease, of a flow that was running, and names its holder.
    assert after.lease_losses - before.lease_losses in (0, 1), (before, after)
    if after.lease_losses > before.lease_losses:
        assert before.status is TaskStatus.RUNNING, (before, after)
        assert after.last_lost_by == before.lease_owner is not None, (before, after)
    else:
        assert after.last_lost_by == before.last_lost_by, (before, after)
    if before.status.is_final and not requeue:
        assert after.status is before.status, (before, after)
    if before.status is TaskStatus.RUNNING and before.cancel_requested:
        assert after.status not in WAITING, (before, after)
    if after.status is not TaskStatus.RUNNING:
        assert after.lease_token is None, after
    if after.status is TaskStatus.PENDING:
        assert not after.cancel_requested, after


FlowLife.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFlowLife = FlowLife.TestCase
