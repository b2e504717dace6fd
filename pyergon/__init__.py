"""pyergon: durable execution for Python, made for services and Jupyter alike.

Write a flow as an async method of a dataclass; every step's result is recorded, so the flow
survives crashes, sleeps on durable timers and waits for signals, then resumes where it stopped.

    from pyergon import flow, flow_type, step, Executor
"""

from __future__ import annotations

from pyergon.context import current_idempotency_key as idempotency_key
from pyergon.core import Completed, FlowOutcome, RetryPolicy, Suspended
from pyergon.decorators import flow, flow_type, step
from pyergon.determinism import now, random, uuid4
from pyergon.errors import PyergonError, RetryableError
from pyergon.executor.executor import Executor
from pyergon.executor.scheduler import Scheduler
from pyergon.executor.signal import await_external_signal, send_signal
from pyergon.executor.timer import schedule_timer, schedule_timer_named
from pyergon.executor.worker import Worker, WorkerHandle

__all__ = [
    "Completed",
    "Executor",
    "FlowOutcome",
    "PyergonError",
    "RetryPolicy",
    "RetryableError",
    "Scheduler",
    "Suspended",
    "Worker",
    "WorkerHandle",
    "__version__",
    "await_external_signal",
    "flow",
    "flow_type",
    "idempotency_key",
    "now",
    "random",
    "schedule_timer",
    "schedule_timer_named",
    "send_signal",
    "step",
    "uuid4",
]

__version__ = "0.9.0"
