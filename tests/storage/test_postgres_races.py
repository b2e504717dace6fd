"""Races between PostgreSQL backends sharing a schema, as between processes: real concurrency.

Each object has a pool of its own, so two calls running at once reach the server on two
connections and meet only in its locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pyergon.core import ClaimRequest, FlowQuery
from pyergon.core.changes import Change, FlowWrite
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.storage._flows import HeldFlow, deliver_signal, request_cancel, save_records
from pyergon.storage._postgres_sql import flow_lock_key
from pyergon.storage._sql.dialect import quote_identifier
from pyergon.storage.postgres import PostgresExecutionLog

from .conftest import FlowFactory, InvocationFactory, SignalFactory
from .test_postgres import Backends, wait_until

ROUNDS = 25


@pytest.fixture
async def backends(postgres_dsn: str) -> AsyncIterator[Backends]:
    async with Backends(postgres_dsn) as made:
        yield made


async def claim_one(storage: PostgresExecutionLog, flow_type: str, worker: str = "w") -> HeldFlow:
    """Claim the one runnable flow of ``flow_type``, as a run holds it."""
    (run,) = await storage.claim(
        ClaimRequest(worker, [flow_type], limit=1, lease_seconds=60, now=1_000)
    )
    assert run.flow.lease_token is not None
    return HeldFlow(storage, run.flow, run.flow.lease_token)


async def status_of(storage: PostgresExecutionLog, flow_id: str) -> TaskStatus:
    flow = await storage.get_flow(flow_id)
    assert flow is not None
    return flow.status


@pytest.mark.slow
async def test_concurrent_claimers_take_each_flow_exactly_once(
    backends: Backends, make_flow: FlowFactory
) -> None:
    first = await backends.make(max_size=5)
    others = [await backends.make(first.schema, max_size=5) for _ in range(3)]
    for index in range(50):
        await first.create_flow(make_flow(f"flow-{index:02}", created_at=float(index % 7)))

    async def claim_until_empty(storage: PostgresExecutionLog, worker: str) -> list[str]:
        claimed: list[str] = []
        while runs := await storage.claim(
            ClaimRequest(worker, ["Order"], limit=1 + len(claimed) % 3, lease_seconds=60, now=2_000)
        ):
            claimed += [run.flow.flow_id for run in runs]
        return claimed

    claims = await asyncio.gather(
        *(claim_until_empty([first, *others][n % 4], f"worker-{n}") for n in range(20))
    )

    everything = [flow_id for claimed in claims for flow_id in claimed]
    assert sorted(everything) == [f"flow-{index:02}" for index in range(50)]
    stored = await first.list_flows(FlowQuery(limit=100))
    assert {(flow.status, flow.version) for flow in stored} == {(TaskStatus.RUNNING, 2)}
    assert len({flow.lease_token for flow in stored}) == 50


async def test_of_two_changes_decided_on_one_version_exactly_one_is_applied(
    backends: Backends, make_flow: FlowFactory, make_invocation: InvocationFactory
) -> None:
    one = await backends.make()
    other = await backends.make(one.schema)
    for round_ in range(ROUNDS):
        flow_id = f"flow-{round_}"
        await one.create_flow(make_flow(flow_id))

        def change(sequence: int, flow_id: str = flow_id) -> Change:
            record = make_invocation(sequence, flow_id=flow_id)
            write = FlowWrite(flow_id, {"attempt": sequence}, expected_version=1)
            return Change(records=(record,), writes=(write,))

        applied = await asyncio.gather(one.apply(change(1)), other.apply(change(2)))

        assert sorted(result.moved is None for result in applied) == [False, True]
        (winner,) = [
            sequence for sequence, result in zip((1, 2), applied, strict=True) if result.complete
        ]
        flow = await one.get_flow(flow_id)
        assert flow is not None and (flow.attempt, flow.version) == (winner, 2)
        records = await one.load_invocations(flow_id)
        assert [record.sequence for record in records] == [winner]  # the loser wrote nothing


async def test_a_signal_racing_a_suspension_is_never_lost(
    backends: Backends,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    worker = await backends.make()
    sender = await backends.make(worker.schema)
    for round_ in range(ROUNDS):
        flow_id, flow_type = f"flow-{round_}", f"Order-{round_}"
        await worker.create_flow(make_flow(flow_id, flow_type=flow_type))
        held = await claim_one(worker, flow_type)
        waiting = make_invocation(
            1,
            flow_id=flow_id,
            kind=OperationKind.SIGNAL,
            name="approved",
            status=InvocationStatus.WAITING_FOR_SIGNAL,
        )
        await save_records(worker, [waiting])

        await asyncio.gather(
            held.leave([], RunEnd(TaskStatus.SUSPENDED, waiting_signals=("approved",))),
            deliver_signal(sender, make_signal(flow_id=flow_id)),
        )

        assert await status_of(worker, flow_id) is TaskStatus.PENDING, f"round {round_}"


async def claimed_parent_and_child(
    storage: PostgresExecutionLog, make_flow: FlowFactory, round_: int
) -> HeldFlow:
    """Store ``parent-<round>``, claimed, and its pending ``child-<round>``; return the parent.

    Each round has flow types of its own, so flows of earlier rounds are never claimed.
    """
    parent_id, parent_type = f"parent-{round_}", f"Order-{round_}"
    await storage.create_flow(make_flow(parent_id, flow_type=parent_type))
    parent = await claim_one(storage, parent_type, "p")
    child = make_flow(f"child-{round_}", flow_type=f"Child-{round_}", parent_flow_id=parent_id)
    await storage.create_flow(child)
    return parent


def waiting_for_child(round_: int) -> RunEnd:
    """A parent's suspension until ``child-<round>`` is final."""
    return RunEnd(TaskStatus.SUSPENDED, waiting_children=(f"child-{round_}",))


async def test_a_child_finishing_as_its_parent_suspends_always_wakes_the_parent(
    backends: Backends, make_flow: FlowFactory
) -> None:
    parents = await backends.make()
    children = await backends.make(parents.schema)
    for round_ in range(ROUNDS):
        parent = await claimed_parent_and_child(parents, make_flow, round_)
        child = await claim_one(children, f"Child-{round_}", "c")

        await asyncio.gather(
            parent.leave([], waiting_for_child(round_)),
            child.leave([], RunEnd(TaskStatus.COMPLETE, {"result": b"done"})),
        )

        assert await status_of(parents, parent.flow_id) is TaskStatus.PENDING, f"round {round_}"


async def test_a_child_cancelled_as_its_parent_suspends_always_wakes_the_parent(
    backends: Backends, make_flow: FlowFactory
) -> None:
    parents = await backends.make()
    managers = await backends.make(parents.schema)
    for round_ in range(ROUNDS):
        parent = await claimed_parent_and_child(parents, make_flow, round_)

        await asyncio.gather(
            parent.leave([], waiting_for_child(round_)),
            request_cancel(managers, f"child-{round_}"),
        )

        assert await status_of(parents, f"child-{round_}") is TaskStatus.CANCELLED
        assert await status_of(parents, parent.flow_id) is TaskStatus.PENDING, f"round {round_}"


async def test_renewing_leases_while_a_child_wakes_its_parent_never_deadlocks(
    backends: Backends, make_flow: FlowFactory
) -> None:
    worker = await backends.make()
    renewer = await backends.make(worker.schema)
    parent = await claimed_parent_and_child(worker, make_flow, 0)
    child = await claim_one(worker, "Child-0")
    leases = {parent.flow_id: parent.lease_token, child.flow_id: child.lease_token}
    admin = await backends.admin()
    flows = f"{quote_identifier(worker.schema)}.flows"

    async def waiting_for_rows(count: int) -> None:
        async def wait() -> bool:
            waiting = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'",
                f"pyergon-{worker.schema}",
            )
            return bool(waiting == count)

        await wait_until(wait, f"{count} statements wait for rows")

    async with admin.transaction():
        # Hold the child's row, so that the child's end and the renewal queue up behind it:
        # had the renewal taken the parent's row meanwhile, each would wait for the other.
        await admin.execute(f"SELECT 1 FROM {flows} WHERE flow_id = 'child-0' FOR UPDATE")
        leaving = asyncio.create_task(child.leave([], RunEnd(TaskStatus.COMPLETE)))
        await waiting_for_rows(1)
        renewing = asyncio.create_task(
            renewer.renew_leases(
                {flow_id: token for flow_id, token in leases.items() if token is not None},
                lease_seconds=60,
                now=1_010,
            )
        )
        await waiting_for_rows(2)

    assert (await leaving).complete
    assert await renewing == {parent.flow_id}  # the child had ended


async def test_a_cancel_request_from_another_object_reaches_the_flows_worker(
    backends: Backends, make_flow: FlowFactory
) -> None:
    worker = await backends.make()
    manager = await backends.make(worker.schema)
    await worker.create_flow(make_flow())
    await claim_one(worker, "Order")
    while await worker.wait_for_work(timeout=0.05):  # consume the notice of the new flow
        pass
    waiter = asyncio.create_task(worker.wait_for_work(timeout=30))

    requested = await request_cancel(manager, "flow-1")

    assert requested is not None and requested.cancel_requested
    assert await waiter is True
    assert await worker.cancel_requests(["flow-1", "elsewhere"]) == {"flow-1"}


async def test_a_flow_is_created_only_after_a_change_that_found_it_absent_commits(
    backends: Backends, make_flow: FlowFactory, make_signal: SignalFactory
) -> None:
    storage = await backends.make()
    admin = await backends.admin()
    application = f"pyergon-{storage.schema}"

    async with admin.transaction():
        # What an apply holds between finding flow-1 absent and its commit.
        await admin.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            flow_lock_key(storage.schema),
            "flow-1",
        )
        creating = asyncio.create_task(storage.create_flow(make_flow()))

        async def creation_waits() -> bool:
            waiting = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event = 'advisory'",
                application,
            )
            return bool(waiting == 1)

        await wait_until(creation_waits, "the creation waits for the change")
        assert not creating.done()

    assert (await creating)[1]
    # A signal for a flow that exists now is delivered to it, guarded by its version.
    assert await deliver_signal(storage, make_signal())
    flow = await storage.get_flow("flow-1")
    assert flow is not None and flow.version == 2
