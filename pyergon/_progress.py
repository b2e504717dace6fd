"""``pyergon.progress`` and ``pyergon.track``: a long step says how far it is.

A report is not a durable record of its own: the running attempt keeps the last one, the
worker's heartbeat carries it to storage (every quarter lease) for monitors, the timeline and
``pyergon show`` in any process, and the step's record keeps the last value when the attempt
ends. Outside a step's body (testing a step's code directly, say) a report goes nowhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from pyergon._context import current_context, current_step
from pyergon.core.records import StepProgress

__all__ = ["progress", "track"]

T = TypeVar("T")

TRACK_INTERVAL = 0.1
"""Seconds between two reports of :func:`track`: a loop of millions of cheap items stays cheap."""


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report how far the running step is; shown live and kept with the step's record.

    Works in ``async def`` and ``def`` steps alike; call it as often as is natural (each call
    replaces the last report, nothing is written per call).

    Args:
        done: How much is done, in the step's own units (rows, files, epochs).
        total: How much there is in all, if known; a bar is drawn when it is.
        message: What the step is doing now, for people (cut to 200 characters).

    Raises:
        TypeError: ``done`` or ``total`` is not a number, or ``message`` is not text.
        ValueError: A number is not finite, or ``total`` is negative.
    """
    attempt = current_step()
    if attempt is None:
        return
    context = current_context()
    at = time.time() if context is None else context.clock.now()
    try:
        attempt.progress = StepProgress(done, total, message, at)
    except (TypeError, ValueError) as error:
        raise type(error)(f"pyergon.progress() in step {attempt.name!r}: {error}") from None


def track(
    items: Iterable[T], total: float | None = None, message: str | None = None
) -> Iterator[T]:
    """Report progress through ``items`` while a loop goes over them, item by item.

    Reports at most every 0.1 s, and once at the end, so it costs next to nothing per item.

    Args:
        items: What the step loops over.
        total: How many there are; taken from ``len(items)`` when it has one.
        message: What the step is doing, for people.

    Yields:
        Each item of ``items``.
    """
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]  # any sized iterable will do
        except TypeError:
            total = None
    done = 0
    progress(0, total, message)
    next_report = time.monotonic() + TRACK_INTERVAL
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now >= next_report:
            progress(done, total, message)
            next_report = now + TRACK_INTERVAL
    progress(done, total, message)
