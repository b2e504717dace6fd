"""What a worker keeps up only while it serves: its presence, its step threads, its loop watch.

A :class:`~pyergon.executor.worker.Worker` begins these before it claims a flow (``start``,
``run_until_idle``) and ends them once its last run has ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyergon.executor._registration import begin_presence, end_presence
from pyergon.executor._threads import StepThreads
from pyergon.executor._watchdog import watch_loop

if TYPE_CHECKING:
    from pyergon.clock import Clock
    from pyergon.core.workers import WorkerRecord
    from pyergon.executor._heartbeat import Heartbeat
    from pyergon.executor._leases import Claim
    from pyergon.executor._watchdog import BusyWatch
    from pyergon.executor.worker import Worker
    from pyergon.storage.base import ExecutionLog

__all__ = ["Serving"]


class Serving:
    """A worker's presence, step threads and busy-loop watch, from its begin to its end.

    Attributes:
        heart: Registers the worker and renews its flows' leases; ``None`` while it is not
            serving.
        threads: The threads the worker's ``def`` steps run in; ``None`` while it is not
            serving.
        busy: Names ``async def`` steps that block the event loop; ``None`` while the worker
            is not serving or keeps no such watch.
    """

    def __init__(self) -> None:
        self.heart: Heartbeat | None = None
        self.threads: StepThreads | None = None
        self.busy: BusyWatch | None = None

    @property
    def record(self) -> WorkerRecord | None:
        """The worker's record in storage while it serves (``None`` where none is kept)."""
        return None if self.heart is None else self.heart.record

    async def begin(self, worker: Worker) -> None:
        """Register ``worker`` (taking over a dead incarnation's flows) and start the heartbeat.

        Raises:
            WorkerIdInUseError: A live process serves under the worker's id.
        """
        self.heart = await begin_presence(
            worker.storage,
            worker.worker_id,
            lambda: list(worker._registry),
            lease_seconds=worker.lease_seconds,
            clock=worker.clock,
            lease_clock=worker._leases.clock,
            on_displaced=worker._displaced,
            activity=worker.live_steps.activity,
        )
        self.threads = StepThreads(worker.max_concurrent_flows, f"pyergon-{worker.worker_id}")
        if worker.busy_loop_warning is not None:
            self.busy = watch_loop(
                worker.worker_id, worker.busy_loop_warning, worker._flow_type_of, worker.on_busy
            )

    async def end(self, storage: ExecutionLog, clock: Clock) -> None:
        """Stop the heartbeat and mark the worker's record stopped; end the step threads.

        Every flow's run has ended by now, and a run ends only once its steps' threads have
        returned: the pool is idle and its threads end at once.
        """
        threads, self.threads = self.threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        busy, self.busy = self.busy, None
        if busy is not None:
            busy.close()
        heart, self.heart = self.heart, None
        if heart is not None:
            await end_presence(storage, heart, clock)

    def flow_started(self, flow_id: str, claim: Claim) -> None:
        """A flow started running under ``claim``: renew its lease, watch the loop for it."""
        if self.heart is not None:
            self.heart.hold(flow_id, claim)
        if self.busy is not None:
            self.busy.flow_started()

    def flow_ended(self) -> None:
        """A flow's run ended (its claim may be held again already: see :meth:`drop`)."""
        if self.busy is not None:
            self.busy.flow_ended()

    def drop(self, flow_id: str, claim: Claim) -> None:
        """Stop renewing the lease of ``claim`` (its run ended)."""
        if self.heart is not None:
            self.heart.drop(flow_id, claim)
