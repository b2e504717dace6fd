"""pyergon: durable execution for Python, made for services and Jupyter alike.

Write a flow as an async method of a dataclass; every step's result is recorded, so the flow
survives crashes, sleeps on durable timers and waits for signals, then resumes where it stopped.

    from pyergon import flow, flow_type, step, Executor

From a script, ``pyergon.run(Flow(...))`` runs one flow to its end and returns its result.
In IPython or Jupyter, ``%load_ext pyergon`` adds the ``%pyergon`` magic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyergon._context import current_idempotency_key as idempotency_key
from pyergon._front import run
from pyergon._progress import progress, track
from pyergon._version import __version__
from pyergon.core import Completed, FlowOutcome, RetryPolicy, Suspended
from pyergon.decorators import flow, flow_type, step
from pyergon.determinism import now, random, uuid4
from pyergon.errors import (
    ChildFlowError,
    DagExecutionError,
    FlowCancelledError,
    FlowInputsChangedError,
    FlowNotFoundError,
    FlowStateError,
    NonDeterminismError,
    PyergonError,
    RetryableError,
    SerializationError,
    StaleResultWarning,
    StepFailedError,
    StepProcessError,
    StepTimeoutError,
    StorageError,
)
from pyergon.executor._dag import dag
from pyergon.executor._offload import block_on
from pyergon.executor.executor import Executor
from pyergon.executor.scheduler import Scheduler
from pyergon.executor.signal import await_external_signal, send_signal
from pyergon.executor.timer import schedule_timer, schedule_timer_named
from pyergon.executor.worker import Worker, WorkerHandle
from pyergon.storage._url import open_storage

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from pyergon.notebook.session import Session

__all__ = [
    "ChildFlowError",
    "Completed",
    "DagExecutionError",
    "Executor",
    "FlowCancelledError",
    "FlowInputsChangedError",
    "FlowNotFoundError",
    "FlowOutcome",
    "FlowStateError",
    "NonDeterminismError",
    "PyergonError",
    "RetryPolicy",
    "RetryableError",
    "Scheduler",
    "SerializationError",
    "Session",
    "StaleResultWarning",
    "StepFailedError",
    "StepProcessError",
    "StepTimeoutError",
    "StorageError",
    "Suspended",
    "Worker",
    "WorkerHandle",
    "__version__",
    "await_external_signal",
    "block_on",
    "dag",
    "flow",
    "flow_type",
    "idempotency_key",
    "load_ipython_extension",
    "now",
    "open_storage",
    "progress",
    "random",
    "run",
    "schedule_timer",
    "schedule_timer_named",
    "send_signal",
    "step",
    "track",
    "unload_ipython_extension",
    "uuid4",
]


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register the ``%pyergon`` magic; ``%load_ext pyergon`` calls this.

    IPython is imported here, never by ``import pyergon``.
    """
    from pyergon.notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Stop ``%pyergon``'s workers and close its session; ``%unload_ext pyergon`` calls this."""
    from pyergon.notebook.magics import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    """Import ``Session`` on first use: it needs the notebook extra (pandas, IPython)."""
    if name == "Session":
        from pyergon.notebook.session import Session

        return Session
    raise AttributeError(f"module 'pyergon' has no attribute {name!r}")
