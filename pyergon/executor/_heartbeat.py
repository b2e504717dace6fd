"""A worker's heartbeat: renews its leases and its record, off its event loop where it can.

Every :data:`BEATS_PER_LEASE`-th of a lease the heartbeat sends one beat: the leases of the
flows the worker runs, and (with a :class:`~pyergon.storage.base.WorkerRegistry`) the worker's
``last_beat``, in one round trip. With a storage that can open a second handle
(:class:`~pyergon.storage.base.ReopenableLog`) and the system clock, the beats come from a thread
of their own, with their own event loop and connection: a step that blocks the worker's loop
(a long pandas call in an ``async def`` step) does not let its leases run out while the process
lives. Otherwise they come from a task on the worker's loop.

A beat that finds a lease taken (another worker holds the flow) loses it: the run stops and
writes nothing. A beat that finds the worker's record taken by a later process with the same
id tells the worker to stop serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyergon.clock import Clock, SystemClock
from pyergon.core.workers import StepActivity, WorkerRecord
from pyergon.errors import StorageError
from pyergon.storage.base import ExecutionLog, ReopenableLog, WorkerRegistry, wait_for_event

if TYPE_CHECKING:
    from pyergon.executor._leases import Claim, LeaseClock

__all__ = ["BEATS_PER_LEASE", "Heartbeat", "second_handle"]

logger = logging.getLogger("pyergon.worker")

BEATS_PER_LEASE = 4
"""Beats per lease length: a worker whose beats stop loses its flows after this many missed."""

_JOIN_SECONDS = 10.0
"""Longest wait for the heartbeat thread to end when the worker stops."""


def second_handle(storage: ExecutionLog, clock: Clock) -> ExecutionLog | None:
    """The unconnected log the heartbeat thread beats through, if the beats can leave the loop.

    ``None`` beats on the worker's loop: storage that cannot open a second handle (in memory,
    an in-memory SQLite database), or a clock other than the system's (a test's, which the
    storage measures leases on).
    """
    if not isinstance(storage, ReopenableLog) or not isinstance(clock, SystemClock):
        return None
    try:
        return storage.reopened()
    except StorageError:
        return None


class Heartbeat:
    """Beats for one worker while it serves.

    Args:
        storage: The worker's storage.
        beat_through: A second, unconnected handle on it (see :func:`second_handle`): the
            beats then come from a thread of their own through it. ``None``: from the loop.
        worker_id: The worker's id, for messages.
        lease_seconds: The worker's lease length; a beat goes out every quarter of it.
        clock: The worker's clock (storage measures leases on its time).
        lease_clock: The clock the worker measures its leases on.
        record: The worker's record, if the storage keeps records.
        flow_types: The flow types the worker serves now (read at each beat).
        on_displaced: Called (on the worker's loop) when a later process took the worker's id.
        activity: The steps the worker runs now, stored with each beat (read from its thread).
    """

    def __init__(
        self,
        storage: ExecutionLog,
        beat_through: ExecutionLog | None,
        worker_id: str,
        *,
        lease_seconds: float,
        clock: Clock,
        lease_clock: LeaseClock,
        record: WorkerRecord | None,
        flow_types: Callable[[], list[str]],
        on_displaced: Callable[[], None],
        activity: Callable[[], tuple[StepActivity, ...]] = tuple,
    ) -> None:
        self._storage = storage
        self._beat_through = beat_through
        self._worker_id = worker_id
        self._lease_seconds = lease_seconds
        self._interval = lease_seconds / BEATS_PER_LEASE
        self._clock = clock
        self._lease_clock = lease_clock
        self.record = record
        """The worker's record, if the storage keeps records."""
        self._flow_types = flow_types
        self._on_displaced = on_displaced
        self._activity = activity
        self._claims: dict[str, Claim] = {}
        self._claims_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop_stop = asyncio.Event()
        self._failing = False
        self._displaced = False
        self.beats = 0
        """Beats sent so far that storage answered."""

    @property
    def in_thread(self) -> bool:
        """Whether the beats come from a thread of their own (off the worker's loop)."""
        return self._beat_through is not None

    # -- the leases beaten for ---------------------------------------------------------------

    def hold(self, flow_id: str, claim: Claim) -> None:
        """Renew the lease of ``claim`` from now on."""
        with self._claims_lock:
            self._claims[flow_id] = claim

    def drop(self, flow_id: str, claim: Claim) -> None:
        """Stop renewing the lease of ``claim`` (its run ended)."""
        with self._claims_lock:
            if self._claims.get(flow_id) is claim:
                del self._claims[flow_id]

    def _running(self) -> dict[str, Claim]:
        with self._claims_lock:
            return {flow_id: claim for flow_id, claim in self._claims.items() if not claim.done}

    # -- starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        """Start beating (from a thread where the storage allows it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.in_thread:
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._thread_main,
                args=(ready,),
                name=f"pyergon-heartbeat-{self._worker_id}",
                daemon=True,
            )
            self._thread.start()
            ready.wait()
        else:
            self._loop_stop = asyncio.Event()
            self._task = asyncio.create_task(
                self._beat_forever(self._storage, until=self._loop_stop),
                name=f"pyergon-beat-{self._worker_id}",
            )

    async def stop(self) -> None:
        """Stop beating; return once no beat is under way."""
        if self._task is not None:
            # A stop event rather than a cancel: a client library may swallow a cancel that
            # lands inside its own retries, and the beat under way then ends on its own.
            self._loop_stop.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        thread, self._thread = self._thread, None
        if thread is not None:
            if self._thread_loop is not None and self._thread_stop is not None:
                self._thread_loop.call_soon_threadsafe(self._thread_stop.set)
            await asyncio.to_thread(thread.join, _JOIN_SECONDS)

    def _thread_main(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            ready.set()
            storage = self._beat_through
            assert storage is not None
            try:
                await self._beat_forever(storage, connect=True, until=self._thread_stop)
            finally:
                await storage.close()

        try:
            asyncio.run(main())
        except Exception:  # a bug: the leases then run out and the runs stop; say why
            logger.exception("worker %s: the heartbeat thread failed", self._worker_id)
        finally:
            ready.set()

    # -- beating -----------------------------------------------------------------------------

    async def _beat_forever(
        self,
        storage: ExecutionLog,
        *,
        connect: bool = False,
        until: asyncio.Event,
    ) -> None:
        """Beat every interval until ``until`` is set."""
        connected = not connect
        while not until.is_set():
            try:
                if not connected:
                    await storage.connect()
                    connected = True
                await self.beat(storage)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._failed(error)
            else:
                self._recovered()
            await wait_for_event(until, self._interval)

    async def beat(self, storage: ExecutionLog) -> None:
        """Send one beat through ``storage`` and act on its answer."""
        claims = self._running()
        tokens = {flow_id: claim.writer.lease_token for flow_id, claim in claims.items()}
        sent_at = self._lease_clock.now()
        now = self._clock.now()
        registered = True
        if self.record is not None and isinstance(storage, WorkerRegistry):
            record = self.record.beating(now, self._flow_types(), self._activity())
            beat = await storage.beat(record, tokens, lease_seconds=self._lease_seconds, now=now)
            held: set[str] | frozenset[str] = beat.held
            registered = beat.registered
        elif tokens:
            held = await storage.renew_leases(tokens, lease_seconds=self._lease_seconds, now=now)
        else:
            return
        self.beats += 1
        for flow_id, claim in claims.items():
            lease = claim.writer.lease
            if flow_id in held:
                lease.renewed(sent_at)
            # A release that went through while the beat was under way also ends the lease;
            # only a lease taken while the flow still runs here is lost.
            elif claim.active:
                why = "a renewal of its lease found another worker holding it"
                lease.mark_lost(why)  # from now on, even while the loop is busy
                self._on_loop(lease.lose, why)
        if not registered and not self._displaced:
            self._displaced = True
            self._on_loop(self._on_displaced)

    def _on_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the worker's loop: at once if this is it, else as soon as it can."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def _failed(self, error: Exception) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "worker %s could not send a heartbeat (its leases run out in %g s unless one "
                "gets through): %s",
                self._worker_id,
                self._lease_seconds,
                error,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("worker %s: heartbeats get through again", self._worker_id)
