"""Step identity (DESIGN §3.1), idempotency keys and first-writer-wins recording (§3.3)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest

import pyergon
from pyergon import Completed, Executor, flow, flow_type, step
from pyergon.core import Invocation, InvocationStatus, OperationKind
from pyergon.errors import PyergonError
from pyergon.serialization import default_serializer
from pyergon.storage.base import ExecutionLog


@dataclass
@flow_type
class GatheredSteps:
    label: str
    b_done: asyncio.Event = field(default_factory=asyncio.Event, init=False, compare=False)
    finished: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def slow_a(self, value: int) -> str:
        await self.b_done.wait()
        self.finished.append("a")
        return f"a{value}"

    @step
    async def fast_b(self, value: int) -> str:
        self.finished.append("b")
        self.b_done.set()
        return f"b{value}"

    @flow
    async def run(self) -> list[str]:
        return list(await asyncio.gather(self.slow_a(1), self.fast_b(2)))


async def test_gathered_steps_are_numbered_in_call_order_not_finish_order(
    storage: ExecutionLog,
) -> None:
    flow_instance = GatheredSteps("x")
    outcome = await Executor(flow_instance, storage, "gather-1").run(lambda f: f.run())

    assert outcome == Completed("gather-1", result=["a1", "b2"])
    assert flow_instance.finished == ["b", "a"]
    records = await storage.load_invocations("gather-1")
    assert [(r.sequence, r.sub_sequence, r.name) for r in records] == [
        (1, 0, "slow_a"),
        (2, 0, "fast_b"),
    ]
    assert all(r.kind is OperationKind.STEP for r in records)
    assert all(r.status is InvocationStatus.COMPLETE for r in records)


@dataclass
@flow_type
class ChargeTwice:
    amount: int

    @step
    async def charge(self, amount: int, *, currency: str = "EUR") -> str:
        return f"{amount} {currency}"

    @flow
    async def run(self) -> list[str]:
        first = await self.charge(self.amount)
        again = await self.charge(self.amount)
        other = await self.charge(self.amount, currency="USD")
        return [first, again, other]


async def test_records_keep_the_step_name_and_a_hash_of_its_arguments(
    storage: ExecutionLog,
) -> None:
    await Executor(ChargeTwice(5), storage, "charge-1").run(lambda f: f.run())
    await Executor(ChargeTwice(6), storage, "charge-2").run(lambda f: f.run())

    first, again, other = await storage.load_invocations("charge-1")
    (different_amount, _, _) = await storage.load_invocations("charge-2")
    assert {first.name, again.name, other.name} == {"charge"}
    assert first.args_hash
    assert first.args_hash == again.args_hash
    assert other.args_hash != first.args_hash
    assert different_amount.args_hash != first.args_hash


@dataclass
@flow_type
class KeyedSteps:
    label: str
    seen_keys: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def first(self) -> str:
        key = pyergon.idempotency_key()
        self.seen_keys.append(key)
        return key

    @step
    async def second(self) -> str:
        key = pyergon.idempotency_key()
        self.seen_keys.append(key)
        return key

    @flow
    async def run(self) -> list[str]:
        first = await self.first()
        gathered = await asyncio.gather(self.second(), self.first())
        return [first, *gathered]


async def test_a_step_reads_its_idempotency_key_flow_id_and_sequence(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(KeyedSteps("x"), storage, "order-7").run(lambda f: f.run())

    assert outcome.result == ["order-7:1", "order-7:2", "order-7:3"]
    records = await storage.load_invocations("order-7")
    assert [r.idempotency_key for r in records] == ["order-7:1", "order-7:2", "order-7:3"]


@dataclass
@flow_type
class KeyAcrossAttempts:
    label: str
    seen_keys: list[str] = field(default_factory=list, init=False, compare=False)

    @step(retry_policy=pyergon.RetryPolicy(max_attempts=3, initial_interval=0))
    async def flaky(self) -> str:
        self.seen_keys.append(pyergon.idempotency_key())
        if len(self.seen_keys) < 3:
            raise ConnectionError("provider unavailable")
        return "charged"

    @flow
    async def run(self) -> str:
        return await self.flaky()


async def test_the_idempotency_key_is_the_same_on_every_attempt(storage: ExecutionLog) -> None:
    flow_instance = KeyAcrossAttempts("x")
    await Executor(flow_instance, storage, "pay-1").run(lambda f: f.run())

    assert flow_instance.seen_keys == ["pay-1:1"] * 3


@dataclass
@flow_type
class KeyInFlowBody:
    label: str

    @flow
    async def run(self) -> str:
        return pyergon.idempotency_key()


async def test_idempotency_key_outside_a_step_body_is_a_pyergon_error(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(KeyInFlowBody("x"), storage, "key-1").run(lambda f: f.run())

    assert isinstance(outcome.error, PyergonError)
    assert "idempotency_key()" in str(outcome.error)
    with pytest.raises(PyergonError, match="needs a running step"):
        pyergon.idempotency_key()


async def test_a_step_called_outside_a_flow_runs_as_a_plain_method() -> None:
    assert await ChargeTwice(1).charge(3) == "3 EUR"
    with pytest.raises(PyergonError, match="needs a running step"):
        await KeyedSteps("x").first()


_result_numbers = itertools.count(1)


@dataclass
@flow_type
class RacedStep:
    # Not inputs (init=False): racers on one flow id must have the same inputs, else the
    # second is refused (FlowInputsChangedError); the label only tells the racers apart.
    label: str = field(default="", init=False, compare=False)
    both_started: asyncio.Event = field(default_factory=asyncio.Event, init=False, compare=False)
    started: list[str] = field(default_factory=list, init=False, compare=False)

    @step
    async def reserve(self) -> str:
        self.started.append(self.label)
        if len(self.started) == 2:
            self.both_started.set()
        await self.both_started.wait()
        return f"reservation-{next(_result_numbers)}-by-{self.label}"

    @flow
    async def run(self) -> str:
        return await self.reserve()


async def test_two_executors_racing_on_one_step_record_one_result_the_winners(
    storage: ExecutionLog,
) -> None:
    both_started = asyncio.Event()
    started: list[str] = []
    racers = [RacedStep(), RacedStep()]
    for racer, label in zip(racers, ("first", "second"), strict=True):
        racer.both_started, racer.started, racer.label = both_started, started, label
    first = Executor(racers[0], storage, "race-1")
    second = Executor(racers[1], storage, "race-1")

    outcomes = await asyncio.gather(first.run(lambda f: f.run()), second.run(lambda f: f.run()))

    assert sorted(started) == ["first", "second"]  # both bodies really ran
    records = await storage.load_invocations("race-1")
    assert len(records) == 1
    stored = records[0]
    assert stored.status is InvocationStatus.COMPLETE
    winner = outcomes[0].result
    assert outcomes[1].result == winner
    assert winner.startswith("reservation-")
    assert replay_result(stored) == winner
    late = RacedStep()
    late.label = "late"
    replayed = await Executor(late, storage, "race-1").run(lambda f: f.run())
    assert replayed.result == winner
    assert late.started == []


def replay_result(record: Invocation) -> object:
    assert record.result is not None
    return default_serializer().loads(record.result)
