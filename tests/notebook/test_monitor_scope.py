"""Which flows a monitor watches: the ones started in the session, or as asked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from pyergon.clock import ManualClock
from pyergon.core.status import TaskStatus
from pyergon.errors import InvalidFlowIdError, PyergonError
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow

OPENED = 1_700_000_000.0


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    """A session opened at :data:`OPENED` on storage that already holds two older flows."""
    storage = InMemoryExecutionLog()
    for index, status in enumerate((TaskStatus.COMPLETE, TaskStatus.FAILED)):
        await storage.create_flow(
            make_flow(f"old-{index}", status=status, created_at=OPENED - 3_600 + index)
        )
    session = Session(storage, clock=ManualClock(OPENED))
    try:
        yield session
    finally:
        await session.close()


async def started(session: Session, flow_id: str, **fields: object) -> None:
    """Store a flow as if the session had started it a second after it opened."""
    await session.storage.create_flow(make_flow(flow_id, created_at=OPENED + 1, **fields))


async def test_a_monitor_watches_the_flows_created_since_the_session_opened(
    session: Session,
) -> None:
    await started(session, "new-order")
    await started(session, "new-refund", flow_type="Refund", status=TaskStatus.COMPLETE)

    monitor = await session.monitor()

    assert session.opened_at == OPENED
    assert repr(monitor).splitlines()[:2] == [
        "pyergon monitor of flows created since this session opened: 1 of 2 flows final (50%)",
        "  PENDING 1  RUNNING 0  SUSPENDED 0  COMPLETE 1  FAILED 0  CANCELLED 0",
    ]
    assert "old-" not in repr(monitor) and "old-" not in monitor._repr_html_()
    assert "of flows created since this session opened" in monitor._repr_html_()


async def test_every_flow_in_storage_is_one_argument_away(session: Session) -> None:
    await started(session, "new-order")

    monitor = await session.monitor(all_flows=True)

    lines = repr(monitor).splitlines()
    assert lines[0] == "pyergon monitor of every flow in storage: 2 of 3 flows final (66%)"
    assert "    old-1 (Order) FAILED" in lines


async def test_a_monitor_of_one_type_counts_that_type_alone(session: Session) -> None:
    await started(session, "new-order")
    await started(session, "new-refund", flow_type="Refund")

    since_opened = await session.monitor(flow_type="Refund")
    ever = await session.monitor(flow_type="Order", all_flows=True)

    assert repr(since_opened).splitlines()[0] == (
        "pyergon monitor of Refund flows created since this session opened: 0 of 1 flows final (0%)"
    )
    assert repr(ever).splitlines()[0] == (
        "pyergon monitor of every Order flow in storage: 2 of 3 flows final (66%)"
    )


@pytest.mark.parametrize(
    ("since", "scope"),
    [
        (OPENED - 1_800, "since 2023-11-14 21:43:20 UTC"),
        (datetime.fromtimestamp(OPENED - 1_800, UTC), "since 2023-11-14 21:43:20 UTC"),
        (timedelta(minutes=30), "in the last 30 min"),  # no clock time: the same at each run
    ],
    ids=["epoch-seconds", "datetime", "timedelta"],
)
async def test_since_takes_a_time_or_how_long_ago(
    session: Session, since: float | datetime | timedelta, scope: str
) -> None:
    await session.storage.create_flow(make_flow("half-hour-ago", created_at=OPENED - 1_000))

    monitor = await session.monitor(since=since)

    assert repr(monitor).splitlines()[0] == (
        f"pyergon monitor of flows created {scope}: 0 of 1 flows final (0%)"
    )


async def test_a_monitor_of_chosen_flows_names_those_storage_lacks(session: Session) -> None:
    await started(session, "new-order")

    one = await session.monitor("old-0")
    chosen = await session.monitor(["old-1", "ghost", "new-order", "old-1"])

    assert repr(one).splitlines()[0] == "pyergon monitor of flow old-0: 1 of 1 flows final (100%)"
    lines = repr(chosen).splitlines()
    assert lines[0] == "pyergon monitor of 3 chosen flows: 1 of 2 flows final (50%)"
    assert "  not in storage: ghost" in lines
    assert [line.split()[0] for line in lines if line.startswith("    ")][:2] == [
        "old-1",
        "new-order",
    ]  # failed first, then the others


async def test_many_chosen_flows_count_those_storage_lacks(session: Session) -> None:
    await started(session, "new-order")

    monitor = await session.monitor(["new-order", *(f"ghost-{n}" for n in range(150))])

    assert "  not in storage: 150 of the chosen flows" in repr(monitor).splitlines()
    assert repr(monitor).splitlines()[0] == (
        "pyergon monitor of 151 chosen flows: 0 of 1 flows final (0%)"
    )


@pytest.mark.parametrize(
    ("since", "scope"),
    [
        (timedelta(hours=2), "in the last 2 h"),
        (timedelta(seconds=5_400), "in the last 90 min"),
        (timedelta(days=1), "in the last 1 day"),
        (timedelta(days=3), "in the last 3 days"),
        (timedelta(seconds=3_601), "in the last 3601 s"),
    ],
)
async def test_how_long_ago_is_said_in_its_largest_whole_unit(
    session: Session, since: timedelta, scope: str
) -> None:
    monitor = await session.monitor(since=since)

    assert repr(monitor).startswith(f"pyergon monitor of flows created {scope}: ")
    assert f"of flows created {scope}: " in monitor._repr_html_()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"flow_ids": ["a"], "flow_type": "Order"}, "flow_ids alone"),
        ({"flow_ids": ["a"], "all_flows": True}, "flow_ids alone"),
        ({"since": 0.0, "all_flows": True}, "not both"),
    ],
)
async def test_a_monitor_refuses_two_ways_to_choose_flows(
    session: Session, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        session.monitor(**arguments)  # type: ignore[arg-type]


async def test_a_monitor_refuses_an_id_that_cannot_be_one(session: Session) -> None:
    with pytest.raises(InvalidFlowIdError, match="flow_ids"):
        session.monitor(["ok", "bad\x00id"])


async def test_a_closed_session_has_no_monitor(session: Session) -> None:
    await session.close()

    with pytest.raises(PyergonError, match="closed"):
        session.monitor()
