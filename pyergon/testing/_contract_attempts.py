"""The contract for a step's earlier attempts: stored with its record, whatever their shape.

Like a step's output and progress, they are no part of the record's outcome: two runs of a step
that failed differently before they agreed are no conflict.
"""

from __future__ import annotations

import pytest

from pyergon.core.changes import Change, FlowWrite
from pyergon.core.records import (
    ATTEMPT_MESSAGE_LIMIT,
    ATTEMPT_TRACEBACK_LIMIT,
    ATTEMPTS_KEPT,
    Attempt,
    Invocation,
    StoredError,
)
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import claim, done, store
from pyergon.testing.factories import make_flow, make_invocation

__all__ = ["AttemptContract"]


def earlier_attempts() -> tuple[Attempt, ...]:
    """One attempt of each shape: failed (with a verdict, and without), abandoned, lease lost."""
    refused = StoredError("shop.Refused", "card refused: naïve ✓", "Traceback…\n", None, False)
    return (
        Attempt.failed(1, 1_000.0, 1_000.5, refused, "worker-a", retry_at=1_001.0),
        Attempt.failed(2, 1_001.0, 1_001.25, StoredError("builtins.ValueError", "")),
        Attempt(3, 1_002.0, None, "abandoned", worker_id="worker-a", last_seen_at=1_002.75),
        Attempt(4, None, None, "abandoned"),
        Attempt(5, 1_010.0, 1_011.0, "lease lost", worker_id="worker-b"),
    )


def retried(sequence: int = 1) -> Invocation:
    """A step record that is being retried after the attempts of :func:`earlier_attempts`."""
    attempts = earlier_attempts()
    return make_invocation(
        sequence,
        attempts=len(attempts) + 1,
        started_at=1_000.0,
        error=attempts[1].error,
        earlier_attempts=attempts,
    )


class AttemptContract:
    """A record's earlier attempts round trip on every path that stores or reads records."""

    @pytest.mark.parametrize("path", ["records-alone", "with-a-write"])
    async def test_a_records_earlier_attempts_round_trip(
        self, storage: ExecutionLog, path: str
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        records = (
            retried(1),  # not final yet
            done(2).replace(attempts=6, earlier_attempts=earlier_attempts()),
            done(3),  # its first attempt ended it: none kept
        )
        writes = (FlowWrite("flow-1", {"attempt": 2}, expected_version=1),)
        change = Change(records=records, writes=writes if path == "with-a-write" else ())

        applied = await storage.apply(change)

        assert applied.complete and applied.records == list(records)
        loaded = await storage.load_invocations("flow-1")
        assert loaded == list(records)
        assert [len(record.earlier_attempts) for record in loaded] == [5, 5, 0]
        assert loaded[0].earlier_attempts[0].error == StoredError(
            "shop.Refused", "card refused: naïve ✓", "Traceback…\n", None, False
        )

    async def test_a_claim_reads_the_earlier_attempts_with_the_log(
        self, storage: ExecutionLog
    ) -> None:
        await store(storage, retried())
        await storage.create_flow(make_flow())

        (run,) = await claim(storage)

        assert run.log == [retried()]

    async def test_a_record_that_is_not_final_is_overwritten_with_more_attempts(
        self, storage: ExecutionLog
    ) -> None:
        first = make_invocation(1, attempts=2, earlier_attempts=earlier_attempts()[:1])
        await store(storage, first)

        again = retried()
        await store(storage, again)
        assert await storage.load_invocations("flow-1") == [again]
        ended = again.replace(status=InvocationStatus.COMPLETE, result=b"ok", error=None)
        await store(storage, ended)

        assert await storage.load_invocations("flow-1") == [ended]

    async def test_a_final_record_with_other_earlier_attempts_is_no_conflict(
        self, storage: ExecutionLog
    ) -> None:
        theirs = done(1, b"same").replace(attempts=6, earlier_attempts=earlier_attempts())
        await store(storage, theirs)
        mine = done(1, b"same")

        applied = await store(storage, mine)

        assert (applied.records, applied.record_conflict) == ([theirs], False)
        assert await storage.load_invocations("flow-1") == [theirs]

    async def test_the_most_attempts_a_record_keeps_at_their_largest_round_trip(
        self, storage: ExecutionLog
    ) -> None:
        error = StoredError("shop.Refused", "é" * 5_000, "line\n" * 2_000)
        most = tuple(
            Attempt.failed(number, 1_000.0 + number, 1_000.5 + number, error, "worker-a")
            for number in range(1, ATTEMPTS_KEPT + 1)
        )
        record = done(1).replace(attempts=ATTEMPTS_KEPT + 1, earlier_attempts=most)

        await store(storage, record)

        assert await storage.load_invocations("flow-1") == [record]
        kept = most[-1].error
        assert kept is not None and len(kept.message) == ATTEMPT_MESSAGE_LIMIT
        assert len(kept.traceback) == ATTEMPT_TRACEBACK_LIMIT + 1
