"""Value types shared by every part of pyergon; no I/O happens here."""

from pyergon.core.outcome import Completed, FlowOutcome, Suspended, SuspendReason
from pyergon.core.query import ClaimRequest, FlowFilters, FlowQuery
from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.retry import RetryPolicy
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus

__all__ = [
    "ClaimRequest",
    "Completed",
    "FlowCursor",
    "FlowFilters",
    "FlowOutcome",
    "FlowQuery",
    "Invocation",
    "InvocationStatus",
    "OperationKind",
    "RetryPolicy",
    "ScheduledFlow",
    "SignalRecord",
    "StoredError",
    "SuspendReason",
    "Suspended",
    "TaskStatus",
]
