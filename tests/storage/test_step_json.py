"""How a step's progress and earlier attempts and a worker's running steps are stored: compact,
ASCII JSON."""

from __future__ import annotations

import json

import pytest

from pyergon.core.records import Attempt, StepProgress, StoredError
from pyergon.core.workers import StepActivity
from pyergon.storage._step_json import (
    activity_from_text,
    activity_text,
    attempts_from_text,
    attempts_text,
    progress_from_text,
    progress_text,
)


@pytest.mark.parametrize(
    ("progress", "text"),
    [
        (
            StepProgress(37, 100, "loading Jan", 1.5),
            '{"done":37.0,"total":100.0,"message":"loading Jan","at":1.5}',
        ),
        (StepProgress(3), '{"done":3.0,"at":0.0}'),
        (
            StepProgress(0.5, message="naïve ✓\n"),
            '{"done":0.5,"message":"na\\u00efve \\u2713\\n","at":0.0}',
        ),
    ],
)
def test_a_report_is_a_compact_ascii_object_without_its_absent_fields(
    progress: StepProgress, text: str
) -> None:
    assert progress_text(progress) == text
    assert progress_from_text(text) == progress
    assert progress_from_text(text.encode()) == progress


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"total": 3}',
        '{"done": "many"}',
        '{"done": 1, "total": -1}',
        '{"done": 1, "colour": "red"}',
        '{"done": NaN}',
    ],
)
def test_a_report_pyergon_did_not_write_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        progress_from_text(text)


def test_running_steps_are_a_list_and_none_while_a_worker_runs_nothing() -> None:
    activity = (
        StepActivity("flow-1", "3", "load", 1_000.5, StepProgress(1, 2, "half", 1_000.75)),
        StepActivity("flöw 2", "4.1", "train", 1_000.25),
    )

    text = activity_text(activity)

    assert text is not None and text.isascii()
    assert json.loads(text)[1] == {
        "flow_id": "flöw 2",
        "position": "4.1",
        "step": "train",
        "started_at": 1_000.25,
    }
    assert activity_from_text(text) == activity
    assert activity_text(()) is None
    assert activity_from_text(None) == ()


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "[1]",
        '[{"flow_id": "f", "position": "1", "step": "s"}]',
        '[{"flow_id": "f", "position": 1, "step": "s", "started_at": 1.0}]',
        '[{"flow_id": "f", "position": "1", "step": "s", "started_at": "soon"}]',
        '[{"flow_id": "f", "position": "1", "step": "s", "started_at": Infinity}]',
        '[{"flow_id": "f", "position": "1", "step": "s", "started_at": 1, "more": 2}]',
        '[{"flow_id": "f", "position": "1", "step": "s", "started_at": 1, "progress": []}]',
    ],
)
def test_running_steps_pyergon_did_not_write_are_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        activity_from_text(text)


def test_earlier_attempts_are_a_list_without_absent_fields_and_none_while_there_are_none() -> None:
    refused = StoredError("shop.Refused", "naïve ✓", "Traceback\n", b"payload", False)
    attempts = (
        Attempt.failed(1, 1_000.0, 1_000.5, refused, "worker-a"),
        Attempt(2, 1_001.0, None, "abandoned", last_seen_at=1_001.5),
        Attempt(3, None, None, "lease lost"),
    )

    text = attempts_text(attempts)

    assert text is not None and text.isascii()
    assert json.loads(text) == [
        {
            "number": 1,
            "end": "failed",
            "started_at": 1_000.0,
            "ended_at": 1_000.5,
            "error": ["shop.Refused [non-retryable]", "naïve ✓", "Traceback\n"],
            "worker_id": "worker-a",
        },
        {"number": 2, "end": "abandoned", "started_at": 1_001.0, "last_seen_at": 1_001.5},
        {"number": 3, "end": "lease lost"},
    ]
    # The payload is not kept: the record's own error keeps the last one, for replay.
    assert attempts_from_text(text) == attempts
    assert attempts[0].error == StoredError("shop.Refused", "naïve ✓", "Traceback\n", None, False)
    assert attempts_text(()) is None
    assert attempts_from_text(None) == ()


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "[1]",
        '[{"end": "failed"}]',
        '[{"number": "1", "end": "failed"}]',
        '[{"number": 1, "end": "vanished"}]',
        '[{"number": 1, "end": "failed", "started_at": "soon"}]',
        '[{"number": 1, "end": "failed", "ended_at": NaN}]',
        '[{"number": 1, "end": "failed", "error": ["t", "m"]}]',
        '[{"number": 1, "end": "failed", "error": ["t", "m", 3]}]',
        '[{"number": 1, "end": "failed", "worker_id": 7}]',
        '[{"number": 1, "end": "failed", "colour": "red"}]',
    ],
)
def test_earlier_attempts_pyergon_did_not_write_are_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        attempts_from_text(text)
