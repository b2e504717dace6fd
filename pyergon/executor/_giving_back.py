"""Flows a worker gives back unfinished: after a failure outside their code, or unreadable.

A run that fails for a reason outside the flow's code (storage trouble, a bug in pyergon) gives
the flow back to run again after a pause that doubles while the failure repeats, so its steps do
not rerun in a loop. A flow whose stored data this worker's keys refuse is given back the same
way, with the refusal shown on it, for a worker with the right key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyergon.clock import Clock
from pyergon.core.records import ScheduledFlow, StoredError
from pyergon.errors import SignatureError
from pyergon.executor._leases import LeaseWriter, release_quietly

__all__ = ["GivingBack"]

logger = logging.getLogger("pyergon.worker")

_RETRY_AFTER_FAILURE = 0.5
"""Seconds a flow whose run failed for a reason outside its code waits before it runs again;
doubled for each further failure in a row, up to ``_MAX_RETRY_AFTER_FAILURE``."""

_MAX_RETRY_AFTER_FAILURE = 60.0


class GivingBack:
    """One worker's count of runs given back in a row, by flow, and the pauses it sets.

    Args:
        worker_id: The worker's id, for messages.
        clock: The worker's clock.
        report: The worker's error report (``on_error``).
    """

    def __init__(
        self,
        worker_id: str,
        clock: Clock,
        report: Callable[[BaseException, str | None], None],
    ) -> None:
        self._worker_id = worker_id
        self._clock = clock
        self._report = report
        self._failed_runs: dict[str, int] = {}
        """Runs in a row given back unfinished, by flow id (reset by a good run)."""
        self._refusal_logged = False
        """Whether this worker has said that it leaves flows its keys refuse."""

    def next_pause(self, flow_id: str) -> tuple[int, float]:
        """Count one more run of ``flow_id`` given back unfinished; how long it waits now."""
        failures = self._failed_runs.get(flow_id, 0) + 1
        self._failed_runs[flow_id] = failures
        return failures, min(_RETRY_AFTER_FAILURE * 2 ** (failures - 1), _MAX_RETRY_AFTER_FAILURE)

    def ran_well(self, flow_id: str) -> None:
        """A run of ``flow_id`` ended in its own code: the pauses start over."""
        self._failed_runs.pop(flow_id, None)

    async def refused(
        self, flow: ScheduledFlow, writer: LeaseWriter, error: SignatureError
    ) -> None:
        """Give back a flow whose stored data this worker's keys refuse, for one with the right key.

        The flow is not failed: the data may be sound and this worker misconfigured. It waits
        a pause that grows while this worker keeps meeting it, and shows why meanwhile.
        """
        _, delay = self.next_pause(flow.flow_id)
        if not self._refusal_logged:
            self._refusal_logged = True
            logger.warning(
                "worker %s cannot read flow %r (%s); it leaves flows it cannot read for a worker "
                "with the right key and shows why on each. Check that this worker has the "
                "PYERGON_SECRET_KEY (or serializer keys) the flows were written with; further "
                "refusals are logged at debug level",
                self._worker_id,
                flow.flow_id,
                error,
            )
            self._report(error, flow.flow_id)
        else:
            logger.debug("worker %s cannot read flow %r: %s", self._worker_id, flow.flow_id, error)
        note = SignatureError(
            f"worker {self._worker_id!r} cannot read this flow: {error}. It was left for a worker "
            f"with the right key; this worker tries it again after {delay:g} s at the earliest."
        )
        wake_at = self._clock.now() + delay
        await release_quietly(writer, "refused", wake_at=wake_at, error=StoredError.describe(note))
