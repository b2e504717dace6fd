"""Workers: claim flows from the shared queue, run them under a lease, release them.

A worker runs as tasks on the event loop that starts it (a service's loop or a notebook
kernel's). It claims flows of the types it registered, renews their leases while they run and
writes their state with the lease token. A flow that waits on a timer, a signal or a child is
released (``SUSPENDED``) and holds no slot; the storage makes it runnable again when its timer is
due, its signal arrives or its child finishes. The worker sleeps until new work is notified or
the earliest timer is due; it does not poll on a fixed beat.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyergon._context import FlowContext, Position
from pyergon.clock import Clock, SystemClock
from pyergon.core.outcome import FlowOutcome, Suspended, SuspendReason
from pyergon.core.query import ClaimRequest
from pyergon.core.records import Invocation, ScheduledFlow, StoredError, text_problem
from pyergon.core.workers import StepActivity, WorkerRecord, default_worker_id
from pyergon.decorators import flow_entry, require_flow_class, require_flow_instance
from pyergon.errors import (
    ArtifactError,
    CorruptStorageError,
    NonDeterminismError,
    PyergonError,
    SignatureError,
)
from pyergon.executor._abandoned import abandoned_attempts
from pyergon.executor._child import store_child
from pyergon.executor._giving_back import GivingBack
from pyergon.executor._heartbeat import second_handle
from pyergon.executor._inputs import decode_flow
from pyergon.executor._leases import (
    DONE,
    Backoff,
    CancelFlag,
    Claim,
    LeaseKeeper,
    LeaseWriter,
    check_lease_seconds,
    release_quietly,
)
from pyergon.executor._live import LiveSteps
from pyergon.executor._registration import served_elsewhere
from pyergon.executor._runner import FlowRun, drive_flow, log_by_position, stored_outcome
from pyergon.executor._serving import Serving
from pyergon.executor._stale import StaleHandler, log_stale_once
from pyergon.executor._talk import FlowTalk, served_in_process, serving
from pyergon.executor._watchdog import BusyStep, check_busy_loop_warning
from pyergon.executor._worker_handle import WorkerHandle
from pyergon.serialization import Serializer, serialize_exception, serializer_for
from pyergon.storage._flows import HeldFlow
from pyergon.storage.base import (
    ClaimedRun,
    ExecutionLog,
    wait_for_event,
)

__all__ = ["Worker", "WorkerHandle"]

logger = logging.getLogger("pyergon.worker")

_IDLE_WAIT = 1.0
"""Longest single wait for a notification; bounds how late a stop or a lost wake-up is seen."""

_CANCEL_CHECK_INTERVAL = 0.02
"""Least seconds between two looks for cancellation requests of running flows."""

DEFAULT_LEASE_SECONDS = 2.0
"""The lease of a worker whose heartbeats come from a thread of their own (a storage that can
open a second handle, the system clock): a killed worker's flows run elsewhere about two seconds
later, and a step that blocks the loop keeps its lease while the process lives."""

LOOP_LEASE_SECONDS = 30.0
"""The lease of a worker whose heartbeats share its event loop (the in-memory storage, a test
clock): long enough that a step blocking the loop for a while does not lose it."""

_TIMER_LOOKAHEAD = 0.02
"""Seconds before a timer falls due that a worker claims its flow and reads its log, so the flow
continues at the fire time itself rather than after that work (system clock only)."""


class Worker:
    """Runs flows from the shared queue.

    A flow whose stored data this worker's serializer refuses (signed with a key it does not
    have) is not failed: it goes back to the queue, with the refusal as its ``error`` and a
    pause that grows while this worker keeps meeting it, for a worker with the right key.

    Args:
        storage: The storage shared with the scheduler and other workers.
        worker_id: A name unique among the live workers; recorded as the lease owner.
            Default: one unique to this process and worker (see
            :func:`~pyergon.core.workers.default_worker_id`). Give a fixed id to a worker
            that should take its own flows over at once when it restarts.
        enable_timers: Wake up when a suspended flow's timer is due. A worker without it still
            runs due flows it finds, but does not wait for them.
        max_concurrent_flows: Flows this worker runs at once; also the threads of the pool
            the worker runs ``def`` steps in (named ``pyergon-<worker id>``).
        lease_seconds: How long a claim lasts without renewal; a worker that dies loses its
            flows to others after at most this long. Heartbeats renew it four times per
            lease. Default: :data:`DEFAULT_LEASE_SECONDS` where the heartbeats run off the
            event loop (SQLite, Redis, PostgreSQL with the system clock), else
            :data:`LOOP_LEASE_SECONDS`. Workers' wall clocks must agree to well within the
            lease (NTP does).
        serializer: How values are stored; must match the scheduler's.
        clock: Time source for leases and timers.
        on_error: Called with every error the worker meets outside a flow's own code (storage
            failures, a flow that cannot start or no longer matches its log) and the flow id
            concerned, if any; they are logged as well. Notebook sessions keep them.
        busy_loop_warning: Seconds an ``async def`` step may block the event loop before the
            worker names it (once per flow type and step per process, on the
            ``pyergon.worker`` logger) with the fix: make it a ``def`` step. ``None``: never.
        on_busy: Told of each such warning about this worker's flows, on the event loop.
        on_stale: Told when a run returned recorded step results made by code that has
            changed since (the results stand); default: a warning on the ``pyergon.worker``
            logger, once per flow type per process.

    Raises:
        ValueError: A setting is out of range (a lease that is not finite and above zero), or
            ``worker_id`` is empty or holds a NUL or a lone surrogate.
        UnsafeSerializerError: The storage is shared and unsigned pickle was not chosen.
    """

    def __init__(
        self,
        storage: ExecutionLog,
        worker_id: str | None = None,
        *,
        enable_timers: bool = True,
        max_concurrent_flows: int = 10,
        lease_seconds: float | None = None,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        on_error: Callable[[BaseException, str | None], None] | None = None,
        busy_loop_warning: float | None = 1.0,
        on_busy: Callable[[BusyStep], None] | None = None,
        on_stale: StaleHandler | None = log_stale_once,
    ) -> None:
        if worker_id is None:
            worker_id = default_worker_id()
        elif not isinstance(worker_id, str) or not worker_id:
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        elif (problem := text_problem(worker_id)) is not None:
            raise ValueError(f"worker_id {worker_id!r} {problem}; use valid Unicode text")
        if max_concurrent_flows < 1:
            raise ValueError(f"max_concurrent_flows must be >= 1, got {max_concurrent_flows}")
        self.clock = clock or SystemClock()
        if lease_seconds is None:
            off_loop = second_handle(storage, self.clock) is not None
            lease_seconds = DEFAULT_LEASE_SECONDS if off_loop else LOOP_LEASE_SECONDS
        check_lease_seconds(lease_seconds)
        self.storage = storage
        self.worker_id = worker_id
        self.enable_timers = enable_timers
        self.max_concurrent_flows = max_concurrent_flows
        self.lease_seconds = lease_seconds
        self.serializer = serializer_for(storage, serializer)
        self._leases = LeaseKeeper(storage, worker_id, lease_seconds, self.clock)
        self._serving = Serving()
        self.live_steps = LiveSteps()
        """The step attempts this worker runs now: what they report and print so far."""
        self._lookahead = _TIMER_LOOKAHEAD if isinstance(self.clock, SystemClock) else 0.0
        self._registry: dict[str, type] = {}
        self._entries: dict[str, str] = {}
        """The name of each registered type's ``@flow`` method."""
        self._running: dict[str, Claim] = {}
        self._kick = asyncio.Event()
        self._stopping = False
        self.on_error = on_error
        self.busy_loop_warning = check_busy_loop_warning(busy_loop_warning)
        self.on_busy = on_busy
        self.on_stale = on_stale
        self._claim_backoff = Backoff(worker_id, "claiming flows", self._report)
        self._cancels_checked_at = 0.0
        self._cancel_look_owed = False
        """Storage woke the worker since its last look for cancel requests."""
        self._giving_back = GivingBack(worker_id, self.clock, self._report)
        self.flows_finished = 0
        """Flows this worker ran to a final state."""
        self.last_heartbeat = 0.0
        """When the serving loop last went round (wall-clock epoch seconds; 0.0 before)."""

    def __repr__(self) -> str:
        types = ", ".join(sorted(self._registry)) or "none"
        return f"Worker({self.worker_id!r}, running={len(self._running)}, types=[{types}])"

    @property
    def running_flow_ids(self) -> list[str]:
        """Ids of the flows this worker runs now, sorted."""
        return sorted(self._running)

    def activity(self) -> tuple[StepActivity, ...]:
        """The steps this worker runs now with their last progress, oldest first."""
        return self.live_steps.activity()

    @property
    def registered_types(self) -> list[str]:
        """Names of the flow types this worker runs."""
        return sorted(self._registry)

    def register(self, flow_class: type) -> Awaitable[None]:
        """Run flows of ``flow_class`` on this worker; registering again replaces the class.

        Takes effect at once. The return value may be awaited (``await
        worker.register(Flow)``, as older code does) but need not be.

        Raises:
            FlowDefinitionError: The class is not a ``@flow_type`` dataclass with exactly one
                ``@flow`` method.
        """
        name = require_flow_class(flow_class)
        self._registry[name] = flow_class
        self._entries[name] = flow_entry(flow_class)[0]
        self._kick.set()
        return DONE

    async def start(self) -> WorkerHandle:
        """Start serving on the running event loop and return a handle to stop it."""
        if not self._registry:
            raise PyergonError(
                f"worker {self.worker_id!r} has no flow types; call register(FlowClass) first"
            )
        self._stopping = False
        await self._serving.begin(self)
        serve = asyncio.create_task(self._serve(), name=f"pyergon-worker-{self.worker_id}")
        return WorkerHandle(self, serve)

    @property
    def record(self) -> WorkerRecord | None:
        """This worker's record in storage while it serves (``None`` where none is kept)."""
        return self._serving.record

    def _displaced(self) -> None:
        logger.error(
            "worker %s: another process registered under this worker id (this one was taken "
            "for dead: its heartbeats did not get through); this worker stops serving",
            self.worker_id,
        )
        self._stopping = True
        self._kick.set()

    async def run_until_idle(self, *, wait_for_timers: bool = True) -> int:
        """Run flows until none is runnable and none is running, then return.

        The drain mode for tests and scripts: deterministic, no background task is left.

        Args:
            wait_for_timers: Also wait for suspended flows whose timer or retry backoff is
                pending, and run them when due. Flows waiting only for a signal are left.

        Returns:
            How many flows this call ran to a final state.
        """
        finished_before = self.flows_finished
        self._stopping = False
        await self._serving.begin(self)
        try:
            with serving(self):
                while True:
                    await self._fill_slots()
                    if self._running:
                        await asyncio.wait(
                            [claim.task for claim in self._running.values()],
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        continue
                    if not wait_for_timers:
                        return self.flows_finished - finished_before
                    wake_at = await self.storage.next_wake_at(self._registry)
                    if wake_at is None:
                        return self.flows_finished - finished_before
                    await self.clock.sleep(wake_at - self.clock.now())
        finally:
            await self._serving.end(self.storage, self.clock)

    # -- serving -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        listener = asyncio.create_task(self._listen(), name=f"pyergon-listen-{self.worker_id}")
        try:
            with serving(self):
                while not self._stopping:
                    # Wall-clock time, not self.clock: it says whether this loop is alive.
                    self.last_heartbeat = time.time()
                    self._kick.clear()
                    until_check = self._until_cancel_check()
                    if until_check is not None and until_check <= 0:
                        # Two independent looks at storage: one round trip's wait, not two.
                        await asyncio.gather(self._fill_slots(), self._check_cancellations())
                    else:
                        await self._fill_slots()
                    timeout = await self._idle_timeout()
                    until_check = self._until_cancel_check()
                    if self._cancel_look_owed and until_check is not None:
                        # Woken by storage since the last look, while flows run: the wake-up may be
                        # a cancel request, so look as soon as the interval allows.
                        timeout = min(timeout, max(until_check, 0.0))
                    if self._stopping:
                        break
                    # Work that is due already, or a kick meanwhile: claim again after one pass of
                    # the loop (a timed wait would cost several while claimed flows hold it).
                    if timeout <= 0 or self._kick.is_set():
                        await asyncio.sleep(0)
                        continue
                    await wait_for_event(self._kick, timeout)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            if not self._running:  # else the heartbeat goes on while they finish (_shutdown)
                await self._serving.end(self.storage, self.clock)

    async def _listen(self) -> None:
        """Turn storage notifications into kicks of the serving loop."""
        backoff = Backoff(self.worker_id, "waiting for work", self._report)
        task = asyncio.current_task()
        while True:
            try:
                woken = await self.storage.wait_for_work(_IDLE_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await backoff.failed(error)
                continue
            if task is not None and task.cancelling():
                # A backend's wait swallowed the cancel (asyncio.wait_for on Python 3.11 can):
                # end anyway, or the serving loop waits for this task forever.
                raise asyncio.CancelledError
            backoff.succeeded()
            if woken:
                self._cancel_look_owed = True
                self._kick.set()

    async def _idle_timeout(self) -> float:
        if len(self._running) >= self.max_concurrent_flows or not self.enable_timers:
            return _IDLE_WAIT
        try:
            # Only this worker's types: a due flow no worker here can take must not wake it.
            wake_at = await self.storage.next_wake_at(self._registry)
        except Exception:
            return _IDLE_WAIT  # the claim loop reports storage trouble
        if wake_at is None:
            return _IDLE_WAIT
        return min(max(wake_at - self._lookahead - self.clock.now(), 0.0), _IDLE_WAIT)

    async def _fill_slots(self) -> None:
        """Claim flows for the free slots, as many per storage call as there are free slots."""
        backoff = self._claim_backoff
        while not self._stopping and len(self._running) < self.max_concurrent_flows:
            free = self.max_concurrent_flows - len(self._running)
            try:
                sent_at, flows = await self._claim(free)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await backoff.failed(error)
                if self._stopping:
                    return
                continue
            backoff.succeeded()
            for claimed in flows:
                self._start(claimed, sent_at)
            if len(flows) < free:
                return  # nothing else is runnable now

    async def _claim(self, limit: int) -> tuple[float, list[ClaimedRun]]:
        """Claim up to ``limit`` flows; return when the claim was sent (lease clock) and them."""
        # The lease clock first: storage's lease runs from ``now``, so the run's own deadline
        # must not start after it.
        sent_at = self._leases.clock.now()
        now = self.clock.now()
        due_by = now + self._lookahead if self._lookahead and self.enable_timers else None
        request = ClaimRequest(
            self.worker_id,
            self._registry,
            limit=limit,
            lease_seconds=self.lease_seconds,
            now=now,
            due_by=due_by,
        )
        return sent_at, await self.storage.claim(request)

    def _start(self, claimed: ClaimedRun, sent_at: float) -> None:
        """Run a flow this worker has just claimed, in a task of its own, under its lease."""
        flow = claimed.flow
        lease = self._leases.start(sent_at, flow)
        if lease is None:
            return  # answered too late: another worker may hold it already
        writer = LeaseWriter(HeldFlow(self.storage, flow, lease.lease_token), lease)
        cancel = CancelFlag(flow.cancel_requested)
        talk = FlowTalk(self.worker_id, flow.flow_id, flow.flow_type)
        task = asyncio.create_task(
            self._leases.run(
                talk, self._run_claimed(flow, claimed.log, writer, cancel, claimed.damage, talk)
            ),
            name=f"pyergon-flow-{flow.flow_id}",
        )
        lease.watch(task.cancel)  # a run whose lease runs out stops at its next await
        claim = Claim(writer, task, cancel)
        self._running[flow.flow_id] = claim
        self._serving.flow_started(flow.flow_id, claim)
        task.add_done_callback(functools.partial(self._finished, flow.flow_id))

    def _finished(self, flow_id: str, task: asyncio.Task[None]) -> None:
        self._serving.flow_ended()
        # This worker may already hold the flow again: a claim that was in flight when the
        # task released it can take it before this callback runs. Keep that newer claim.
        claim = self._running.get(flow_id)
        if claim is not None and claim.task is task:
            del self._running[flow_id]
            claim.writer.lease.close()
            self._serving.drop(flow_id, claim)
        self._kick.set()

    def _flow_type_of(self, flow_id: str) -> str | None:
        """The type of a flow this worker runs now (read by the watchdog thread too)."""
        claim = self._running.get(flow_id)
        return None if claim is None else claim.writer.held.flow.flow_type

    def _report(self, error: BaseException, flow_id: str | None) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(error, flow_id)
        except Exception:  # a broken callback must not stop the worker
            logger.exception("worker %s: on_error callback failed", self.worker_id)

    def _until_cancel_check(self) -> float | None:
        """Seconds until the next look for cancellation requests may happen (``<= 0``: now).

        ``None`` while no flow runs here: there is nothing to look for.
        """
        if not self._running:
            return None
        since = asyncio.get_running_loop().time() - self._cancels_checked_at
        return _CANCEL_CHECK_INTERVAL - since

    async def _check_cancellations(self) -> None:
        """Tell running flows whose cancellation was requested; they stop at a step boundary."""
        self._cancels_checked_at = asyncio.get_running_loop().time()
        self._cancel_look_owed = False
        try:
            requested = await self.storage.cancel_requests(list(self._running))
        except Exception:
            return  # the claim loop reports storage trouble
        for flow_id in requested:
            claim = self._running.get(flow_id)
            if claim is not None:
                claim.cancel.requested_flag = True

    async def _run_claimed(
        self,
        flow: ScheduledFlow,
        records: list[Invocation] | None,
        writer: LeaseWriter,
        cancel: CancelFlag,
        damage: CorruptStorageError | None,
        talk: FlowTalk,
    ) -> None:
        try:
            if damage is not None:
                raise damage  # the flow cannot run as stored; it fails alone
            cls = self._registry[flow.flow_type]
            instance: Any = decode_flow(self.serializer, cls, flow.payload)
            method_name = self._entries[flow.flow_type]
        except SignatureError as error:
            await self._giving_back.refused(flow, writer, error)
            return
        except ArtifactError as error:  # its inputs are out of reach here, maybe for a while
            await self._give_back(flow, writer, talk, error)
            return
        except Exception as error:
            logger.error("worker %s: %s cannot be started: %s", self.worker_id, talk.flow, error)
            self._report(error, flow.flow_id)
            await writer.fail(StoredError.describe(error), flow.attempt)
            self.flows_finished += 1
            return
        try:
            await self._wait_for_timer(flow)
            abandoned = None
            if flow.last_lost_by is not None:  # a run stopped mid-step, maybe: find its steps
                abandoned = await abandoned_attempts(self.storage, flow, time.time())
            outcome = await drive_flow(
                FlowRun(
                    flow=instance,
                    flow_id=flow.flow_id,
                    storage=self.storage,
                    serializer=self.serializer,
                    clock=self.clock,
                    entry=lambda running: getattr(running, method_name)(),
                    run_child=self._schedule_child,
                    writer=writer,
                    attempt=flow.attempt,
                    log=None if records is None else log_by_position(records),
                    cancellation=cancel,
                    lease=writer.lease,
                    on_attempt_failed=talk.attempt_failed,
                    on_step_retry=talk.step_retry,
                    thread_pool=self._serving.threads,
                    running_steps=self.live_steps.steps,
                    on_stale=self.on_stale,
                    worker_id=self.worker_id,
                    abandoned=abandoned,
                )
            )
        except asyncio.CancelledError:
            writer.lease.check()  # cancelled because the lease ran out: write nothing
            await release_quietly(writer, "cancelled")
            raise
        except NonDeterminismError as error:
            # The code no longer matches the log; running it again would fail the same way.
            logger.error(
                "worker %s: %s no longer matches its log: %s", self.worker_id, talk.flow, error
            )
            self._report(error, flow.flow_id)
            stored_error = StoredError.describe(error, serialize_exception(self.serializer, error))
            await writer.fail(stored_error, flow.attempt)
            self.flows_finished += 1
            return
        except SignatureError as error:
            await self._giving_back.refused(flow, writer, error)
            return
        except Exception as error:
            await self._give_back(flow, writer, talk, error)
            return
        self._giving_back.ran_well(flow.flow_id)
        talk.outcome(outcome)
        if not isinstance(outcome, Suspended):
            self.flows_finished += 1

    async def _give_back(
        self, flow: ScheduledFlow, writer: LeaseWriter, talk: FlowTalk, error: Exception
    ) -> None:
        """Give the flow back after storage trouble or a bug in pyergon, to run again later.

        After a pause that grows while the failure repeats, so its steps do not rerun in a loop.
        """
        failures, delay = self._giving_back.next_pause(flow.flow_id)
        logger.error(
            "worker %s failed running %s (%d in a row; next try in %.1f s): %r",
            self.worker_id,
            talk.flow,
            failures,
            delay,
            error,
        )
        self._report(error, flow.flow_id)
        # A large value out of reach shows on the flow meanwhile (flows(), show), as a refused
        # key does: the flow is not failed, and it may wait long.
        note = StoredError.describe(error) if isinstance(error, ArtifactError) else None
        await release_quietly(writer, "failed", wake_at=self.clock.now() + delay, error=note)

    async def _wait_for_timer(self, flow: ScheduledFlow) -> None:
        """Wait until the timer of a flow claimed shortly before it is due fires."""
        wake_at = flow.wake_at
        if wake_at is not None and 0 < wake_at - self.clock.now() <= self._lookahead:
            await self.clock.sleep(wake_at - self.clock.now())

    async def _schedule_child(
        self, child: object, child_id: str, parent: FlowContext, position: Position
    ) -> FlowOutcome[Any]:
        type_name = require_flow_instance(child)
        flow_entry(type(child))
        stored, created = await store_child(
            self.storage, self.serializer, self.clock, child, type_name, child_id, parent, position
        )
        if (
            created
            and type_name not in self._registry
            and not served_in_process(type_name)
            and not await served_elsewhere(self.storage, type_name, self.clock)
        ):
            claim = self._running.get(parent.flow_id)
            parent_type = "?" if claim is None else claim.writer.held.flow.flow_type
            FlowTalk(self.worker_id, parent.flow_id, parent_type).child_not_served(
                child_id, type_name
            )
        if stored.status.is_final:
            return stored_outcome(stored, self.serializer)
        return Suspended(child_id, SuspendReason.CHILD, (child_id,))

    async def _shutdown(self, serve: asyncio.Task[None], deadline: float) -> None:
        self._stopping = True
        self._kick.set()
        await asyncio.gather(serve, return_exceptions=True)
        running = [claim.task for claim in self._running.values()]
        if running:
            _done, late = await asyncio.wait(running, timeout=deadline)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        await self._serving.end(self.storage, self.clock)
