"""The value types of a change: how a write leaves a flow, what a change weighs, what conflicts."""

from __future__ import annotations

import pytest

from pyergon.core.changes import ABSENT, Applied, Change, FlowWrite, stored_as_given
from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.testing import make_flow, make_invocation, make_signal


def test_absent_is_no_version_a_flow_can_have() -> None:
    assert ABSENT == 0
    assert make_flow().version == 1


def test_a_write_applies_its_changes_and_moves_the_version() -> None:
    write = FlowWrite("flow-1", {"status": TaskStatus.RUNNING, "attempt": 2})

    assert write.applied_to(make_flow(version=4)) == make_flow(
        status=TaskStatus.RUNNING, attempt=2, version=5
    )


def test_an_empty_write_moves_only_the_version() -> None:
    write = FlowWrite("flow-1")

    assert (dict(write.changes), write.expected_version, write.only_if_status) == ({}, None, None)
    assert write.applied_to(make_flow()) == make_flow(version=2)


@pytest.mark.parametrize(
    ("status", "applies"),
    [(TaskStatus.SUSPENDED, True), (TaskStatus.PENDING, True), (TaskStatus.RUNNING, False)],
)
def test_a_write_for_some_statuses_otherwise_moves_only_the_version(
    status: TaskStatus, applies: bool
) -> None:
    write = FlowWrite(
        "flow-1",
        {"attempt": 9},
        only_if_status=frozenset((TaskStatus.SUSPENDED, TaskStatus.PENDING)),
    )
    flow = make_flow(status=status, version=3)

    expected = flow.replace(attempt=9, version=4) if applies else flow.replace(version=4)
    assert write.applied_to(flow) == expected


def test_payload_size_counts_results_errors_signals_and_written_results() -> None:
    change = Change(
        records=(
            make_invocation(1, result=b"12345"),
            make_invocation(2, error=StoredError("x.E", "m", "tb", b"123")),
            make_invocation(3),
        ),
        signals=(make_signal(payload=b"1234567"),),
        writes=(
            FlowWrite("flow-1", {"result": b"12"}),
            FlowWrite("flow-2", {"result": None, "status": TaskStatus.COMPLETE}),
        ),
    )

    assert change.payload_size == 5 + 3 + 7 + 2
    assert Change().payload_size == 0


@pytest.mark.parametrize(
    ("applied", "complete"),
    [
        (Applied(), True),
        (Applied(signals_stored=2), True),
        (Applied(moved="flow-1"), False),
        (Applied(record_conflict=True), False),
    ],
)
def test_applied_is_complete_without_a_moved_flow_or_a_conflict(
    applied: Applied, complete: bool
) -> None:
    assert applied.complete is complete


def test_a_final_record_stored_as_given_is_no_conflict() -> None:
    given = make_invocation(status=InvocationStatus.COMPLETE, result=b"r", attempts=1)

    assert stored_as_given(given, given)
    assert stored_as_given(given, given.replace(attempts=3, completed_at=5.0, started_at=1.0))
    assert stored_as_given(given.replace(code_hash="new code"), given.replace(code_hash="old"))
    assert not stored_as_given(given, given.replace(result=b"other"))
    assert not stored_as_given(given, given.replace(status=InvocationStatus.FAILED))
    assert not stored_as_given(given, given.replace(error=StoredError("x.E", "m")))
    assert not stored_as_given(given, given.replace(fire_at=5.0))
