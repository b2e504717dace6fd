"""Retries (DESIGN §3.4): step retry policies, recorded attempts, durable flow-level backoff."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from pyergon import (
    Completed,
    Executor,
    RetryableError,
    RetryPolicy,
    Suspended,
    flow,
    flow_type,
    step,
)
from pyergon.clock import ManualClock
from pyergon.core import Invocation, InvocationStatus, SuspendReason, TaskStatus
from pyergon.errors import StepTimeoutError
from pyergon.storage.base import ExecutionLog
from tests.records import record_at


class ProviderDownError(Exception):
    """A transient failure of an outside system."""


class CardDeclinedError(Exception):
    """A failure no retry can fix."""


@dataclass
@flow_type
class FlakyCharge:
    failures_before_success: int
    attempts_seen: list[Invocation | None] = field(default_factory=list, init=False, compare=False)
    storage: ExecutionLog | None = field(default=None, init=False, compare=False)

    @step(retry_policy=RetryPolicy(max_attempts=3, initial_interval=0))
    async def charge(self) -> str:
        assert self.storage is not None
        self.attempts_seen.append(await record_at(self.storage, "flaky-1", 1))
        attempt = len(self.attempts_seen)
        if attempt <= self.failures_before_success:
            raise ProviderDownError(f"attempt {attempt}: provider down")
        return f"charged on attempt {attempt}"

    @flow
    async def run(self) -> str:
        return await self.charge()


async def test_a_step_that_fails_twice_then_succeeds_records_three_attempts(
    storage: ExecutionLog,
) -> None:
    charge = FlakyCharge(failures_before_success=2)
    charge.storage = storage

    outcome = await Executor(charge, storage, "flaky-1").run(lambda f: f.run())

    assert outcome == Completed("flaky-1", result="charged on attempt 3")
    (record,) = await storage.load_invocations("flaky-1")
    assert record.status is InvocationStatus.COMPLETE
    assert record.attempts == 3


async def test_while_a_step_is_retried_its_record_shows_attempts_and_last_error(
    storage: ExecutionLog,
) -> None:
    charge = FlakyCharge(failures_before_success=2)
    charge.storage = storage

    await Executor(charge, storage, "flaky-1").run(lambda f: f.run())

    before_first, before_second, before_third = charge.attempts_seen
    assert before_first is None
    assert before_second is not None
    assert before_second.status is InvocationStatus.PENDING
    assert before_second.attempts == 1
    assert before_second.error is not None
    assert before_second.error.message == "attempt 1: provider down"
    assert before_third is not None
    assert before_third.attempts == 2
    assert before_third.error is not None
    assert before_third.error.message == "attempt 2: provider down"
    assert before_third.error.short_type == "ProviderDownError"


async def test_a_step_failing_every_attempt_records_all_attempts_and_the_last_error(
    storage: ExecutionLog,
) -> None:
    charge = FlakyCharge(failures_before_success=5)
    charge.storage = storage

    outcome = await Executor(charge, storage, "flaky-1").run(lambda f: f.run())

    assert isinstance(outcome.error, ProviderDownError)
    assert len(charge.attempts_seen) == 3
    (record,) = await storage.load_invocations("flaky-1")
    assert record.status is InvocationStatus.FAILED
    assert record.attempts == 3
    assert record.error is not None
    assert record.error.message == "attempt 3: provider down"


@dataclass
@flow_type
class SelectiveRetries:
    error_name: str
    attempts: int = field(default=0, init=False, compare=False)

    @step(
        retry_policy=RetryPolicy(
            max_attempts=5, initial_interval=0, non_retryable=(CardDeclinedError,)
        )
    )
    async def charge(self) -> str:
        self.attempts += 1
        errors: dict[str, Exception] = {
            "declined": CardDeclinedError("card declined"),
            "not-retryable": RetryableError("account closed", retryable=False),
            "retryable": RetryableError("rate limited", retryable=True),
        }
        raise errors[self.error_name]

    @flow
    async def run(self) -> str:
        return await self.charge()


@pytest.mark.parametrize(
    ("error_name", "expected_attempts"),
    [("declined", 1), ("not-retryable", 1), ("retryable", 5)],
)
async def test_non_retryable_errors_are_not_retried(
    storage: ExecutionLog, error_name: str, expected_attempts: int
) -> None:
    charge = SelectiveRetries(error_name)

    outcome = await Executor(charge, storage, "selective-1").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert charge.attempts == expected_attempts
    (record,) = await storage.load_invocations("selective-1")
    assert record.attempts == expected_attempts


def test_retry_policy_presets() -> None:
    assert RetryPolicy.NONE.max_attempts == 1
    assert (
        RetryPolicy(
            max_attempts=3, initial_interval=1.0, backoff_coefficient=2.0, max_interval=60.0
        )
        == RetryPolicy.STANDARD
    )
    assert (
        RetryPolicy(
            max_attempts=10, initial_interval=0.1, backoff_coefficient=2.0, max_interval=10.0
        )
        == RetryPolicy.AGGRESSIVE
    )
    assert [RetryPolicy.STANDARD.delay_after(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert RetryPolicy.AGGRESSIVE.delay_after(10) == 10.0


@dataclass
@flow_type
class FlowRetriedAfterBackoff:
    order_id: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)
    fail_ship: bool = field(default=True, init=False, compare=False)

    @step
    async def reserve(self) -> str:
        self.body_runs.append("reserve")
        return f"reservation-{self.order_id}"

    @step
    async def ship(self, reservation: str) -> str:
        self.body_runs.append("ship")
        if self.fail_ship:
            raise ProviderDownError("carrier down")
        return f"shipped {reservation}"

    @flow(retry_policy=RetryPolicy(max_attempts=2, initial_interval=5))
    async def run(self) -> str:
        return await self.ship(await self.reserve())


async def test_flow_retry_waits_on_a_durable_timer_then_reruns_only_the_failed_step(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    start = clock.now()
    first = FlowRetriedAfterBackoff("o-1")
    outcome = await Executor(first, storage, "retry-1", clock=clock).run(lambda f: f.run())

    assert isinstance(outcome, Suspended)
    assert outcome.reason is SuspendReason.RETRY
    assert outcome.wake_at == start + 5
    assert first.body_runs == ["reserve", "ship"]
    stored = await storage.get_flow("retry-1")
    assert stored is not None
    assert (stored.status, stored.wake_at, stored.attempt) == (TaskStatus.SUSPENDED, start + 5, 2)

    clock.advance(4)
    early = FlowRetriedAfterBackoff("o-1")
    still_waiting = await Executor(early, storage, "retry-1", clock=clock).run(lambda f: f.run())

    assert isinstance(still_waiting, Suspended)
    assert still_waiting.reason is SuspendReason.RETRY
    assert still_waiting.wake_at == start + 5
    assert early.body_runs == []
    stored = await storage.get_flow("retry-1")
    assert stored is not None
    assert stored.status is TaskStatus.SUSPENDED

    clock.advance(1)
    retried = FlowRetriedAfterBackoff("o-1")
    retried.fail_ship = False
    final = await Executor(retried, storage, "retry-1", clock=clock).run(lambda f: f.run())

    assert final == Completed("retry-1", result="shipped reservation-o-1")
    assert retried.body_runs == ["ship"]


async def test_flow_retry_backoff_is_recorded_with_the_error_that_caused_it(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(FlowRetriedAfterBackoff("o-2"), storage, "retry-2", clock=clock).run(
        lambda f: f.run()
    )

    backoffs = [r for r in await storage.load_invocations("retry-2") if r.sequence == 0]
    assert len(backoffs) == 1
    assert backoffs[0].status is InvocationStatus.WAITING_FOR_TIMER
    assert backoffs[0].fire_at == clock.now() + 5
    assert backoffs[0].error is not None
    assert backoffs[0].error.message == "carrier down"


async def test_a_flow_failing_its_last_attempt_fails_for_good(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    await Executor(FlowRetriedAfterBackoff("o-3"), storage, "retry-3", clock=clock).run(
        lambda f: f.run()
    )
    clock.advance(5)
    again = FlowRetriedAfterBackoff("o-3")
    outcome = await Executor(again, storage, "retry-3", clock=clock).run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert isinstance(outcome.error, ProviderDownError)
    assert again.body_runs == ["ship"]
    stored = await storage.get_flow("retry-3")
    assert stored is not None
    assert (stored.status, stored.attempt) == (TaskStatus.FAILED, 2)


@dataclass
@flow_type
class FlowRetriedAtOnce:
    order_id: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def reserve(self) -> str:
        self.body_runs.append("reserve")
        return "reserved"

    @step
    async def ship(self) -> str:
        self.body_runs.append("ship")
        if self.body_runs.count("ship") == 1:
            raise ProviderDownError("carrier down")
        return "shipped"

    @flow(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0))
    async def run(self) -> list[str]:
        return [await self.reserve(), await self.ship()]


async def test_flow_retry_without_backoff_happens_in_the_same_run(
    storage: ExecutionLog, clock: ManualClock
) -> None:
    retried = FlowRetriedAtOnce("o-4")

    outcome = await Executor(retried, storage, "retry-4", clock=clock).run(lambda f: f.run())

    assert outcome == Completed("retry-4", result=["reserved", "shipped"])
    assert retried.body_runs == ["reserve", "ship", "ship"]
    stored = await storage.get_flow("retry-4")
    assert stored is not None
    assert stored.attempt == 2


@dataclass
@flow_type
class HangingStep:
    label: str
    never: asyncio.Event = field(default_factory=asyncio.Event, init=False, compare=False)

    @step(timeout=0.05)
    async def call_slow_service(self) -> str:
        await self.never.wait()
        return "unreachable"

    @flow
    async def run(self) -> str:
        return await self.call_slow_service()


async def test_a_step_running_past_its_timeout_fails_with_step_timeout_error(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(HangingStep("x"), storage, "slow-1").run(lambda f: f.run())

    assert isinstance(outcome.error, StepTimeoutError)
    assert isinstance(outcome.error, TimeoutError)
    assert "'call_slow_service'" in str(outcome.error)
    assert "0.05" in str(outcome.error)
    (record,) = await storage.load_invocations("slow-1")
    assert record.status is InvocationStatus.FAILED
    assert record.error is not None
    assert record.error.short_type == "StepTimeoutError"


class ClientTimeoutError(TimeoutError):
    """What an HTTP client raises when its own, shorter timeout runs out."""


@dataclass
@flow_type
class StepWithAClientTimeout:
    label: str

    @step(timeout=30)
    async def call_service(self) -> str:
        raise ClientTimeoutError("the service did not answer within 2 s")

    @flow
    async def run(self) -> str:
        return await self.call_service()


async def test_a_timeout_error_of_the_step_body_is_not_taken_for_the_step_timeout(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(StepWithAClientTimeout("x"), storage, "client-1").run(
        lambda f: f.run()
    )

    assert isinstance(outcome.error, ClientTimeoutError)
    assert not isinstance(outcome.error, StepTimeoutError)
    assert "did not answer within 2 s" in str(outcome.error)
    (record,) = await storage.load_invocations("client-1")
    assert record.error is not None
    assert record.error.short_type == "ClientTimeoutError"
