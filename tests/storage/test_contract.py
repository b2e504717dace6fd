"""The storage contract: every backend behaves like the in-memory reference, method by method."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import ExecutionLog

from .conftest import FlowFactory, InvocationFactory, SignalFactory

ERRORS = [
    pytest.param(
        StoredError("builtins.ValueError", "bad card", "Traceback ...", None), id="no-payload"
    ),
    pytest.param(
        StoredError("shop.CardDeclined", "declined", "", b"\x80\x04payload"), id="payload"
    ),
]


def test_backend_implements_the_protocol(storage: ExecutionLog) -> None:
    assert isinstance(storage, ExecutionLog)


async def test_connect_and_close_are_safe_to_repeat(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.connect()
    await storage.create_flow(make_flow())
    assert await storage.get_flow("flow-1") == make_flow()
    await storage.close()
    await storage.close()


# -- flows -----------------------------------------------------------------------------------


async def test_create_flow_stores_a_new_flow(storage: ExecutionLog, make_flow: FlowFactory) -> None:
    flow = make_flow()

    assert await storage.create_flow(flow) == (flow, True)
    assert await storage.get_flow("flow-1") == flow


async def test_create_flow_keeps_the_existing_flow(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    first = make_flow()
    await storage.create_flow(first)

    stored, created = await storage.create_flow(make_flow(payload=b"other", flow_type="Refund"))

    assert (stored, created) == (first, False)
    assert await storage.get_flow("flow-1") == first


async def test_get_flow_of_an_unknown_id_is_none(storage: ExecutionLog) -> None:
    assert await storage.get_flow("missing") is None


@pytest.mark.parametrize("error", ERRORS)
async def test_every_flow_field_round_trips(
    storage: ExecutionLog, make_flow: FlowFactory, error: StoredError
) -> None:
    flow = make_flow(
        status=TaskStatus.RUNNING,
        updated_at=1_001.5,
        result=b"\x00result\xff",
        error=error,
        attempt=3,
        wake_at=2_000.25,
        parent_flow_id="parent-7",
        parent_sequence="3.1",
        lease_owner="worker-a",
        lease_token="token-1",
        lease_expires_at=1_030.0,
    )
    await storage.create_flow(flow)

    assert await storage.get_flow("flow-1") == flow


async def test_empty_payloads_stay_empty_bytes(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow(payload=b"", result=b""))

    stored = await storage.get_flow("flow-1")

    assert stored is not None
    assert (stored.payload, stored.result) == (b"", b"")


async def test_update_flow_changes_only_the_given_fields(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    error = StoredError("builtins.KeyError", "'sku'")
    await storage.create_flow(make_flow(result=b"r", error=error, wake_at=5.0, attempt=2))

    updated = await storage.update_flow("flow-1", status=TaskStatus.SUSPENDED)

    assert updated is not None
    assert updated.status is TaskStatus.SUSPENDED
    assert (updated.result, updated.error, updated.wake_at, updated.attempt) == (
        b"r",
        error,
        5.0,
        2,
    )
    assert updated.updated_at != 1_000.0
    assert await storage.get_flow("flow-1") == updated


@pytest.mark.parametrize("error", ERRORS)
async def test_update_flow_sets_and_clears_fields(
    storage: ExecutionLog, make_flow: FlowFactory, error: StoredError
) -> None:
    await storage.create_flow(make_flow())

    failed = await storage.update_flow(
        "flow-1", status=TaskStatus.FAILED, result=b"partial", error=error, wake_at=9.5, attempt=4
    )
    assert failed is not None
    assert (failed.result, failed.error, failed.wake_at, failed.attempt) == (
        b"partial",
        error,
        9.5,
        4,
    )

    cleared = await storage.update_flow(
        "flow-1", status=TaskStatus.PENDING, result=None, error=None, wake_at=None
    )
    assert cleared is not None
    assert (cleared.result, cleared.error, cleared.wake_at, cleared.attempt) == (
        None,
        None,
        None,
        4,
    )
    assert await storage.get_flow("flow-1") == cleared


async def test_update_flow_of_an_unknown_flow_is_none(storage: ExecutionLog) -> None:
    assert await storage.update_flow("missing", status=TaskStatus.RUNNING) is None


async def test_update_flow_honours_expected_status(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    flow = make_flow()
    await storage.create_flow(flow)

    refused = await storage.update_flow(
        "flow-1",
        status=TaskStatus.COMPLETE,
        expected_status=[TaskStatus.RUNNING, TaskStatus.SUSPENDED],
    )
    nothing_expected = await storage.update_flow(
        "flow-1", status=TaskStatus.COMPLETE, expected_status=[]
    )
    assert refused is None
    assert nothing_expected is None
    assert await storage.get_flow("flow-1") == flow

    accepted = await storage.update_flow(
        "flow-1", status=TaskStatus.RUNNING, expected_status=[TaskStatus.PENDING]
    )
    assert accepted is not None
    assert accepted.status is TaskStatus.RUNNING


async def test_only_one_of_concurrent_guarded_updates_wins(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow())

    results = await asyncio.gather(
        *(
            storage.update_flow(
                "flow-1", status=TaskStatus.RUNNING, expected_status=[TaskStatus.PENDING]
            )
            for _ in range(20)
        )
    )

    assert sum(result is not None for result in results) == 1


# -- invocations -----------------------------------------------------------------------------


@pytest.mark.parametrize("error", ERRORS)
async def test_every_invocation_field_round_trips(
    storage: ExecutionLog, make_invocation: InvocationFactory, error: StoredError
) -> None:
    failed = make_invocation(
        2,
        status=InvocationStatus.FAILED,
        error=error,
        attempts=3,
        started_at=1_001.0,
        completed_at=1_002.5,
    )
    timer = make_invocation(
        3, 1, kind=OperationKind.TIMER, name="reminder", args_hash="", fire_at=2_000.0,
        status=InvocationStatus.WAITING_FOR_TIMER,
    )  # fmt: skip
    child = make_invocation(
        4, kind=OperationKind.CHILD, name="Shipment", status=InvocationStatus.COMPLETE,
        result=b"\x00shipped", child_flow_id="flow-1:4",
    )  # fmt: skip
    for invocation in (failed, timer, child):
        assert await storage.record_invocation(invocation) == invocation

    assert await storage.get_invocation("flow-1", 2) == failed
    assert await storage.get_invocation("flow-1", 3, 1) == timer
    assert await storage.get_invocation("flow-1", 4, 0) == child


async def test_get_invocation_of_an_unknown_position_is_none(
    storage: ExecutionLog, make_invocation: InvocationFactory
) -> None:
    await storage.record_invocation(make_invocation(1))

    assert await storage.get_invocation("flow-1", 1, 1) is None
    assert await storage.get_invocation("flow-1", 2) is None
    assert await storage.get_invocation("flow-2", 1) is None


async def test_a_record_that_is_not_final_can_be_overwritten(
    storage: ExecutionLog, make_invocation: InvocationFactory
) -> None:
    await storage.record_invocation(make_invocation(1, status=InvocationStatus.PENDING))
    waiting = make_invocation(1, status=InvocationStatus.WAITING_FOR_SIGNAL, attempts=1)
    assert await storage.record_invocation(waiting) == waiting

    done = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"ok", attempts=1)
    assert await storage.record_invocation(done) == done
    assert await storage.get_invocation("flow-1", 1) == done


@pytest.mark.parametrize("final", [InvocationStatus.COMPLETE, InvocationStatus.FAILED])
async def test_recording_is_first_writer_wins(
    storage: ExecutionLog, make_invocation: InvocationFactory, final: InvocationStatus
) -> None:
    first = make_invocation(1, status=final, result=b"first", attempts=1)
    await storage.record_invocation(first)

    for later in (
        make_invocation(1, status=InvocationStatus.COMPLETE, result=b"second"),
        make_invocation(1, status=InvocationStatus.FAILED, error=StoredError("x.E", "late")),
        make_invocation(1, status=InvocationStatus.PENDING),
    ):
        assert await storage.record_invocation(later) == first

    assert await storage.get_invocation("flow-1", 1) == first


async def test_concurrent_writers_of_one_position_all_see_the_first(
    storage: ExecutionLog, make_invocation: InvocationFactory
) -> None:
    attempts = [
        make_invocation(1, status=InvocationStatus.COMPLETE, result=f"result-{n}".encode())
        for n in range(10)
    ]

    stored = await asyncio.gather(*(storage.record_invocation(a) for a in attempts))

    assert stored == [attempts[0]] * 10
    assert await storage.get_invocation("flow-1", 1) == attempts[0]


async def test_load_invocations_orders_by_sequence_then_sub_sequence(
    storage: ExecutionLog, make_invocation: InvocationFactory
) -> None:
    positions = [(10, 0), (2, 1), (1, 0), (2, 0), (2, 10), (2, 2), (3, 0)]
    for sequence, sub_sequence in positions:
        await storage.record_invocation(make_invocation(sequence, sub_sequence))
    await storage.record_invocation(make_invocation(1, flow_id="other-flow"))

    loaded = await storage.load_invocations("flow-1")

    assert [(i.sequence, i.sub_sequence) for i in loaded] == sorted(positions)
    assert await storage.load_invocations("unknown") == []


async def test_delete_failed_invocations_removes_only_failed_records(
    storage: ExecutionLog, make_invocation: InvocationFactory
) -> None:
    error = StoredError("builtins.OSError", "down")
    await storage.record_invocation(make_invocation(1, status=InvocationStatus.COMPLETE))
    await storage.record_invocation(make_invocation(2, status=InvocationStatus.FAILED, error=error))
    await storage.record_invocation(make_invocation(2, 1, status=InvocationStatus.FAILED))
    await storage.record_invocation(make_invocation(3, status=InvocationStatus.PENDING))
    await storage.record_invocation(
        make_invocation(2, flow_id="other-flow", status=InvocationStatus.FAILED)
    )

    assert await storage.delete_failed_invocations("flow-1") == 2
    assert await storage.delete_failed_invocations("flow-1") == 0

    remaining = [(i.sequence, i.status) for i in await storage.load_invocations("flow-1")]
    assert remaining == [(1, InvocationStatus.COMPLETE), (3, InvocationStatus.PENDING)]
    assert len(await storage.load_invocations("other-flow")) == 1


async def test_concurrent_records_are_all_stored(
    storage: ExecutionLog, make_invocation: InvocationFactory
) -> None:
    invocations = [
        make_invocation(n % 50 + 1, n // 50, flow_id=f"flow-{n % 4}", result=str(n).encode())
        for n in range(200)
    ]

    stored = await asyncio.gather(*(storage.record_invocation(i) for i in invocations))

    assert stored == invocations
    loaded = [i for n in range(4) for i in await storage.load_invocations(f"flow-{n}")]
    assert sorted(loaded, key=lambda i: int(i.result or b"")) == invocations


# -- signals ---------------------------------------------------------------------------------


async def test_store_signal_is_idempotent(
    storage: ExecutionLog, make_signal: SignalFactory
) -> None:
    first = make_signal(payload=b"first")

    assert await storage.store_signal(first) is True
    assert await storage.store_signal(make_signal(payload=b"second")) is False
    assert await storage.get_signal("flow-1", "approved") == first


async def test_signals_are_kept_per_flow_and_name(
    storage: ExecutionLog, make_signal: SignalFactory
) -> None:
    signals = [
        make_signal("approved"),
        make_signal("rejected"),
        make_signal("approved", flow_id="flow-2"),
    ]
    for record in signals:
        assert await storage.store_signal(record) is True

    assert [await storage.get_signal(s.flow_id, s.name) for s in signals] == signals
    assert await storage.get_signal("flow-1", "missing") is None
    assert await storage.get_signal("flow-3", "approved") is None


async def test_a_signal_leaves_a_flow_that_is_not_suspended_alone(
    storage: ExecutionLog, make_flow: FlowFactory, make_signal: SignalFactory
) -> None:
    flow = make_flow(status=TaskStatus.RUNNING, lease_token="t", lease_owner="w")
    await storage.create_flow(flow)

    await storage.store_signal(make_signal())

    assert await storage.get_flow("flow-1") == flow


# -- history ---------------------------------------------------------------------------------


async def test_list_flows_is_newest_first_with_ties_by_id(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    for flow_id, created_at in [("b", 2.0), ("a", 2.0), ("old", 1.0), ("new", 3.0), ("c", 2.0)]:
        await storage.create_flow(make_flow(flow_id, created_at=created_at))

    flows = await storage.list_flows()

    assert [flow.flow_id for flow in flows] == ["new", "c", "b", "a", "old"]


async def test_list_flows_filters_by_status_and_type(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    await storage.create_flow(make_flow("order-pending"))
    await storage.create_flow(make_flow("order-done", status=TaskStatus.COMPLETE))
    await storage.create_flow(
        make_flow("refund-done", flow_type="Refund", status=TaskStatus.COMPLETE)
    )

    async def ids(**filters: Any) -> set[str]:
        return {flow.flow_id for flow in await storage.list_flows(**filters)}

    assert await ids(status=TaskStatus.COMPLETE) == {"order-done", "refund-done"}
    assert await ids(flow_type="Order") == {"order-pending", "order-done"}
    assert await ids(status=TaskStatus.COMPLETE, flow_type="Refund") == {"refund-done"}
    assert await ids(status=TaskStatus.FAILED) == set()


async def test_list_flows_pages_through_every_flow_once(
    storage: ExecutionLog, make_flow: FlowFactory
) -> None:
    for index in range(105):
        await storage.create_flow(make_flow(f"flow-{index:03}", created_at=float(index % 7)))
    everything = await storage.list_flows(limit=1_000)

    pages = [await storage.list_flows(limit=10, offset=offset) for offset in range(0, 110, 10)]

    assert [flow for page in pages for flow in page] == everything
    assert len(everything) == 105
    assert len(await storage.list_flows()) == 100  # the default limit
    assert await storage.list_flows(offset=105) == []


# -- admin -----------------------------------------------------------------------------------


async def test_delete_flow_removes_its_records_and_signals(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    for flow_id in ("flow-1", "flow-2"):
        await storage.create_flow(make_flow(flow_id))
        await storage.record_invocation(make_invocation(1, flow_id=flow_id))
        await storage.store_signal(make_signal(flow_id=flow_id))

    assert await storage.delete_flow("flow-1") is True
    assert await storage.delete_flow("flow-1") is False

    assert await storage.get_flow("flow-1") is None
    assert await storage.load_invocations("flow-1") == []
    assert await storage.get_signal("flow-1", "approved") is None
    assert await storage.get_flow("flow-2") == make_flow("flow-2")
    assert len(await storage.load_invocations("flow-2")) == 1
    assert await storage.get_signal("flow-2", "approved") is not None


async def test_reset_deletes_everything_and_storage_stays_usable(
    storage: ExecutionLog,
    make_flow: FlowFactory,
    make_invocation: InvocationFactory,
    make_signal: SignalFactory,
) -> None:
    await storage.create_flow(make_flow())
    await storage.record_invocation(make_invocation(1))
    await storage.store_signal(make_signal())

    await storage.reset()

    assert await storage.list_flows() == []
    assert await storage.load_invocations("flow-1") == []
    assert await storage.get_signal("flow-1", "approved") is None
    assert await storage.create_flow(make_flow()) == (make_flow(), True)
