"""What a worker says about the flows it runs: one log line per event an operator acts on.

Failures, retries, lease losses and children nobody here serves are warnings (shown by
``pyergon worker`` as it starts); completions are info (shown with ``pyergon worker -v``). Each
line names the worker, the flow id and type, and what happened.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Protocol

from pyergon.core.outcome import Completed, FlowOutcome
from pyergon.core.status import TaskStatus

__all__ = ["FlowTalk", "error_text", "logger", "served_in_process", "serving"]

logger = logging.getLogger("pyergon.worker")


class _Serving(Protocol):
    @property
    def registered_types(self) -> Collection[str]: ...


_serving: weakref.WeakSet[_Serving] = weakref.WeakSet()
"""The workers of this process serving now. Only what a warning needs: the workers of other
processes are not known here (that takes the worker registry in storage)."""


@contextlib.contextmanager
def serving(worker: _Serving) -> Iterator[None]:
    """Count ``worker`` among this process's serving workers while the block runs."""
    _serving.add(worker)
    try:
        yield
    finally:
        _serving.discard(worker)


def served_in_process(flow_type: str) -> bool:
    """Whether a worker of this process serves ``flow_type`` now."""
    return any(flow_type in worker.registered_types for worker in list(_serving))


def error_text(error: BaseException) -> str:
    """``Type: message`` of an error, on one line."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@dataclass(frozen=True, slots=True)
class FlowTalk:
    """The log lines of one flow run by one worker.

    Attributes:
        worker_id: The worker running the flow.
        flow_id: The flow's id.
        flow_type: The flow's registered type name.
    """

    worker_id: str
    flow_id: str
    flow_type: str

    @property
    def flow(self) -> str:
        """How the lines name the flow."""
        return f"flow {self.flow_id!r} ({self.flow_type})"

    def attempt_failed(self, error: BaseException, attempt: int, delay: float | None) -> None:
        """Say that attempt ``attempt`` raised ``error``, and when (if) the flow runs again."""
        if delay is None:
            logger.warning(
                "worker %s: %s failed on attempt %d: %s",
                self.worker_id,
                self.flow,
                attempt,
                error_text(error),
            )
        else:
            logger.warning(
                "worker %s: %s attempt %d failed: %s; retry as attempt %d in %g s",
                self.worker_id,
                self.flow,
                attempt,
                error_text(error),
                attempt + 1,
                delay,
            )

    def step_retry(self, step: str, error: BaseException, attempt: int, delay: float) -> None:
        """Say that attempt ``attempt`` of step ``step`` raised ``error`` and runs again."""
        logger.warning(
            "worker %s: %s step %r attempt %d failed: %s; retry as attempt %d in %g s",
            self.worker_id,
            self.flow,
            step,
            attempt,
            error_text(error),
            attempt + 1,
            delay,
        )

    def outcome(self, outcome: FlowOutcome[object]) -> None:
        """Say how a run ended, at info level; failures were said as they happened."""
        if not isinstance(outcome, Completed) or outcome.status is TaskStatus.FAILED:
            return
        what = "completed" if outcome.status is TaskStatus.COMPLETE else "was cancelled"
        logger.info("worker %s: %s %s", self.worker_id, self.flow, what)

    def lease_lost(self, why: str) -> None:
        """Say that the run stopped, writing nothing more, as its lease may have run out.

        What it stored while it held the lease stays; what it did since is dropped.
        """
        logger.warning(
            "worker %s: %s lost its lease and stopped; it writes nothing more: %s; another "
            "worker may hold it, and it runs again from its stored log",
            self.worker_id,
            self.flow,
            why,
        )

    def child_not_served(self, child_id: str, child_type: str) -> None:
        """Say that the flow waits on a child of a type no live worker serves (that we know of).

        Known: the workers of this process, and the live workers storage has records of.
        """
        logger.warning(
            "worker %s: %s waits on child %r of type %s, which no live worker serves (in this "
            "process or in storage's worker records); it waits until a worker serving %s runs "
            "(start one, e.g. `pyergon worker MODULE:%s`)",
            self.worker_id,
            self.flow,
            child_id,
            child_type,
            child_type,
            child_type,
        )
