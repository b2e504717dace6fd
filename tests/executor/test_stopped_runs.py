"""Where a direct run that stopped mid-way was: the attempt a later direct run keeps for it."""

from __future__ import annotations

import pytest

from pyergon.core.records import Attempt, Invocation, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import FlowStateError
from pyergon.executor._abandoned import stopped_run_attempts
from pyergon.executor.executor import refuse_leased_flow
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation


class Logged(InMemoryExecutionLog):
    """A log that holds fixed records for every flow."""

    def __init__(self, records: list[Invocation]) -> None:
        super().__init__()
        self.records = records

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        return self.records


def done(sequence: int, start: float, end: float) -> Invocation:
    return make_invocation(
        sequence, status=InvocationStatus.COMPLETE, started_at=start, completed_at=end
    )


RUNNING = make_flow("f", status=TaskStatus.RUNNING, created_at=1_000.0)


async def test_the_run_was_in_the_step_after_its_last_record_since_that_record_ended() -> None:
    storage = Logged([done(1, 1_000.0, 1_002.0), done(2, 1_002.0, 1_005.0)])

    found = await stopped_run_attempts(storage, RUNNING, now=1_100.0)

    assert found == {(3, 0): Attempt(0, 1_005.0, None, "abandoned")}


async def test_where_the_log_leaves_doubt_nothing_is_kept() -> None:
    error = StoredError("builtins.ValueError", "bad")
    in_backoff = make_invocation(
        2,
        status=InvocationStatus.PENDING,
        attempts=1,
        started_at=1_002.0,
        earlier_attempts=(Attempt.failed(1, 1_002.0, 1_003.0, error, retry_at=1_013.0),),
    )
    child = make_invocation(
        2, kind=OperationKind.CHILD, status=InvocationStatus.WAITING_FOR_CHILD, started_at=1_002.0
    )
    first = done(1, 1_000.0, 1_002.0)
    cases = {
        "a retry's backoff": [first, in_backoff],
        "a child running": [first, child],
        "steps that ran at once (3 ended, 2 did not)": [first, done(3, 1_002.0, 1_003.0)],
    }

    for case, records in cases.items():
        assert await stopped_run_attempts(Logged(records), RUNNING, now=1_100.0) is None, case


async def test_nothing_is_kept_for_a_flow_not_left_running_or_held_by_a_live_lease() -> None:
    storage = Logged([done(1, 1_000.0, 1_002.0)])
    suspended = make_flow("f", status=TaskStatus.SUSPENDED)
    leased = make_flow("f", status=TaskStatus.RUNNING, lease_expires_at=1_200.0)

    assert await stopped_run_attempts(storage, suspended, now=1_100.0) is None
    assert await stopped_run_attempts(storage, leased, now=1_100.0) is None
    assert await stopped_run_attempts(storage, leased, now=1_300.0) is not None


def test_a_flow_a_worker_holds_now_is_not_run_directly_beside_it() -> None:
    leased = make_flow("f", status=TaskStatus.RUNNING, lease_owner="w-1", lease_expires_at=2e9)

    with pytest.raises(FlowStateError, match="running on worker 'w-1'"):
        refuse_leased_flow(leased, now=1e9)
    refuse_leased_flow(leased, now=3e9)  # an expired lease: its worker is gone
