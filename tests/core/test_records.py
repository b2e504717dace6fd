"""A step's progress report and captured text, as records keep them."""

from __future__ import annotations

from fractions import Fraction

import pytest

from pyergon.core.records import (
    ATTEMPT_MESSAGE_LIMIT,
    ATTEMPT_TRACEBACK_LIMIT,
    ATTEMPTS_KEPT,
    PROGRESS_MESSAGE_LIMIT,
    Attempt,
    Invocation,
    ScheduledFlow,
    StepProgress,
    StoredError,
    add_attempt,
    storable_text,
    text_problem,
)
from pyergon.core.status import TaskStatus
from pyergon.errors import StepFailedError
from pyergon.testing import make_invocation


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain ✓ 😀\n", "plain ✓ 😀\n"),
        ("a\x00b", "a\ufffdb"),
        ("bytes \udcff\udcfe that were not UTF-8", "bytes \ufffd\ufffd that were not UTF-8"),
        ("\ud83d alone", "\ufffd alone"),
        ("", ""),
    ],
)
def test_storable_text_replaces_what_a_backend_cannot_store(text: str, stored: str) -> None:
    assert storable_text(text) == stored
    assert text_problem(storable_text(text)) is None


class RowError(Exception):
    """An error raised with text that is not storable as it is."""


@pytest.mark.parametrize(
    "error",
    [
        RowError("row\x00 7 \udc80"),
        StepFailedError("tests.RowError", "row\x00 7 \udc80", "RowError: row\x00 7 \udc80\n"),
    ],
    ids=["raised", "passed-up"],
)
def test_a_stored_error_of_unstorable_text_keeps_it_readable(error: Exception) -> None:
    stored = StoredError.describe(error, b"\x00payload")

    assert stored.message == "row\ufffd 7 \ufffd"
    assert "RowError: row\ufffd 7 \ufffd\n" in stored.traceback
    assert stored.payload == b"\x00payload"
    failed = Attempt.failed(1, 1.0, 2.0, stored)
    assert failed.describe() == "attempt 1 failed RowError: row\ufffd 7 \ufffd"
    assert StoredError("x.E\x00", "\ud800", "\x00") == StoredError("x.E\ufffd", "\ufffd", "\ufffd")


def test_a_progress_report_keeps_numbers_as_floats() -> None:
    progress = StepProgress(37, 100, "loading Jan", 1_700_000_000)

    assert progress == StepProgress(37.0, 100.0, "loading Jan", 1_700_000_000.0)
    assert [type(value) for value in (progress.done, progress.total, progress.at)] == [float] * 3


def test_numbers_of_other_libraries_are_taken() -> None:
    numpy = pytest.importorskip("numpy")

    progress = StepProgress(numpy.int64(3), numpy.float32(4.0), at=Fraction(1, 2))

    assert progress == StepProgress(3.0, 4.0, at=0.5)


@pytest.mark.parametrize(
    ("progress", "described"),
    [
        (StepProgress(37, 100, "loading Jan"), "37/100 · loading Jan"),
        (StepProgress(37, message="loading Jan"), "37 · loading Jan"),
        (StepProgress(37), "37"),
        (StepProgress(2.5, 10, ""), "2.5/10"),
        (StepProgress(1 / 3, 1), "0.33/1"),
        (StepProgress(1_234_567.891, 2e6), "1234567.89/2000000"),
    ],
)
def test_a_report_describes_itself_in_a_short_line(progress: StepProgress, described: str) -> None:
    assert progress.describe() == described


@pytest.mark.parametrize(
    ("done", "total", "fraction"),
    [(37, None, None), (37, 100, 0.37), (0, 0, 1.0), (150, 100, 1.0), (-5, 100, 0.0)],
)
def test_the_fraction_done_is_between_0_and_1_and_needs_a_total(
    done: float, total: float | None, fraction: float | None
) -> None:
    assert StepProgress(done, total).fraction == fraction


def test_a_long_message_is_cut_and_made_storable() -> None:
    long = StepProgress(1, message="é" * (PROGRESS_MESSAGE_LIMIT + 50))
    assert long.message == "é" * PROGRESS_MESSAGE_LIMIT

    assert StepProgress(1, message="a\x00b\udcff").message == "a\ufffdb\ufffd"


@pytest.mark.parametrize(
    ("fields", "error", "names"),
    [
        ({"done": "3"}, TypeError, "done must be a number, got str '3'"),
        ({"done": True}, TypeError, "done must be a number, got bool"),
        ({"done": None}, TypeError, "done must be a number"),
        ({"done": float("nan")}, ValueError, "done must be a finite number, got nan"),
        ({"done": 1, "total": float("inf")}, ValueError, "total must be a finite number"),
        ({"done": 1, "total": -1}, ValueError, "total must be 0 or more, got -1"),
        ({"done": 1, "message": 3}, TypeError, "message must be text, got int"),
        ({"done": 1, "at": None}, TypeError, "at must be a number"),
    ],
)
def test_a_report_that_is_not_one_is_refused_naming_the_field(
    fields: dict[str, object], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=f"^step progress: {names}"):
        StepProgress(**fields)  # type: ignore[arg-type]


def test_a_record_has_no_output_and_no_progress_until_given() -> None:
    record = make_invocation()
    assert (record.output, record.progress) == (None, None)

    reported = record.replace(output="", progress=StepProgress(1))

    assert isinstance(reported, Invocation)
    assert (reported.output, reported.progress) == ("", StepProgress(1))
    assert reported.replace(output=None) == record.replace(progress=StepProgress(1))


def test_a_failed_attempt_keeps_its_error_small_without_its_payload() -> None:
    error = StoredError(
        "shop.Refused", "m" * 5_000, "start\n" + "x" * 10_000 + "\nraise Refused", b"pickled", True
    )

    attempt = Attempt.failed(2, 1_000.0, 1_001.0, error, "worker-a")

    kept = attempt.error
    assert kept is not None and kept.payload is None
    assert (kept.type_name, kept.retryable) == ("shop.Refused", True)
    assert kept.message == "m" * ATTEMPT_MESSAGE_LIMIT
    # The end of the traceback, where the raising line is, is what is kept.
    assert kept.traceback.endswith("\nraise Refused")
    assert len(kept.traceback) == ATTEMPT_TRACEBACK_LIMIT + 1 and kept.traceback[0] == "…"
    assert (attempt.number, attempt.end, attempt.worker_id) == (2, "failed", "worker-a")
    assert attempt.describe(limit=10) == "attempt 2 failed Refused: mmmmmmmmm…"
    assert Attempt(3, None, None, "lease lost").describe() == "attempt 3 lease lost"
    small = StoredError("builtins.ValueError", "bad", "Traceback\n")
    assert Attempt.failed(1, 1.0, 2.0, small).error == small


def test_a_record_keeps_its_first_and_latest_attempts_past_the_bound() -> None:
    attempts: tuple[Attempt, ...] = ()
    for number in range(1, 51):
        attempts = add_attempt(attempts, Attempt(number, float(number), None, "abandoned"))

    numbers = [attempt.number for attempt in attempts]
    assert len(numbers) == ATTEMPTS_KEPT
    assert numbers[:5] == [1, 2, 3, 4, 5]
    assert numbers[5:] == list(range(36, 51))
    assert make_invocation().earlier_attempts == ()


def test_a_flow_shows_itself_in_one_short_line_without_its_payload() -> None:
    flow = ScheduledFlow("f1", "Order", b"x" * 5000, TaskStatus.FAILED, 1.0, 2.0, attempt=2)
    flow = flow.replace(error=StoredError("shop.Refused", "card declined"), lease_owner=None)
    assert repr(flow) == (
        "ScheduledFlow('f1', Order, FAILED, attempt 2, Refused: card declined, inputs 5000 B)"
    )
