"""Telling whoever runs a flow that it returned results made by code that has changed since.

A durable run never redoes recorded work on its own: a recorded result stands even when the
step's code (its fingerprint, :mod:`pyergon._fingerprint`) has changed since it was made. A
run that returned such results says so at its end; a worker or a direct run logs it once per
flow type in a process, and a notebook session warns once per flow in the cell that ran it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pyergon.core.records import Invocation

__all__ = ["StaleHandler", "log_stale_once", "stale_message"]

logger = logging.getLogger("pyergon.worker")

StaleHandler = Callable[[str, object, Sequence[Invocation]], None]
"""Told at the end of a run that returned stale results: the flow id, the flow instance and
the stale records."""

_logged_types: set[str] = set()


def stale_message(flow_id: str, records: Sequence[Invocation]) -> str:
    """One line naming the stale steps of ``flow_id`` and the call that recomputes them."""
    steps = ", ".join(f"{record.name!r} (position {record.position})" for record in records)
    plural = "s" if len(records) > 1 else ""
    return (
        f"flow {flow_id!r} returned the recorded result{plural} of step{plural} {steps}, made "
        "by code that has changed since; to recompute from the first changed step: "
        f"await session.rerun({flow_id!r}) or pyergon rerun {flow_id}"
    )


def log_stale_once(flow_id: str, flow: object, records: Sequence[Invocation]) -> None:
    """Log that a run returned stale results: a warning once per flow type, then at debug."""
    flow_type = type(flow).__qualname__
    message = stale_message(flow_id, records)
    if flow_type in _logged_types:
        logger.debug("%s", message)
        return
    _logged_types.add(flow_type)
    logger.warning(
        "%s (recorded results stand; said once per flow type %s in this process)",
        message,
        flow_type,
    )
