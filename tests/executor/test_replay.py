"""Replay (DESIGN §3.2) and errors as values (§3.5): recorded steps are not run again."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pyergon import Completed, Executor, Suspended, await_external_signal, flow, flow_type, step
from pyergon.core import InvocationStatus, SuspendReason, TaskStatus
from pyergon.errors import NonDeterminismError, StepFailedError
from pyergon.executor.signal import send_signal
from pyergon.storage.base import ExecutionLog


@dataclass
@flow_type
class TwoStepsThenApproval:
    customer: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def load_customer(self) -> dict[str, object]:
        self.body_runs.append("load_customer")
        return {"name": self.customer, "tags": ["vip"]}

    @step
    async def quote(self, customer: dict[str, object]) -> list[int]:
        self.body_runs.append("quote")
        return [100, 20]

    @flow
    async def run(self) -> tuple[dict[str, object], list[int], str]:
        customer = await self.load_customer()
        quote = await self.quote(customer)
        approval = await await_external_signal("approval")
        return customer, quote, approval


async def test_a_resumed_flow_takes_recorded_results_without_running_step_bodies(
    storage: ExecutionLog,
) -> None:
    first_run = TwoStepsThenApproval("ada")
    suspended = await Executor(first_run, storage, "quote-1").run(lambda f: f.run())
    assert isinstance(suspended, Suspended)
    assert suspended.reason is SuspendReason.SIGNAL
    assert first_run.body_runs == ["load_customer", "quote"]

    await send_signal(storage, "quote-1", "approval", "yes")
    second_run = TwoStepsThenApproval("ada")
    outcome = await Executor(second_run, storage, "quote-1").run(lambda f: f.run())

    assert second_run.body_runs == []
    assert outcome == Completed(
        "quote-1", result=({"name": "ada", "tags": ["vip"]}, [100, 20], "yes")
    )


async def test_a_completed_flow_is_not_run_again(storage: ExecutionLog) -> None:
    await Executor(TwoStepsThenApproval("bo"), storage, "quote-2").run(lambda f: f.run())
    await send_signal(storage, "quote-2", "approval", "yes")
    completed = await Executor(TwoStepsThenApproval("bo"), storage, "quote-2").run(
        lambda f: f.run()
    )

    third_run = TwoStepsThenApproval("bo")
    again = await Executor(third_run, storage, "quote-2").run(lambda f: f.run())

    assert completed.status is TaskStatus.COMPLETE
    assert third_run.body_runs == []
    assert again == completed


class InsufficientFundsError(Exception):
    """A picklable user error: it survives a round trip through storage."""


class LedgerError(Exception):
    """A user error that pickle cannot rebuild faithfully: its init needs another argument."""

    def __init__(self, account: str, balance: int) -> None:
        super().__init__(f"account {account} is at {balance}")


@dataclass
@flow_type
class CaughtStepErrors:
    account: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)
    caught: list[BaseException] = field(default_factory=list, init=False, compare=False)

    @step
    async def withdraw(self) -> None:
        self.body_runs.append("withdraw")
        raise InsufficientFundsError(f"{self.account} has 3, needs 5")

    @step
    async def post_to_ledger(self) -> None:
        self.body_runs.append("post_to_ledger")
        raise LedgerError(self.account, -2)

    @flow
    async def run(self) -> str:
        for operation in (self.withdraw, self.post_to_ledger):
            try:
                await operation()
            except Exception as error:
                self.caught.append(error)
        return str(await await_external_signal("continue"))


async def test_replay_reraises_a_stored_step_error_with_its_original_type(
    storage: ExecutionLog,
) -> None:
    first_run = CaughtStepErrors("acc-1")
    await Executor(first_run, storage, "ledger-1").run(lambda f: f.run())
    second_run = CaughtStepErrors("acc-1")
    await Executor(second_run, storage, "ledger-1").run(lambda f: f.run())

    assert second_run.body_runs == []
    live, replayed = first_run.caught[0], second_run.caught[0]
    assert type(live) is type(replayed) is InsufficientFundsError
    assert str(replayed) == "acc-1 has 3, needs 5"


async def test_an_error_that_cannot_be_rebuilt_replays_as_step_failed_error(
    storage: ExecutionLog,
) -> None:
    first_run = CaughtStepErrors("acc-2")
    await Executor(first_run, storage, "ledger-2").run(lambda f: f.run())
    second_run = CaughtStepErrors("acc-2")
    await Executor(second_run, storage, "ledger-2").run(lambda f: f.run())

    assert isinstance(first_run.caught[1], LedgerError)
    replayed = second_run.caught[1]
    assert isinstance(replayed, StepFailedError)
    assert replayed.error_type.endswith("LedgerError")
    assert replayed.error_message == "account acc-2 is at -2"
    assert "raise LedgerError(self.account, -2)" in replayed.traceback_text


async def test_a_failed_step_stores_type_message_and_traceback(storage: ExecutionLog) -> None:
    await Executor(CaughtStepErrors("acc-3"), storage, "ledger-3").run(lambda f: f.run())

    withdraw, post = (await storage.load_invocations("ledger-3"))[:2]
    assert withdraw.status is InvocationStatus.FAILED
    assert withdraw.error is not None
    assert withdraw.error.type_name.endswith("InsufficientFundsError")
    assert withdraw.error.message == "acc-3 has 3, needs 5"
    assert "Traceback" in withdraw.error.traceback
    assert post.error is not None
    assert post.error.short_type == "LedgerError"


@dataclass
@flow_type
class FailingFlow:
    order_id: str
    body_runs: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def check_stock(self) -> int:
        self.body_runs.append("check_stock")
        return 0

    @flow
    async def run(self) -> str:
        if await self.check_stock() == 0:
            raise InsufficientFundsError(f"order {self.order_id} cannot be filled")
        return "shipped"


async def test_a_failed_flow_stores_its_error_and_a_rerun_returns_it_without_running(
    storage: ExecutionLog,
) -> None:
    first_run = FailingFlow("o-1")
    first = await Executor(first_run, storage, "failing-1").run(lambda f: f.run())

    assert isinstance(first, Completed)
    assert first.status is TaskStatus.FAILED
    assert isinstance(first.error, InsufficientFundsError)
    stored = await storage.get_flow("failing-1")
    assert stored is not None
    assert stored.status is TaskStatus.FAILED
    assert stored.error is not None
    assert stored.error.type_name.endswith("InsufficientFundsError")
    assert stored.error.message == "order o-1 cannot be filled"
    assert 'raise InsufficientFundsError(f"order' in stored.error.traceback

    second_run = FailingFlow("o-1")
    second = await Executor(second_run, storage, "failing-1").run(lambda f: f.run())

    assert second_run.body_runs == []
    assert second.status is TaskStatus.FAILED
    assert type(second.error) is InsufficientFundsError
    assert str(second.error) == "order o-1 cannot be filled"
    with pytest.raises(InsufficientFundsError):
        second.unwrap()


@dataclass
@flow_type(name="Payment")
class PaymentV1:
    amount: int

    @step
    async def charge(self, amount: int) -> str:
        return f"charged {amount}"

    @flow
    async def run(self) -> str:
        receipt = await self.charge(self.amount)
        await await_external_signal("shipped")
        return receipt


@dataclass
@flow_type(name="Payment")
class PaymentRenamedStep:
    amount: int

    @step
    async def authorize(self, amount: int) -> str:
        return f"authorized {amount}"

    @flow
    async def run(self) -> str:
        receipt = await self.authorize(self.amount)
        await await_external_signal("shipped")
        return receipt


@dataclass
@flow_type(name="Payment")
class PaymentChangedArguments:
    amount: int

    @step
    async def charge(self, amount: int) -> str:
        return f"charged {amount}"

    @flow
    async def run(self) -> str:
        receipt = await self.charge(self.amount * 100)
        await await_external_signal("shipped")
        return receipt


@pytest.mark.parametrize(
    ("changed_flow", "current_step"),
    [(PaymentRenamedStep, "'authorize'"), (PaymentChangedArguments, "'charge'")],
    ids=["renamed-step", "changed-arguments"],
)
async def test_calling_another_step_at_a_recorded_position_is_non_determinism(
    storage: ExecutionLog, changed_flow: type, current_step: str
) -> None:
    await Executor(PaymentV1(7), storage, "pay-7").run(lambda f: f.run())
    records_before = await storage.load_invocations("pay-7")

    with pytest.raises(NonDeterminismError) as raised:
        await Executor(changed_flow(7), storage, "pay-7").run(lambda f: f.run())

    message = str(raised.value)
    assert "'pay-7'" in message
    assert "position 1" in message
    assert "step 'charge'" in message
    assert current_step in message.split("the code now calls", 1)[1]
    assert raised.value.flow_id == "pay-7"
    assert raised.value.sequence == "1"
    assert await storage.load_invocations("pay-7") == records_before


async def test_after_non_determinism_the_original_code_can_still_finish_the_flow(
    storage: ExecutionLog,
) -> None:
    await Executor(PaymentV1(7), storage, "pay-8").run(lambda f: f.run())
    with pytest.raises(NonDeterminismError):
        await Executor(PaymentRenamedStep(7), storage, "pay-8").run(lambda f: f.run())
    stored = await storage.get_flow("pay-8")
    assert stored is not None
    assert stored.status is TaskStatus.SUSPENDED

    await send_signal(storage, "pay-8", "shipped", True)
    outcome = await Executor(PaymentV1(7), storage, "pay-8").run(lambda f: f.run())

    assert outcome == Completed("pay-8", result="charged 7")


@dataclass
@flow_type(name="Payment")
class PaymentSwallowingErrors:
    amount: int

    @step
    async def refund(self, amount: int) -> str:
        return f"refunded {amount}"

    @flow
    async def run(self) -> str:
        try:
            return await self.refund(self.amount)
        except Exception:
            return "carried on"


async def test_non_determinism_is_reported_even_when_the_flow_catches_it(
    storage: ExecutionLog,
) -> None:
    await Executor(PaymentV1(7), storage, "pay-9").run(lambda f: f.run())

    with pytest.raises(NonDeterminismError, match="'pay-9'"):
        await Executor(PaymentSwallowingErrors(7), storage, "pay-9").run(lambda f: f.run())

    stored = await storage.get_flow("pay-9")
    assert stored is not None
    assert stored.status is TaskStatus.SUSPENDED
