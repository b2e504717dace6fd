"""Steps the contract tests share: hold a flow, store records, write a flow, drain wake-ups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from typing import Any, ParamSpec

import pytest

from pyergon.core.changes import Applied, Change, FlowWrite
from pyergon.core.query import ClaimRequest
from pyergon.core.records import Invocation, ScheduledFlow, StepProgress
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage._flows import HeldFlow
from pyergon.storage.base import ClaimedRun, ExecutionLog
from pyergon.testing.factories import make_flow, make_invocation, sample_errors

P = ParamSpec("P")

FINAL = (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)
NO_LEASE = (None, None, None)

each_error = pytest.mark.parametrize(
    "error", sample_errors(), ids=["no-payload", "payload", "not-retryable", "retryable"]
)
"""Run a test once per shape of stored error."""


def lease_of(flow: ScheduledFlow) -> tuple[str | None, str | None, float | None]:
    """The lease fields of ``flow``: owner, token and expiry."""
    return (flow.lease_owner, flow.lease_token, flow.lease_expires_at)


async def stored(storage: ExecutionLog, flow_id: str) -> ScheduledFlow:
    """Read a flow that must exist."""
    flow = await storage.get_flow(flow_id)
    assert flow is not None, f"flow {flow_id!r} is not stored"
    return flow


async def claim(
    storage: ExecutionLog,
    worker_id: str = "worker-a",
    flow_types: Collection[str] = ("Order",),
    *,
    limit: int = 10,
    lease_seconds: float = 30.0,
    now: float = 1_000.0,
    due_by: float | None = None,
) -> list[ClaimedRun]:
    """Claim with the defaults most tests use."""
    request = ClaimRequest(
        worker_id, flow_types, limit=limit, lease_seconds=lease_seconds, now=now, due_by=due_by
    )
    return await storage.claim(request)


def _flow_ids_of(
    claim: Callable[P, Awaitable[list[ClaimedRun]]],
) -> Callable[P, Coroutine[Any, Any, list[str]]]:
    async def claim_ids(*args: P.args, **kwargs: P.kwargs) -> list[str]:
        """:func:`claim` with the same arguments, returning the flow ids in the claim's order."""
        return [run.flow.flow_id for run in await claim(*args, **kwargs)]

    return claim_ids


claim_ids = _flow_ids_of(claim)


async def hold(
    storage: ExecutionLog,
    flow_id: str = "flow-1",
    *,
    worker_id: str = "worker-a",
    now: float = 1_000.0,
    **fields: object,
) -> HeldFlow:
    """Store a ``PENDING`` flow and let ``worker_id`` claim it (a 30 s lease from ``now``)."""
    await storage.create_flow(make_flow(flow_id, **fields))
    return await take(storage, flow_id, worker_id=worker_id, now=now)


async def take(
    storage: ExecutionLog, flow_id: str, *, worker_id: str = "worker-a", now: float = 1_000.0
) -> HeldFlow:
    """Claim the one runnable flow ``flow_id`` and hold it as its run does."""
    runs = await claim(storage, worker_id, limit=1, now=now)
    assert [run.flow.flow_id for run in runs] == [flow_id], "another flow was claimed first"
    return HeldFlow(storage, runs[0].flow, runs[0].flow.lease_token)


async def store(storage: ExecutionLog, *records: Invocation) -> Applied:
    """Store records alone (first writer wins)."""
    return await storage.apply(Change(records=records))


async def write(
    storage: ExecutionLog,
    flow_id: str,
    changes: Mapping[str, object] | None = None,
    *,
    expected_version: int | None = None,
    only_if_status: Collection[TaskStatus] | None = None,
    notify: bool = False,
) -> Applied:
    """Apply one write of a flow's fields."""
    statuses = None if only_if_status is None else frozenset(only_if_status)
    flow_write = FlowWrite(flow_id, dict(changes or {}), expected_version, statuses)
    return await storage.apply(Change(writes=(flow_write,), notify=notify))


async def drain(storage: ExecutionLog) -> None:
    """Consume wake-ups that setting a test up caused, so the test sees only its own."""
    await storage.wait_for_work(timeout=0.05)


def waiting_for(signal_name: str, *, flow_id: str = "flow-1", sequence: int = 2) -> Invocation:
    """A record of a flow waiting for the signal ``signal_name``."""
    return make_invocation(
        sequence,
        flow_id=flow_id,
        kind=OperationKind.SIGNAL,
        name=signal_name,
        args_hash="",
        status=InvocationStatus.WAITING_FOR_SIGNAL,
    )


def done(sequence: int, result: bytes = b"ok", *, flow_id: str = "flow-1") -> Invocation:
    """A completed step record at ``sequence``."""
    return make_invocation(
        sequence, flow_id=flow_id, status=InvocationStatus.COMPLETE, result=result, attempts=1
    )


_LONG_OUTPUT = "".join(f"row {n:05}: naïve ✓ █ 42%\n" for n in range(3_000))[: 64 * 1024]
"""64 KiB of output (as many characters; more bytes in UTF-8): what the runtime keeps at most."""


def with_output(*, flow_id: str = "flow-1", first: int = 1) -> tuple[Invocation, ...]:
    """Completed step records with every shape of output and progress, from position ``first``.

    Unicode text with a full report; 64 KiB with a bare count; an empty output with a report
    without a message; no output and no report; an empty message without a total.
    """
    shapes = [
        ('naïve ✓ 日本 😀\r\n\ttab \\ "quoted"\n', StepProgress(37, 100, "loading Jan ✓", 1_000.5)),
        (_LONG_OUTPUT, StepProgress(3, at=1_000.25)),
        ("", StepProgress(0.5, 2.0, at=1_001.0)),
        (None, None),
        (None, StepProgress(7, message="", at=1_002.0)),
    ]
    return tuple(
        done(first + n, f"result-{n}".encode(), flow_id=flow_id).replace(
            output=output, progress=progress
        )
        for n, (output, progress) in enumerate(shapes)
    )
