"""The contract for reading many flows (listings, pages, counts) and for deleting them."""

from __future__ import annotations

import pytest

from pyergon.core.changes import Change
from pyergon.core.query import FlowQuery
from pyergon.core.records import FlowCursor, ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.errors import InvalidFlowIdError
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import store
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["ReadContract"]

# Newest first: refund (500), pending (400), child-b (300), child-a (200), parent (100).
_MIX: list[ScheduledFlow] = [
    make_flow("parent", status=TaskStatus.COMPLETE, created_at=100.0),
    make_flow(
        "child-a",
        status=TaskStatus.COMPLETE,
        created_at=200.0,
        parent_flow_id="parent",
        parent_sequence="1",
        worker_id="worker-a",
    ),
    make_flow(
        "child-b",
        status=TaskStatus.FAILED,
        created_at=300.0,
        flow_type="Refund",
        parent_flow_id="parent",
        parent_sequence="2",
        worker_id="worker-b",
    ),
    make_flow("pending", created_at=400.0),
    make_flow(
        "refund",
        status=TaskStatus.SUSPENDED,
        created_at=500.0,
        flow_type="Refund",
        worker_id="worker-a",
    ),
]


async def _mix(storage: ExecutionLog) -> ExecutionLog:
    """Store flows that differ in everything ``list_flows`` filters on."""
    for flow in _MIX:
        await storage.create_flow(flow)
    return storage


async def _ids(storage: ExecutionLog, **filters: object) -> list[str]:
    query = FlowQuery(**filters)  # type: ignore[arg-type]  # filters come from parametrize
    return [flow.flow_id for flow in await storage.list_flows(query)]


class ReadContract:
    """Listings are newest first, filtered, paged by offset or cursor; deletes take everything."""

    async def test_list_flows_is_newest_first_with_ties_by_id(self, storage: ExecutionLog) -> None:
        for flow_id, created_at in [("b", 2.0), ("a", 2.0), ("old", 1.0), ("new", 3.0), ("c", 2.0)]:
            await storage.create_flow(make_flow(flow_id, created_at=created_at))

        assert await _ids(storage) == ["new", "c", "b", "a", "old"]

    async def test_list_flows_returns_the_flows_as_stored(self, storage: ExecutionLog) -> None:
        await _mix(storage)

        assert await storage.list_flows() == sorted(
            _MIX, key=lambda flow: flow.created_at, reverse=True
        )

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            pytest.param({}, ["refund", "pending", "child-b", "child-a", "parent"], id="none"),
            pytest.param({"status": TaskStatus.COMPLETE}, ["child-a", "parent"], id="status"),
            pytest.param(
                {"status": [TaskStatus.FAILED, TaskStatus.SUSPENDED]},
                ["refund", "child-b"],
                id="statuses",
            ),
            pytest.param({"status": []}, [], id="no-status"),
            pytest.param({"flow_type": "Refund"}, ["refund", "child-b"], id="type"),
            pytest.param({"flow_type": "Unknown"}, [], id="unknown-type"),
            pytest.param(
                {"created_after": 300.0},
                ["refund", "pending", "child-b"],
                id="created-after-inclusive",
            ),
            pytest.param(
                {"created_before": 300.0}, ["child-a", "parent"], id="created-before-exclusive"
            ),
            pytest.param({"worker_id": "worker-a"}, ["refund", "child-a"], id="worker"),
            pytest.param({"worker_id": "nobody"}, [], id="unknown-worker"),
            pytest.param({"parent_flow_id": "parent"}, ["child-b", "child-a"], id="parent"),
            pytest.param(
                {"after": FlowCursor(300.0, "child-b")}, ["child-a", "parent"], id="after"
            ),
            pytest.param(
                {"after": FlowCursor(300.0, "child-c")},
                ["child-b", "child-a", "parent"],
                id="after-a-position-of-no-flow",
            ),
        ],
    )
    async def test_list_flows_filters_by_each_field_alone(
        self, storage: ExecutionLog, filters: dict[str, object], expected: list[str]
    ) -> None:
        assert await _ids(await _mix(storage), **filters) == expected

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            pytest.param(
                {"status": TaskStatus.COMPLETE, "parent_flow_id": "parent"},
                ["child-a"],
                id="status",
            ),
            pytest.param({"flow_type": "Refund", "worker_id": "worker-b"}, ["child-b"], id="type"),
            pytest.param(
                {"created_after": 200.0, "created_before": 500.0},
                ["pending", "child-b", "child-a"],
                id="created-range",
            ),
            pytest.param(
                {"status": [TaskStatus.FAILED, TaskStatus.SUSPENDED], "worker_id": "worker-a"},
                ["refund"],
                id="statuses-and-worker",
            ),
            pytest.param(
                {
                    "flow_type": "Order",
                    "created_before": 450.0,
                    "after": FlowCursor(400.0, "pending"),
                },
                ["child-a", "parent"],
                id="type-range-and-after",
            ),
            pytest.param(
                {"created_before": 250.0, "after": FlowCursor(400.0, "pending")},
                ["child-a", "parent"],
                id="range-tighter-than-after",
            ),
            pytest.param(
                {"created_after": 200.0, "after": FlowCursor(400.0, "pending")},
                ["child-b", "child-a"],
                id="range-and-after",
            ),
            pytest.param(
                {"parent_flow_id": "parent", "flow_type": "Order", "status": TaskStatus.FAILED},
                [],
                id="nothing-matches",
            ),
        ],
    )
    async def test_list_flows_combines_filters(
        self, storage: ExecutionLog, filters: dict[str, object], expected: list[str]
    ) -> None:
        assert await _ids(await _mix(storage), **filters) == expected

    async def test_list_flows_pages_through_every_flow_once(self, storage: ExecutionLog) -> None:
        for index in range(105):
            await storage.create_flow(make_flow(f"flow-{index:03}", created_at=float(index % 7)))
        everything = await storage.list_flows(FlowQuery(limit=1_000))

        pages = [
            await storage.list_flows(FlowQuery(limit=10, offset=offset))
            for offset in range(0, 110, 10)
        ]

        assert [flow for page in pages for flow in page] == everything
        assert len(everything) == 105
        assert len(await storage.list_flows()) == 100  # the default limit
        assert len(await storage.list_flows(FlowQuery())) == 100
        assert await storage.list_flows(FlowQuery(offset=105)) == []

    async def test_keyset_paging_gives_every_flow_once_in_order(
        self, storage: ExecutionLog
    ) -> None:
        # Three flows share each created_at, and ids do not follow creation order.
        created = [
            make_flow(f"flow-{index * 7 % 25:02}", created_at=float(index // 3))
            for index in range(25)
        ]
        for flow in created:
            await storage.create_flow(flow)
        newest_first = sorted(
            created, key=lambda flow: (flow.created_at, flow.flow_id), reverse=True
        )

        pages: list[list[ScheduledFlow]] = []
        cursor: FlowCursor | None = None
        while page := await storage.list_flows(FlowQuery(limit=10, after=cursor)):
            pages.append(page)
            cursor = FlowCursor.after(page[-1])

        assert [len(page) for page in pages] == [10, 10, 5]
        assert [flow for page in pages for flow in page] == newest_first

    async def test_keyset_paging_keeps_the_filters(self, storage: ExecutionLog) -> None:
        statuses = [TaskStatus.PENDING, TaskStatus.COMPLETE, TaskStatus.FAILED]
        for index in range(30):
            await storage.create_flow(
                make_flow(
                    f"flow-{index:02}",
                    created_at=float(index // 4),
                    flow_type="Refund" if index % 2 else "Order",
                    status=statuses[index % 3],
                )
            )
        wanted_statuses = [TaskStatus.PENDING, TaskStatus.FAILED]
        wanted = await _ids(storage, limit=1_000, flow_type="Refund", status=wanted_statuses)

        query = FlowQuery(limit=3, flow_type="Refund", status=wanted_statuses)
        paged: list[str] = []
        cursor: FlowCursor | None = None
        while page := await storage.list_flows(query.page(after=cursor)):
            paged += [flow.flow_id for flow in page]
            cursor = FlowCursor.after(page[-1])

        assert paged == wanted
        assert len(wanted) == 10  # odd indexes whose index % 3 is 0 or 2
        assert wanted == [f"flow-{index:02}" for index in (29, 27, 23, 21, 17, 15, 11, 9, 5, 3)]

    async def test_offset_and_limit_apply_after_the_cursor(self, storage: ExecutionLog) -> None:
        await _mix(storage)

        page = await _ids(storage, after=FlowCursor(450.0, ""), offset=1, limit=2)

        assert page == ["child-b", "child-a"]
        assert await _ids(storage, limit=0) == []

    @pytest.mark.parametrize(
        ("limit", "offset", "message"),
        [(-1, 0, "limit must be >= 0"), (10, -1, "offset must be >= 0")],
        ids=["limit", "offset"],
    )
    async def test_list_flows_refuses_a_negative_page(
        self, storage: ExecutionLog, limit: int, offset: int, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            await storage.list_flows(FlowQuery(limit=limit, offset=offset))
        with pytest.raises(ValueError, match=message):
            await storage.list_flows(FlowQuery().page(limit=limit, offset=offset))

    async def test_count_flows_counts_every_status(self, storage: ExecutionLog) -> None:
        nothing = dict.fromkeys(TaskStatus, 0)
        assert await storage.count_flows() == nothing
        await storage.create_flow(make_flow("a"))
        await storage.create_flow(make_flow("b"))
        await storage.create_flow(make_flow("c", status=TaskStatus.COMPLETE))
        await storage.create_flow(make_flow("d", flow_type="Refund", status=TaskStatus.COMPLETE))
        await storage.create_flow(make_flow("e", flow_type="Refund", status=TaskStatus.FAILED))

        counts = await storage.count_flows()

        assert counts == nothing | {
            TaskStatus.PENDING: 2,
            TaskStatus.COMPLETE: 2,
            TaskStatus.FAILED: 1,
        }
        assert all(isinstance(status, TaskStatus) for status in counts)
        assert await storage.count_flows(flow_type="Refund") == nothing | {
            TaskStatus.COMPLETE: 1,
            TaskStatus.FAILED: 1,
        }
        assert await storage.count_flows(flow_type="Unknown") == nothing

    async def test_count_flows_counts_flows_created_since(self, storage: ExecutionLog) -> None:
        """``created_after`` counts flows created at or after it (a session's monitor's scope)."""
        nothing = dict.fromkeys(TaskStatus, 0)
        for index, status in enumerate(
            (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.RUNNING, TaskStatus.COMPLETE)
        ):
            flow_type = "Refund" if index % 2 else "Order"
            await storage.create_flow(
                make_flow(f"f{index}", flow_type=flow_type, status=status, created_at=10.0 + index)
            )

        assert await storage.count_flows(created_after=11.0) == nothing | {
            TaskStatus.FAILED: 1,
            TaskStatus.RUNNING: 1,
            TaskStatus.COMPLETE: 1,
        }
        assert await storage.count_flows(created_after=10.5, flow_type="Order") == nothing | {
            TaskStatus.RUNNING: 1
        }
        assert await storage.count_flows(created_after=0.0) == await storage.count_flows()
        assert await storage.count_flows(created_after=13.5) == nothing

    async def test_chosen_flows_are_listed_and_counted_like_any_filter(
        self, storage: ExecutionLog
    ) -> None:
        """``flow_ids`` (a monitor's chosen flows) combines with every other filter and page."""
        statuses = list(TaskStatus)
        stored = [
            make_flow(
                f"f{index:02}",
                status=statuses[index % len(statuses)],
                flow_type=("Order", "Refund")[index % 2],
                created_at=10.0 + index // 2,  # ties, broken by id
            )
            for index in range(20)
        ]
        for flow in stored:
            await storage.create_flow(flow)
        ids = [f"f{index:02}" for index in range(1, 20, 3)] + ["ghost"]
        cursor = FlowCursor.after(stored[13])
        queries = [
            FlowQuery(flow_ids=ids),
            FlowQuery(flow_ids=ids, status=TaskStatus.RUNNING),
            FlowQuery(flow_ids=ids, status={TaskStatus.PENDING, TaskStatus.FAILED}),
            FlowQuery(flow_ids=ids, flow_type="Refund", created_after=12.0),
            FlowQuery(flow_ids=ids, created_before=15.0, limit=2, offset=1),
            FlowQuery(flow_ids=ids, after=cursor, limit=3),
            FlowQuery(flow_ids=["f04", "f05"]),
            FlowQuery(flow_ids=[]),
        ]

        for query in queries:
            assert await storage.list_flows(query) == query.page_of(stored), query

        chosen = [flow for flow in stored if flow.flow_id in ids]
        expected = dict.fromkeys(TaskStatus, 0)
        for flow in chosen:
            expected[flow.status] += 1
        assert await storage.count_flows(flow_ids=ids) == expected
        recent_orders = dict.fromkeys(TaskStatus, 0)
        for flow in chosen:
            if flow.flow_type == "Order" and flow.created_at >= 14.0:
                recent_orders[flow.status] += 1
        counted = await storage.count_flows(flow_ids=ids, flow_type="Order", created_after=14.0)
        assert counted == recent_orders
        assert await storage.count_flows(flow_ids=[]) == dict.fromkeys(TaskStatus, 0)

    async def test_many_chosen_flows_are_listed_and_counted(self, storage: ExecutionLog) -> None:
        """More ids than one SQL statement binds (SQLite: 999 before 3.32) still work."""
        stored = [
            make_flow(f"f{index:04}", created_at=float(index)) for index in range(0, 1_500, 50)
        ]
        for flow in stored:
            await storage.create_flow(flow)
        ids = [f"f{index:04}" for index in range(1_500)]
        query = FlowQuery(flow_ids=ids, limit=7, offset=3)

        assert await storage.list_flows(query) == query.page_of(stored)
        assert (await storage.count_flows(flow_ids=ids))[TaskStatus.PENDING] == len(stored)

    @pytest.mark.parametrize("flow_ids", [["ok", "bad\x00id"], "one-string"])
    async def test_chosen_flow_ids_must_be_ids(
        self, storage: ExecutionLog, flow_ids: list[str] | str
    ) -> None:
        with pytest.raises(InvalidFlowIdError, match="flow_ids"):
            await storage.list_flows(FlowQuery(flow_ids=flow_ids))
        with pytest.raises(InvalidFlowIdError, match="flow_ids"):
            await storage.count_flows(flow_ids=flow_ids)

    # -- deleting ------------------------------------------------------------------------------

    async def test_delete_flow_removes_its_records_and_signals(self, storage: ExecutionLog) -> None:
        for flow_id in ("flow-1", "flow-2"):
            await storage.create_flow(make_flow(flow_id))
            await store(storage, make_invocation(1, flow_id=flow_id))
            await storage.apply(Change(signals=(make_signal(flow_id=flow_id),)))

        assert await storage.delete_flow("flow-1") is True
        assert await storage.delete_flow("flow-1") is False

        assert await storage.get_flow("flow-1") is None
        assert await storage.load_invocations("flow-1") == []
        assert await storage.list_signals("flow-1") == []
        assert await storage.get_flow("flow-2") == make_flow("flow-2")
        assert await storage.load_invocations("flow-2") == [make_invocation(1, flow_id="flow-2")]
        assert await storage.list_signals("flow-2") == [make_signal(flow_id="flow-2")]

    async def test_a_deleted_flow_can_be_created_again(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.COMPLETE, version=5))
        await storage.delete_flow("flow-1")

        assert await storage.create_flow(make_flow()) == (make_flow(), True)
        assert await storage.get_flow("flow-1") == make_flow()

    async def test_reset_deletes_everything_and_storage_stays_usable(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())
        await store(storage, make_invocation(1))
        await storage.apply(Change(signals=(make_signal(),)))

        await storage.reset()

        assert await storage.list_flows() == []
        assert await storage.count_flows() == dict.fromkeys(TaskStatus, 0)
        assert await storage.load_invocations("flow-1") == []
        assert await storage.list_signals("flow-1") == []
        assert await storage.create_flow(make_flow()) == (make_flow(), True)
