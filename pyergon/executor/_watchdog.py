"""The busy-loop watchdog: names an ``async def`` step that blocks its worker's event loop.

A step that computes for seconds inside ``async def`` (a big pandas call, a pure-Python loop)
freezes everything on its loop: other flows, a notebook's cells, the monitor. One watchdog
thread per event loop, shared by the workers serving there, posts a no-op callback to the loop
every :data:`TICK_SECONDS` while any of them runs a flow, and notices when the loop has not
run it within the threshold. It then looks at the loop thread's stack for the step body that
runs (no bookkeeping per step: the async-step path stays as fast as it was) and, once the loop
is free again, says so on the loop: once per flow type and step per process, on the
``pyergon.worker`` logger and to the worker's ``on_busy`` hook.
"""

from __future__ import annotations

import asyncio
import dis
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from pyergon.executor import _steps
from pyergon.executor._offload import run_in_thread
from pyergon.executor._process import run_in_process

__all__ = ["TICK_SECONDS", "BusyStep", "BusyWatch", "check_busy_loop_warning", "watch_loop"]

logger = logging.getLogger("pyergon.worker")

TICK_SECONDS = 0.25
"""How often the watchdog asks the loop to run a no-op while flows run."""

_ATTEMPT_CODE = _steps.attempt_until_final.__code__
_BODY_LINES = frozenset(
    instruction.positions.lineno
    for instruction in dis.get_instructions(_ATTEMPT_CODE)
    if instruction.argval == "body" and instruction.positions is not None
)
"""The lines of ``_attempt_until_final`` that await a step's body: a frame of it stopped on
one of them, blocking the loop, is blocked in the body (not in storing its result)."""

_OFF_LOOP_CODES = frozenset({run_in_thread.__code__, run_in_process.__code__})
"""The bodies of ``def`` steps: they wait on the loop for a thread or a process, never block it."""

_warned: set[tuple[str, str]] = set()
"""The (flow type, step) pairs this process has warned about."""


@dataclass(frozen=True, slots=True)
class BusyStep:
    """An ``async def`` step that blocked its worker's event loop.

    Attributes:
        worker_id: The worker running the flow.
        flow_type: The flow's type name.
        flow_id: The flow's id.
        step: The step's name.
        seconds: How long the loop was blocked.
    """

    worker_id: str
    flow_type: str
    flow_id: str
    step: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"worker {self.worker_id}: flow {self.flow_id!r} ({self.flow_type}): async def step "
            f"{self.step!r} blocked the event loop for {self.seconds:.1f} s; make it a `def` "
            "step; it then runs in a thread and the loop stays free"
        )


def check_busy_loop_warning(seconds: float | None) -> float | None:
    """Return a usable ``busy_loop_warning`` threshold.

    Raises:
        ValueError: It is neither ``None`` nor a finite number of seconds above zero.
    """
    if seconds is None:
        return None
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"busy_loop_warning must be a finite number of seconds > 0, or None to turn the "
            f"warning off; got {seconds!r}"
        )
    return float(seconds)


class BusyWatch:
    """One worker's share of its loop's watchdog; made by :func:`watch_loop`.

    Tell it when a flow starts and ends: the watchdog runs only while some flow runs.
    """

    def __init__(
        self,
        watchdog: _LoopWatchdog,
        worker_id: str,
        threshold: float,
        flow_type_of: Callable[[str], str | None],
        on_busy: Callable[[BusyStep], None] | None,
    ) -> None:
        self._watchdog = watchdog
        self.worker_id = worker_id
        self.threshold = threshold
        self.flow_type_of = flow_type_of
        self.on_busy = on_busy
        self.running = 0
        self.closed = False

    def flow_started(self) -> None:
        """A flow of this worker started running."""
        if not self.closed:
            self.running += 1
            if self.running == 1:  # the watchdog may be parked: wake it
                self._watchdog.changed()

    def flow_ended(self) -> None:
        """A flow of this worker ended its run (the watchdog parks at its next tick if idle)."""
        if self.running:
            self.running -= 1

    def close(self) -> None:
        """The worker stopped; the last worker of a loop stops its watchdog."""
        if not self.closed:
            self.closed = True
            self._watchdog.leave(self)


_watchdogs: dict[asyncio.AbstractEventLoop, _LoopWatchdog] = {}
_watchdogs_lock = threading.Lock()


def watch_loop(
    worker_id: str,
    threshold: float,
    flow_type_of: Callable[[str], str | None],
    on_busy: Callable[[BusyStep], None] | None = None,
) -> BusyWatch:
    """Join the running loop's watchdog (starting it if none runs) for one worker.

    Args:
        worker_id: The worker, for the warning.
        threshold: Seconds the loop may be blocked before a step is named.
        flow_type_of: The type of a flow this worker runs now; ``None`` for another's flow.
        on_busy: Told of each warning about this worker's flows (on the loop).

    Returns:
        The worker's share; close it when the worker stops.
    """
    loop = asyncio.get_running_loop()
    with _watchdogs_lock:
        watchdog = _watchdogs.get(loop)
        if watchdog is None:
            watchdog = _watchdogs[loop] = _LoopWatchdog(loop)
        watch = BusyWatch(watchdog, worker_id, threshold, flow_type_of, on_busy)
        watchdog.join(watch)
    return watch


class _LoopWatchdog:
    """The watchdog thread of one event loop, shared by the workers serving on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._watches: list[BusyWatch] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def join(self, watch: BusyWatch) -> None:
        with self._changed:
            self._watches.append(watch)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="pyergon-busy-loop-watchdog", daemon=True
            )
            self._thread.start()

    def leave(self, watch: BusyWatch) -> None:
        with _watchdogs_lock, self._changed:
            self._watches.remove(watch)
            if not self._watches:
                _watchdogs.pop(self._loop, None)
            self._changed.notify_all()

    def changed(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _threshold(self) -> float | None:
        """The least threshold of the workers running flows; ``None``: none runs (or all left)."""
        thresholds = [watch.threshold for watch in self._watches if watch.running]
        return min(thresholds) if thresholds else None

    def _watch(self) -> None:
        """The watchdog thread: tick while flows run, name a step that blocks the loop."""
        while True:
            with self._changed:
                threshold = self._threshold()
                while threshold is None:
                    if not self._watches:
                        return
                    self._changed.wait()
                    threshold = self._threshold()
            ran = threading.Event()
            posted = time.monotonic()
            try:
                self._loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # the loop was closed without its workers stopping
                return
            if ran.wait(threshold):
                with self._changed:
                    self._changed.wait(TICK_SECONDS)  # woken early only to end
                continue
            blocking = self._blocking_step()
            if blocking is not None:
                # Queued now, so it runs as soon as the loop is free: before the work that the
                # step's end lets go on (a caller awaiting the flow), which a callback sent
                # after this thread sees the loop free again could come after.
                try:
                    self._loop.call_soon_threadsafe(_report, *blocking, posted)
                except RuntimeError:
                    return
            while not ran.wait(TICK_SECONDS):  # one warning per stall: wait for its end
                if not self._watches:
                    return

    def _blocking_step(self) -> tuple[BusyWatch, str, str, str] | None:
        """The worker, flow type, flow id and step of the async body blocking the loop now.

        Looked up while the loop thread is stuck, so the flow is still among its worker's.
        """
        found = _running_step(sys._current_frames().get(self._loop_thread))
        if found is None:
            return None
        flow_id, step = found
        for watch in list(self._watches):
            flow_type = watch.flow_type_of(flow_id)
            if flow_type is not None:
                return watch, flow_type, flow_id, step
        return None


def _report(watch: BusyWatch, flow_type: str, flow_id: str, step: str, since: float) -> None:
    """Say (on the loop, free again) which step blocked it, once per flow type and step.

    Args:
        watch: The share of the worker running the flow.
        flow_type: The flow's type.
        flow_id: The flow's id.
        step: The step's name.
        since: When the loop was last asked to run a tick (``time.monotonic``).
    """
    seconds = time.monotonic() - since
    if (flow_type, step) in _warned:
        return
    _warned.add((flow_type, step))
    busy = BusyStep(watch.worker_id, flow_type, flow_id, step, seconds)
    logger.warning("%s", busy)
    if watch.on_busy is not None:
        try:
            watch.on_busy(busy)
        except Exception:  # a broken hook must not stop the warnings
            logger.exception("worker %s: on_busy hook failed", watch.worker_id)


def _running_step(frame: FrameType | None) -> tuple[str, str] | None:
    """The flow id and step name of the ``async def`` step body running in ``frame``'s stack.

    Called from the watchdog thread while the loop thread is blocked; reading the stack of a
    running thread is what debuggers and samplers do.
    """
    callee: FrameType | None = None
    while frame is not None:
        if frame.f_code is _ATTEMPT_CODE:
            if frame.f_lineno not in _BODY_LINES:
                return None  # blocked in storing the step's result, not in its body
            if callee is not None and callee.f_code in _OFF_LOOP_CODES:
                return None
            call = frame.f_locals.get("call")
            if not isinstance(call, _steps.StepCall):
                return None
            return call.context.flow_id, call.name
        callee, frame = frame, frame.f_back
    return None
