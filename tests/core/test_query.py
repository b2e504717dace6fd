"""FlowQuery and ClaimRequest: what a listing and a claim ask for, checked once for all."""

from __future__ import annotations

import math

import pytest

from pyergon.core import ClaimRequest, FlowCursor, FlowQuery, TaskStatus
from pyergon.errors import InvalidFlowIdError
from pyergon.testing import make_flow


def test_a_status_or_several_become_a_set() -> None:
    assert FlowQuery().statuses is None
    assert FlowQuery(status=TaskStatus.FAILED).statuses == {TaskStatus.FAILED}
    assert FlowQuery(status=["PENDING", TaskStatus.RUNNING]).statuses == {  # type: ignore[list-item]
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
    }
    assert FlowQuery(status=[]).statuses == frozenset()


@pytest.mark.parametrize(
    ("page", "message"),
    [({"limit": -1}, "limit must be >= 0"), ({"offset": -1}, "offset must be >= 0")],
)
def test_a_negative_page_is_refused_when_built_and_when_paged(
    page: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FlowQuery(**page)
    with pytest.raises(ValueError, match=message):
        FlowQuery().page(**page)


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        FlowQuery(status="NOPE")  # type: ignore[arg-type]


def test_page_keeps_the_filters_and_replaces_the_page() -> None:
    cursor = FlowCursor(5.0, "flow-5")
    query = FlowQuery(status=TaskStatus.FAILED, flow_type="Order", limit=10, offset=3)

    paged = query.page(after=cursor)

    assert (paged.statuses, paged.flow_type) == (query.statuses, query.flow_type)
    assert (paged.limit, paged.offset, paged.after) == (10, 0, cursor)
    assert query.page(limit=2).limit == 2
    assert (query.limit, query.offset, query.after) == (10, 3, None)  # unchanged


def test_chosen_ids_become_a_set_and_of_flows_replaces_them_alone() -> None:
    cursor = FlowCursor(5.0, "flow-5")
    query = FlowQuery(flow_ids=("b", "a", "b"), flow_type="Order", limit=4, offset=2, after=cursor)

    narrowed = query.of_flows(["c"])

    assert query.flow_ids == {"a", "b"}
    assert narrowed.flow_ids == {"c"}
    assert (narrowed.flow_type, narrowed.limit, narrowed.offset, narrowed.after) == (
        "Order",
        4,
        2,
        cursor,
    )
    assert [flow.flow_id for flow in query.page_of([make_flow("a"), make_flow("z")])] == []
    assert [flow.flow_id for flow in FlowQuery(flow_ids=["a"]).page_of([make_flow("a")])] == ["a"]


@pytest.mark.parametrize("flow_ids", ["one-string", ["fine", "nul\x00"], ["lone\ud800"]])
def test_chosen_ids_that_cannot_be_ids_are_refused(flow_ids: list[str] | str) -> None:
    with pytest.raises(InvalidFlowIdError, match="flow_ids"):
        FlowQuery(flow_ids=flow_ids)
    with pytest.raises(InvalidFlowIdError, match="flow_ids"):
        FlowQuery().of_flows(flow_ids)


def test_page_of_is_newest_first_filtered_after_the_cursor_then_offset_and_limit() -> None:
    flows = [
        make_flow(f"flow-{index}", created_at=float(index // 2), flow_type=("A", "B")[index % 2])
        for index in range(10)
    ]
    query = FlowQuery(flow_type="A", after=FlowCursor(4.0, "flow-8"), offset=1, limit=2)

    assert [flow.flow_id for flow in query.page_of(flows)] == ["flow-4", "flow-2"]
    assert FlowQuery(limit=0).page_of(flows) == []
    assert [flow.flow_id for flow in FlowQuery(limit=3).page_of(flows)] == [
        "flow-9",
        "flow-8",
        "flow-7",
    ]


def test_a_claim_request_takes_any_collection_of_flow_types() -> None:
    request = ClaimRequest(
        "worker-a", ["Order", "Refund", "Order"], limit=1, lease_seconds=5, now=0
    )

    assert request.flow_types == frozenset({"Order", "Refund"})
    assert ClaimRequest("w", {"Order": object}, limit=1, lease_seconds=5, now=0).flow_types == {
        "Order"
    }


def test_a_claim_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        ClaimRequest("worker-a", ["Order"], limit=0, lease_seconds=30, now=1_000.0)


@pytest.mark.parametrize("lease_seconds", [0.0, -1.0, math.inf, math.nan])
def test_a_claim_refuses_a_lease_that_is_not_a_finite_positive_time(lease_seconds: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds must be finite and > 0"):
        ClaimRequest("worker-a", ["Order"], limit=1, lease_seconds=lease_seconds, now=1_000.0)


@pytest.mark.parametrize(
    ("due_by", "wakes_by"), [(None, 1_000.0), (1_010.0, 1_010.0), (990.0, 1_000.0)]
)
def test_suspended_flows_are_due_by_due_by_but_never_before_now(
    due_by: float | None, wakes_by: float
) -> None:
    request = ClaimRequest("w", ["Order"], limit=1, lease_seconds=5, now=1_000.0, due_by=due_by)

    assert request.wakes_by == wakes_by


def test_a_keyword_that_is_not_a_filter_is_refused() -> None:
    with pytest.raises(TypeError, match="not a flow filter: colour"):
        FlowQuery(colour="red")  # type: ignore[call-arg]
