"""Where a direct run that stopped mid-way was: the attempt a later direct run keeps for it."""

from __future__ import annotations

from pyergon.core.records import Attempt, Invocation, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.executor._abandoned import stopped_run_attempts
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


async def test_a_step_waiting_for_its_retry_is_where_the_run_was() -> None:
    error = StoredError("builtins.ValueError", "bad")
    retried = make_invocation(
        2,
        status=InvocationStatus.PENDING,
        attempts=1,
        started_at=1_002.0,
        earlier_attempts=(Attempt.failed(1, 1_002.0, 1_003.0, error, retry_at=1_013.0),),
    )
    storage = Logged([done(1, 1_000.0, 1_002.0), retried])

    during_backoff = await stopped_run_attempts(storage, RUNNING, now=1_010.0)
    after_it = await stopped_run_attempts(storage, RUNNING, now=1_100.0)

    assert during_backoff == {(2, 0): Attempt(0, 1_003.0, None, "abandoned")}
    assert after_it == {(2, 0): Attempt(0, 1_013.0, None, "abandoned")}  # its retry had begun


async def test_records_inside_steps_and_flow_retries_do_not_move_the_position() -> None:
    nested = make_invocation(
        1, 1, kind=OperationKind.TIMER, status=InvocationStatus.COMPLETE, started_at=1_001.0
    )
    storage = Logged([done(1, 1_000.0, 1_002.0), nested])

    assert list(await stopped_run_attempts(storage, RUNNING, now=1_100.0) or {}) == [(2, 0)]


async def test_nothing_is_kept_for_a_flow_not_left_running_or_held_by_a_live_lease() -> None:
    storage = Logged([done(1, 1_000.0, 1_002.0)])
    suspended = make_flow("f", status=TaskStatus.SUSPENDED)
    leased = make_flow("f", status=TaskStatus.RUNNING, lease_expires_at=1_200.0)

    assert await stopped_run_attempts(storage, suspended, now=1_100.0) is None
    assert await stopped_run_attempts(storage, leased, now=1_100.0) is None
    assert await stopped_run_attempts(storage, leased, now=1_300.0) is not None
