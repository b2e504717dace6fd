"""Where a retried step's last attempt starts in the timeline: when its backoff ended."""

from __future__ import annotations

from pyergon._timeline_layout import attempt_segments
from pyergon.core.records import Attempt, StoredError
from pyergon.core.status import InvocationStatus
from pyergon.testing import make_invocation

ERROR = StoredError("builtins.ValueError", "bad row")


def test_the_attempt_after_a_backoff_starts_when_the_retry_was_due() -> None:
    failed = Attempt.failed(1, 1_000.0, 1_001.0, ERROR, retry_at=1_005.0)
    record = make_invocation(
        1,
        status=InvocationStatus.COMPLETE,
        attempts=2,
        started_at=1_000.0,
        completed_at=1_006.0,
        earlier_attempts=(failed,),
    )

    first, current = attempt_segments(record, now=1_010.0)

    assert (first.start, first.end) == (1_000.0, 1_001.0)
    assert (current.start, current.end) == (1_005.0, 1_006.0)  # not 1_001.0: the backoff


def test_an_attempt_kept_without_its_retry_time_starts_the_next_at_its_end() -> None:
    failed = Attempt.failed(1, 1_000.0, 1_001.0, ERROR)
    record = make_invocation(
        1,
        status=InvocationStatus.COMPLETE,
        attempts=2,
        started_at=1_000.0,
        completed_at=1_006.0,
        earlier_attempts=(failed,),
    )

    assert attempt_segments(record, now=1_010.0)[-1].start == 1_001.0
