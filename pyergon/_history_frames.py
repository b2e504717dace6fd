"""The read side's DataFrames: flows, records and signals with fixed columns and real dtypes.

UTC datetimes, timedeltas, categorical statuses, whatever the input, including none; pandas is
imported only when one is built (``pip install "pyergon[notebook]"``). A stored value is shown
by its size and format (:func:`~pyergon.serialization.payload_info`), never loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyergon._code import is_stale
from pyergon.core.records import (
    Invocation,
    ScheduledFlow,
    SignalRecord,
    StepProgress,
    StoredError,
    format_position,
)
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.errors import PyergonError
from pyergon.serialization import PayloadInfo, payload_info

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FLOW_COLUMNS",
    "INVOCATION_COLUMNS",
    "SIGNAL_COLUMNS",
    "flows_frame",
    "invocations_frame",
    "signals_frame",
]

FLOW_COLUMNS = (
    "flow_id",
    "flow_type",
    "status",
    "created_at",
    "updated_at",
    "duration",
    "attempt",
    "wake_at",
    "worker_id",
    "lease_losses",
    "last_lost_by",
    "parent_flow_id",
    "error_type",
    "error_message",
    "cancel_requested",
    "running_step",
    "stale_steps",
    "input_size",
    "result_size",
    "result_format",
)
"""Columns of :func:`flows_frame`, in order.

``input_size`` is the bytes of the flow's stored inputs, ``result_size`` of its stored result
(``<NA>`` before it has one) and ``result_format`` how that result is kept (``"pickle"``,
``"signed pickle"``, ``"json"``, ``"parquet"``, ``"npy"``): for a value kept as an artifact,
the artifact's size and format. They are read from the records, never by loading a value."""

INVOCATION_COLUMNS = (
    "flow_id",
    "position",
    "sequence",
    "sub_sequence",
    "kind",
    "name",
    "status",
    "attempts",
    "started_at",
    "completed_at",
    "duration",
    "fire_at",
    "child_flow_id",
    "error_type",
    "error_message",
    "idempotency_key",
    "output",
    "progress",
    "progress_message",
    "code_hash",
    "stale",
    "earlier_attempts",
    "attempt_errors",
    "result_size",
    "result_format",
    "result_artifact",
)
"""Columns of :func:`invocations_frame`, in order.

``result_size`` is the bytes of a record's stored value (a step's result, a signal's payload,
a child's result; ``<NA>`` without one), ``result_format`` how it is kept (``"pickle"``,
``"signed pickle"``, ``"json"``, ``"parquet"``, ``"npy"``) and ``result_artifact`` the
``sha256:...`` digest of the artifact holding it, ``<NA>`` for a value kept in the record. For
an artifact, size and format are the artifact's. None of them loads the value."""

SIGNAL_COLUMNS = ("flow_id", "name", "sent_at", "size_bytes")
"""Columns of :func:`signals_frame`, in order."""


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise PyergonError(
            'DataFrames need pandas: pip install "pyergon[notebook]" (or pip install pandas)'
        ) from error
    return pandas


def _times(pandas: Any, values: Sequence[float | None]) -> Any:
    seconds = pandas.array(values, dtype="Float64").to_numpy(dtype="float64", na_value=float("nan"))
    return pandas.to_datetime(seconds, unit="s", utc=True).as_unit("ns")


def _text(pandas: Any, values: Sequence[str | None]) -> Any:
    return pandas.array(values, dtype="string")


def _category(pandas: Any, values: Sequence[str], categories: Iterable[str]) -> Any:
    # Categories of dtype object keep status members as they are (``flows.status[0].value``);
    # pandas 3 with pyarrow would otherwise infer its ``str`` dtype and turn them into strings.
    return pandas.Categorical(values, categories=pandas.Index(list(categories), dtype=object))


def _error_columns(pandas: Any, errors: Sequence[StoredError | None]) -> dict[str, Any]:
    return {
        "error_type": _text(pandas, [error.type_name if error else None for error in errors]),
        "error_message": _text(pandas, [error.message if error else None for error in errors]),
    }


def flows_frame(
    flows: Iterable[ScheduledFlow],
    running: Mapping[str, Sequence[StepActivity]] | None = None,
    stale_steps: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Return flows as a DataFrame with the columns of :data:`FLOW_COLUMNS`.

    ``duration`` is ``updated_at - created_at`` for final flows and ``NaT`` otherwise;
    ``lease_losses`` counts the leases its workers lost while running it, ``last_lost_by``
    names the last of them.

    Args:
        flows: The flows, one row each.
        running: The steps running now by flow id, as
            :func:`~pyergon.core.workers.running_steps` returns them: ``running_step`` names
            a flow's (several joined by ", "); without it, that column is empty.
        stale_steps: How many recorded steps of each flow its code changed since (see
            :mod:`pyergon._code`), by flow id; ``<NA>`` for flows it does not hold.
    """
    pandas = _pandas()
    rows = list(flows)
    running = running or {}
    stale_steps = stale_steps or {}
    created = _times(pandas, [flow.created_at for flow in rows])
    updated = _times(pandas, [flow.updated_at for flow in rows])
    final = pandas.array([flow.status.is_final for flow in rows], dtype="boolean")
    duration = (updated - created).where(final.to_numpy(dtype=bool, na_value=False))
    types = sorted({flow.flow_type for flow in rows})
    return pandas.DataFrame(
        {
            "flow_id": _text(pandas, [flow.flow_id for flow in rows]),
            "flow_type": _category(pandas, [flow.flow_type for flow in rows], types),
            "status": _category(pandas, [flow.status.value for flow in rows], TaskStatus),
            "created_at": created,
            "updated_at": updated,
            "duration": pandas.to_timedelta(duration).as_unit("ns"),
            "attempt": pandas.array([flow.attempt for flow in rows], dtype="Int64"),
            "wake_at": _times(pandas, [flow.wake_at for flow in rows]),
            "worker_id": _text(pandas, [flow.worker_id for flow in rows]),
            "lease_losses": pandas.array([flow.lease_losses for flow in rows], dtype="Int64"),
            "last_lost_by": _text(pandas, [flow.last_lost_by for flow in rows]),
            "parent_flow_id": _text(pandas, [flow.parent_flow_id for flow in rows]),
            **_error_columns(pandas, [flow.error for flow in rows]),
            "cancel_requested": pandas.array(
                [flow.cancel_requested for flow in rows], dtype="boolean"
            ),
            "running_step": _text(
                pandas, [_step_names(running.get(flow.flow_id, ())) for flow in rows]
            ),
            "stale_steps": pandas.array(
                [stale_steps.get(flow.flow_id) for flow in rows], dtype="Int64"
            ),
            "input_size": pandas.array(
                [_size(payload_info(flow.payload)) for flow in rows], dtype="Int64"
            ),
            **_value_columns(pandas, [payload_info(flow.result) for flow in rows]),
        },
        columns=list(FLOW_COLUMNS),
    )


def _step_names(activities: Sequence[StepActivity]) -> str | None:
    return ", ".join(activity.step for activity in activities) or None


def invocations_frame(
    invocations: Iterable[Invocation], fingerprints: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Return records as a DataFrame with the columns of :data:`INVOCATION_COLUMNS`.

    ``output`` is what a step printed (``<NA>`` if nothing); ``progress`` the share done of
    its last progress report, from 0 to 1 (``NaN`` without a report or a total), and
    ``progress_message`` that report's message. ``code_hash`` is the fingerprint of the code
    that made a step's record; ``stale`` says whether that code changed since, given the
    steps' ``fingerprints`` today (:func:`pyergon._code.step_fingerprints`); ``<NA>`` where
    that is unknown. ``earlier_attempts`` counts a step's attempts kept before the one that
    ended its record (failed and retried, abandoned by a crash, cut by a lost lease; 0 for
    records made before they were kept), and ``attempt_errors`` describes each on a line of its
    own (``"1: ValueError: bad row"``, ``"2: abandoned"``; ``<NA>`` if there are none).
    """
    pandas = _pandas()
    rows = list(invocations)
    progress: list[StepProgress | None] = [record.progress for record in rows]
    started = _times(pandas, [record.started_at for record in rows])
    completed = _times(pandas, [record.completed_at for record in rows])
    names = [record.name for record in rows]
    return pandas.DataFrame(
        {
            "flow_id": _text(pandas, [record.flow_id for record in rows]),
            "position": _text(pandas, [format_position(r.sequence, r.sub_sequence) for r in rows]),
            "sequence": pandas.array([record.sequence for record in rows], dtype="Int64"),
            "sub_sequence": pandas.array([record.sub_sequence for record in rows], dtype="Int64"),
            "kind": _category(pandas, [record.kind.value for record in rows], OperationKind),
            "name": _text(pandas, names),
            "status": _category(pandas, [record.status.value for record in rows], InvocationStatus),
            "attempts": pandas.array([record.attempts for record in rows], dtype="Int64"),
            "started_at": started,
            "completed_at": completed,
            "duration": pandas.to_timedelta(completed - started).as_unit("ns"),
            "fire_at": _times(pandas, [record.fire_at for record in rows]),
            "child_flow_id": _text(pandas, [record.child_flow_id for record in rows]),
            **_error_columns(pandas, [record.error for record in rows]),
            "idempotency_key": _text(pandas, [record.idempotency_key for record in rows]),
            "output": _text(pandas, [record.output for record in rows]),
            "progress": pandas.array([_fraction(report) for report in progress], dtype="float64"),
            "progress_message": _text(pandas, [r.message if r else None for r in progress]),
            "code_hash": _text(pandas, [record.code_hash or None for record in rows]),
            "stale": pandas.array(
                [None if fingerprints is None else is_stale(r, fingerprints) for r in rows],
                dtype="boolean",
            ),
            "earlier_attempts": pandas.array(
                [len(record.earlier_attempts) for record in rows], dtype="Int64"
            ),
            "attempt_errors": _text(pandas, [_attempt_lines(record) for record in rows]),
            **_value_columns(pandas, [payload_info(record.result) for record in rows]),
        },
        columns=list(INVOCATION_COLUMNS),
    )


def _size(info: PayloadInfo | None) -> int | None:
    return None if info is None else info.size


def _value_columns(pandas: Any, infos: Sequence[PayloadInfo | None]) -> dict[str, Any]:
    """``result_size``, ``result_format`` and ``result_artifact`` of stored values, unread."""
    formats = [None if info is None else info.format for info in infos]
    digests = [None if info is None else info.artifact for info in infos]
    return {
        "result_size": pandas.array([_size(info) for info in infos], dtype="Int64"),
        "result_format": pandas.Categorical(
            formats, categories=sorted({each for each in formats if each is not None})
        ),
        "result_artifact": _text(pandas, digests),
    }


def _attempt_lines(record: Invocation) -> str | None:
    attempts = record.earlier_attempts
    return "\n".join(attempt.describe() for attempt in attempts) if attempts else None


def _fraction(progress: StepProgress | None) -> float:
    fraction = None if progress is None else progress.fraction
    return float("nan") if fraction is None else fraction


def signals_frame(signals: Iterable[SignalRecord]) -> pd.DataFrame:
    """Return signals as a DataFrame with the columns of :data:`SIGNAL_COLUMNS`."""
    pandas = _pandas()
    rows = list(signals)
    return pandas.DataFrame(
        {
            "flow_id": _text(pandas, [signal.flow_id for signal in rows]),
            "name": _text(pandas, [signal.name for signal in rows]),
            "sent_at": _times(pandas, [signal.sent_at for signal in rows]),
            "size_bytes": pandas.array(
                [_size(payload_info(signal.payload)) for signal in rows], dtype="Int64"
            ),
        },
        columns=list(SIGNAL_COLUMNS),
    )
