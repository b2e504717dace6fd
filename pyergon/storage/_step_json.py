"""How a step's progress and a worker's running steps are stored: compact JSON, on every backend.

A :class:`~pyergon.core.records.StepProgress` is an object of its fields (``total`` and
``message`` left out while ``None``); a worker's activity is a list of objects, one per running
step, or nothing at all while it runs none. The text is ASCII (other characters are escaped), so
it is stored alike wherever it goes. Readers raise ``ValueError`` for what pyergon did not
write; each backend names the record and the field in its own message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from pyergon.core.records import StepProgress
from pyergon.core.workers import StepActivity

__all__ = [
    "activity_from_text",
    "activity_text",
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
