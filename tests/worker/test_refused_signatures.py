"""A worker whose key refuses a flow's signature leaves the flow for one with the right key.

It never fails the flow: it gives the flow back to the queue with a pause that grows while it
keeps meeting it, says so once in its log, and the flow shows why (its ``error``, in ``show``
and the monitor) until a worker with the right key runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from pyergon import (
    Executor,
    Scheduler,
    Suspended,
    Worker,
    await_external_signal,
    flow,
    flow_type,
    step,
)
from pyergon.core import TaskStatus
from pyergon.errors import SignatureError
from pyergon.serialization import PickleSerializer, Serializer
from pyergon.storage.base import ExecutionLog

NEW, OLD = "new-key", "old-key"
RIGHT = PickleSerializer(key=NEW)
WRONG = {
    "another key": PickleSerializer(key="another-key"),
    "no key": PickleSerializer(unsigned=True),
}


@dataclass
@flow_type(name="SignedGreeting")
class SignedGreeting:
    name: str

    @step
    async def greet(self) -> str:
        return f"hello {self.name}"

    @flow
    async def run(self) -> str:
        return await self.greet()


@dataclass
@flow_type(name="SignedTwoStage")
class TwoStage:
    name: str

    @step
    async def first(self) -> str:
        return f"first {self.name}"

    @step
    async def second(self, first: str, go: str) -> str:
        return f"{first}, then {go}"

    @flow
    async def run(self) -> str:
        first = await self.first()
        go = await await_external_signal("go")
        return await self.second(first, go)


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "pyergon.worker" and "right key" in record.getMessage()
    ]


@pytest.mark.parametrize("wrong", sorted(WRONG))
async def test_a_worker_with_the_wrong_key_leaves_signed_flows_for_one_with_the_right_key(
    storage: ExecutionLog, caplog: pytest.LogCaptureFixture, wrong: str
) -> None:
    scheduler = Scheduler(storage, serializer=RIGHT)
    flow_ids = [await scheduler.schedule(SignedGreeting(f"n{n}")) for n in range(5)]
    misconfigured = Worker(storage, "w-wrong", serializer=WRONG[wrong])
    misconfigured.register(SignedGreeting)

    assert await misconfigured.run_until_idle(wait_for_timers=False) == 0

    for flow_id in flow_ids:
        left = await storage.get_flow(flow_id)
        assert left is not None and left.status is TaskStatus.SUSPENDED  # not FAILED
        assert left.wake_at is not None and left.lease_owner is None
        assert left.error is not None and left.error.short_type == "SignatureError"
        assert "'w-wrong'" in left.error.message and "right key" in left.error.message
    assert len(_refusals(caplog)) == 1  # one line, not one per flow
    assert _refusals(caplog)[0].levelno == logging.WARNING

    configured = Worker(storage, "w-right", serializer=RIGHT)
    configured.register(SignedGreeting)
    assert await configured.run_until_idle() == 5
    outcomes = await scheduler.wait(flow_ids, timeout=10)
    assert [outcomes[flow_id].result for flow_id in flow_ids] == [f"hello n{n}" for n in range(5)]
    for flow_id in flow_ids:
        done = await storage.get_flow(flow_id)
        assert done is not None and done.error is None  # the refusal is history now


async def test_a_refused_record_in_the_middle_of_a_run_leaves_the_flow_too(
    storage: ExecutionLog,
) -> None:
    # A rotation in progress: the flow's inputs are signed with the old key, which every worker
    # has; its first step was recorded by a worker that signs with the new key; a worker that
    # has only the old key then takes the flow and meets that record.
    rotated = PickleSerializer(keys=[NEW, OLD])
    old_only = PickleSerializer(key=OLD)
    flow_id = await Scheduler(storage, serializer=old_only).schedule(TwoStage("x"))
    new_worker = Worker(storage, "w-new", serializer=rotated)
    new_worker.register(TwoStage)
    await new_worker.run_until_idle(wait_for_timers=False)
    await Scheduler(storage, serializer=rotated).signal(flow_id, "go", "go")

    old_worker = Worker(storage, "w-old", serializer=old_only)
    old_worker.register(TwoStage)
    assert await old_worker.run_until_idle(wait_for_timers=False) == 0

    left = await storage.get_flow(flow_id)
    assert left is not None and left.status is TaskStatus.SUSPENDED
    assert left.error is not None and left.error.short_type == "SignatureError"
    assert await new_worker.run_until_idle() == 1
    outcome = (await Scheduler(storage, serializer=rotated).wait(flow_id, timeout=10))[flow_id]
    assert outcome.result == "first x, then go"


@pytest.mark.parametrize("wrong", [PickleSerializer(key="another-key")], ids=repr)
async def test_a_direct_run_with_the_wrong_key_raises_and_leaves_the_flow_as_it_was(
    storage: ExecutionLog, wrong: Serializer
) -> None:
    first = await Executor(TwoStage("y"), storage, "two-y", serializer=RIGHT).run(lambda f: f.run())
    assert isinstance(first, Suspended)

    with pytest.raises(SignatureError):
        await Executor(TwoStage("y"), storage, "two-y", serializer=wrong).run(lambda f: f.run())

    stored = await storage.get_flow("two-y")
    assert stored is not None and stored.status is TaskStatus.SUSPENDED
