"""How a step's progress and earlier attempts and a worker's running steps are stored: JSON.

A :class:`~pyergon.core.records.StepProgress` is an object of its fields (``total`` and
``message`` left out while ``None``); a record's earlier attempts a list of objects (fields
left out while ``None``, an error as ``[stored type, message, traceback]``), or nothing at all
while there are none; a worker's activity is a list of objects, one per running step, or
nothing at all while it runs none. The text is ASCII (other characters are escaped), so
it is stored alike wherever it goes. Readers raise ``ValueError`` for what pyergon did not
write; each backend names the record and the field in its own message. Compact, and alike on
every backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, get_args

from pyergon.core.records import Attempt, AttemptEnd, StepProgress, StoredError
from pyergon.core.workers import StepActivity

__all__ = [
    "activity_from_text",
    "activity_text",
    "attempts_fields",
    "attempts_from_fields",
    "attempts_from_text",
    "attempts_text",
    "progress_fields",
    "progress_from_fields",
    "progress_from_text",
    "progress_text",
]

_JSON = json.JSONEncoder(separators=(",", ":"))
"""Made once (``json.dumps`` with options makes an encoder per call); ``ensure_ascii`` (the
default) keeps lone surrogates and NUL characters out of the stored text."""

_PROGRESS_FIELDS = frozenset(StepProgress.__dataclass_fields__)
_ACTIVITY_FIELDS = frozenset(StepActivity.__dataclass_fields__)


def progress_fields(progress: StepProgress) -> dict[str, object]:
    """The JSON object that stores ``progress``."""
    fields: dict[str, object] = {"done": progress.done}
    if progress.total is not None:
        fields["total"] = progress.total
    if progress.message is not None:
        fields["message"] = progress.message
    fields["at"] = progress.at
    return fields


def progress_from_fields(fields: object) -> StepProgress:
    """Rebuild a progress report from its JSON object.

    Raises:
        ValueError: ``fields`` is not an object of a report's fields with values it can hold.
    """
    if type(fields) is not dict or "done" not in fields or not fields.keys() <= _PROGRESS_FIELDS:
        raise ValueError(f"not a progress report: {fields!r:.80}")
    try:
        return StepProgress(**fields)
    except TypeError as error:
        raise ValueError(str(error)) from None


def progress_text(progress: StepProgress) -> str:
    """``progress`` as the text storage keeps."""
    return _JSON.encode(progress_fields(progress))


def progress_from_text(text: str | bytes) -> StepProgress:
    """Rebuild a progress report from its stored text.

    Raises:
        ValueError: The text is not a report pyergon wrote.
    """
    return progress_from_fields(json.loads(text))  # a JSONDecodeError is a ValueError


_ATTEMPT_ENDS: frozenset[object] = frozenset(get_args(AttemptEnd))
_ATTEMPT_TIMES = ("started_at", "ended_at", "last_seen_at", "retry_at")
_ATTEMPT_KEYS = frozenset({"number", "end", "error", "worker_id", *_ATTEMPT_TIMES})


def attempts_fields(attempts: Iterable[Attempt]) -> list[dict[str, object]]:
    """The JSON list that stores a record's earlier attempts."""
    stored = []
    for attempt in attempts:
        fields: dict[str, object] = {"number": attempt.number, "end": attempt.end}
        for name in _ATTEMPT_TIMES:
            value = getattr(attempt, name)
            if value is not None:
                fields[name] = value
        error = attempt.error
        if error is not None:
            fields["error"] = [error.stored_type, error.message, error.traceback]
        if attempt.worker_id is not None:
            fields["worker_id"] = attempt.worker_id
        stored.append(fields)
    return stored


def attempts_from_fields(stored: object) -> tuple[Attempt, ...]:
    """Rebuild a record's earlier attempts from their JSON list.

    Raises:
        ValueError: ``stored`` is not a list of attempts pyergon wrote.
    """
    if type(stored) is not list:
        raise ValueError(f"not a list of attempts: {stored!r:.80}")
    return tuple(_attempt(fields) for fields in stored)


def _attempt(fields: object) -> Attempt:
    if (
        type(fields) is not dict
        or not fields.keys() <= _ATTEMPT_KEYS
        or type(fields.get("number")) is not int
        or fields.get("end") not in _ATTEMPT_ENDS
        or not all(_time(fields.get(name)) for name in _ATTEMPT_TIMES)
        or type(fields.get("worker_id", "")) is not str
    ):
        raise ValueError(f"not an attempt: {fields!r:.80}")
    error = fields.get("error")
    if error is not None:
        if type(error) is not list or len(error) != 3 or any(type(p) is not str for p in error):
            raise ValueError(f"not an attempt's error: {error!r:.80}")
        error = StoredError.from_stored(error[0], error[1], error[2], None)
    return Attempt(
        fields["number"],
        fields.get("started_at"),
        fields.get("ended_at"),
        fields["end"],
        error,
        fields.get("worker_id"),
        fields.get("last_seen_at"),
        fields.get("retry_at"),
    )


def _time(value: object) -> bool:
    """Whether ``value`` is a stored time or none."""
    return value is None or ((type(value) is float or type(value) is int) and math.isfinite(value))


def attempts_text(attempts: tuple[Attempt, ...]) -> str | None:
    """A record's earlier attempts as the text storage keeps; ``None`` while there are none."""
    return _JSON.encode(attempts_fields(attempts)) if attempts else None


def attempts_from_text(text: str | bytes | None) -> tuple[Attempt, ...]:
    """Rebuild a record's earlier attempts from their stored text (``None``: there are none).

    Raises:
        ValueError: The text is not a list of attempts pyergon wrote.
    """
    return () if text is None else attempts_from_fields(json.loads(text))


def activity_text(activity: Iterable[StepActivity]) -> str | None:
    """A worker's running steps as the text storage keeps; ``None`` while it runs none."""
    steps: list[dict[str, Any]] = []
    for step in activity:
        fields: dict[str, Any] = {
            "flow_id": step.flow_id,
            "position": step.position,
            "step": step.step,
            "started_at": step.started_at,
        }
        if step.progress is not None:
            fields["progress"] = progress_fields(step.progress)
        steps.append(fields)
    return _JSON.encode(steps) if steps else None


def activity_from_text(text: str | bytes | None) -> tuple[StepActivity, ...]:
    """Rebuild a worker's running steps from their stored text (``None``: it runs none).

    Raises:
        ValueError: The text is not a list of running steps pyergon wrote.
    """
    if text is None:
        return ()
    steps = json.loads(text)
    if type(steps) is not list:
        raise ValueError(f"not a list of running steps: {steps!r:.80}")
    return tuple(_step(fields) for fields in steps)


def _step(fields: object) -> StepActivity:
    if (
        type(fields) is not dict
        or not _ACTIVITY_FIELDS - {"progress"} <= fields.keys() <= _ACTIVITY_FIELDS
        or not all(type(fields[name]) is str for name in ("flow_id", "position", "step"))
        or type(fields["started_at"]) not in (int, float)
        or not math.isfinite(fields["started_at"])
    ):
        raise ValueError(f"not a running step: {fields!r:.80}")
    progress = fields.get("progress")
    return StepActivity(
        fields["flow_id"],
        fields["position"],
        fields["step"],
        float(fields["started_at"]),
        None if progress is None else progress_from_fields(progress),
    )
