"""The step attempts a worker runs right now, for its heartbeat and its monitor to show.

Every flow a worker runs lists its running step attempts in one shared mapping (the flows'
``FlowContext.running_steps``). Reading it is safe from the heartbeat's thread: the mapping is
copied in one call, under the GIL, and each attempt's fields are single attribute reads.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyergon._context import StepScope
from pyergon._output import tidy_output
from pyergon.core.records import format_position
from pyergon.core.workers import StepActivity

__all__ = ["LiveSteps", "live_output"]


class LiveSteps:
    """The step attempts running in one worker's flows, by flow id and position."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps: dict[tuple[str, int], StepScope] = {}
        """Filled and emptied by the runs themselves (``executor/_steps.py``)."""

    def activity(self) -> tuple[StepActivity, ...]:
        """What runs now, oldest attempt first, as the worker's heartbeat stores it."""
        running = list(self.steps.items())
        return tuple(
            StepActivity(
                flow_id=flow_id,
                position=format_position(sequence),
                step=attempt.name,
                started_at=attempt.started_at,
                progress=attempt.progress,
            )
            for (flow_id, sequence), attempt in sorted(running, key=_started)
        )

    def output(self, flow_id: str, step: str) -> str | None:
        """What the attempt running at ``step`` (position or name) of a flow printed so far.

        The text is tidied (see :func:`~pyergon._output.tidy_output`).

        Returns:
            The text, ``""`` if it printed nothing yet, ``None`` if no such step runs here.
        """
        for (running_flow, sequence), attempt in list(self.steps.items()):
            if running_flow == flow_id and step in (format_position(sequence), attempt.name):
                tail = attempt.output
                return "" if tail is None else tidy_output(tail.text())
        return None


def live_output(workers_steps: Iterable[LiveSteps], flow_id: str, step: str) -> str | None:
    """What ``step`` (position or name) of ``flow_id`` printed so far, if one of them runs it."""
    for steps in workers_steps:
        printed = steps.output(flow_id, step)
        if printed is not None:
            return printed
    return None


def _started(item: tuple[tuple[str, int], StepScope]) -> float:
    return item[1].started_at
