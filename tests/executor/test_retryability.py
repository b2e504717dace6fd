"""Retryability survives storage and children (issue 14, item 4).

An error's own verdict (``is_retryable()``, on any exception) is stored with it, so a parent
that sees a child's failure only as stored text still knows not to retry it, and the stored
message stays the child's own, not wrapped in ``StepFailedError`` once per level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pyergon import (
    Completed,
    Executor,
    RetryableError,
    RetryPolicy,
    Scheduler,
    Worker,
    flow,
    flow_type,
    step,
)
from pyergon.core import StoredError, TaskStatus
from pyergon.errors import StepFailedError
from pyergon.serialization import JsonSerializer, rebuild_exception
from pyergon.storage.base import ExecutionLog

NO_WAIT = RetryPolicy(max_attempts=3, initial_interval=0)

body_runs: list[str] = []


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    body_runs.clear()


class OrderRefusedError(RetryableError):
    """Builds its own message, so it cannot be rebuilt from its pickled arguments."""

    def __init__(self, order: int) -> None:
        super().__init__(f"order {order} refused", retryable=False)


class QuotaSpentError(Exception):
    """Says it is not worth retrying without subclassing RetryableError."""

    def __init__(self, account: str) -> None:
        super().__init__(f"quota of {account} is spent")

    def is_retryable(self) -> bool:
        return False


@dataclass
@flow_type
class Refuse:
    """Refuses the order, or (``quota_spent``) fails on an exhausted quota."""

    order: int
    quota_spent: bool = False

    @flow
    async def run(self) -> str:
        return await self.check()

    @step(retry_policy=NO_WAIT)
    async def check(self) -> str:
        body_runs.append(f"check {self.order}")
        if self.quota_spent:
            raise QuotaSpentError(f"account-{self.order}")
        raise OrderRefusedError(self.order)


@dataclass
@flow_type
class Place:
    """Places an order through ``levels`` nested flows; the innermost refuses it."""

    order: int
    levels: int = 1

    @flow(retry_policy=NO_WAIT)
    async def run(self) -> None:
        inner = Place(self.order, self.levels - 1) if self.levels > 1 else Refuse(self.order)
        await self.invoke(inner).result()


async def run_on_a_worker(storage: ExecutionLog, place: Place, flow_id: str) -> Completed[Any]:
    """Schedule ``place`` and let one worker run everything it starts; return its outcome."""
    scheduler = Scheduler(storage)
    worker = Worker(storage, "w1")
    for flow_class in (Refuse, Place):
        await worker.register(flow_class)
    await scheduler.schedule(place, flow_id=flow_id)
    await worker.run_until_idle()
    return (await scheduler.wait(flow_id, timeout=10))[flow_id]


def test_a_stored_error_keeps_the_errors_own_verdict() -> None:
    assert StoredError.describe(OrderRefusedError(7)).retryable is False
    assert StoredError.describe(QuotaSpentError("ann")).retryable is False
    assert StoredError.describe(RetryableError("busy")).retryable is True
    assert StoredError.describe(ValueError("bad")).retryable is None


class BrokenVerdict(Exception):
    def is_retryable(self, attempt: int) -> bool:  # takes an argument pyergon does not pass
        return attempt < 3


def test_an_is_retryable_that_fails_gives_no_verdict_and_the_error_is_still_stored() -> None:
    stored = StoredError.describe(BrokenVerdict("card declined"))

    assert stored.retryable is None
    assert stored.message == "card declined"


def test_a_rebuilt_error_keeps_the_stored_verdict() -> None:
    stored = StoredError("shop.OrderRefusedError", "order 7 refused", retryable=False)

    rebuilt = rebuild_exception(JsonSerializer(), stored)

    assert isinstance(rebuilt, StepFailedError)
    assert not NO_WAIT.should_retry(rebuilt, 1)
    assert StoredError.describe(rebuilt) == stored  # flat: no StepFailedError around it


async def test_is_retryable_is_honoured_without_subclassing_retryable_error(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(Refuse(3, quota_spent=True), storage, "spend-1").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert body_runs == ["check 3"]
    (record,) = await storage.load_invocations("spend-1")
    assert record.attempts == 1
    assert record.error is not None and record.error.retryable is False


async def test_a_non_retryable_child_error_is_not_retried_by_the_parent(
    storage: ExecutionLog,
) -> None:
    await run_on_a_worker(storage, Place(7), "place-7")

    assert body_runs == ["check 7"]
    parent = await storage.get_flow("place-7")
    assert parent is not None and parent.status is TaskStatus.FAILED
    assert parent.attempt == 1
    assert parent.error is not None
    assert parent.error.type_name.endswith("OrderRefusedError")
    assert parent.error.message == "order 7 refused"
    assert parent.error.retryable is False


async def test_a_child_error_reaches_a_grandparent_with_its_own_message(
    storage: ExecutionLog,
) -> None:
    outcome = await run_on_a_worker(storage, Place(8, levels=2), "batch-8")

    assert body_runs == ["check 8"]
    assert (
        str(outcome.error) == "tests.executor.test_retryability.OrderRefusedError: order 8 refused"
    )
    for flow_id in ("batch-8", "batch-8~child-1", "batch-8~child-1~child-1"):
        stored = await storage.get_flow(flow_id)
        assert stored is not None and stored.error is not None
        assert stored.error.message == "order 8 refused", flow_id
        assert "StepFailedError" not in stored.error.type_name + stored.error.message
        child_records = await storage.load_invocations(flow_id)
        for record in child_records:
            assert record.error is not None
            assert record.error.message == "order 8 refused", (flow_id, record.position)


def test_a_policys_non_retryable_types_match_an_error_stored_as_text() -> None:
    policy = RetryPolicy(max_attempts=3, non_retryable=(QuotaSpentError,))
    stored_as_text = StepFailedError(f"{__name__}.QuotaSpentError", "quota of ann is spent")
    other = StepFailedError(f"{__name__}.OtherError", "quota of ann is spent")

    assert not policy.should_retry(stored_as_text, 1)
    assert policy.should_retry(other, 1)
