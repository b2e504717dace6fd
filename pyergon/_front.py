"""``pyergon.run``: run one flow to its end from synchronous code and return its result.

A script calls ``pyergon.run(Flow(...))`` as it would call ``asyncio.run``: the flow runs with
the direct executor in the calling thread, its children inline as they always do under a
direct executor; between runs it waits for its timers to fall due and for the signals and
children it waits on to arrive, then runs again (replaying what it recorded). Nothing runs in
the background, so nothing outlives the call, and no flow class needs registering.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pyergon.core.outcome import Completed
from pyergon.core.query import FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.decorators import flow_entry, require_flow_instance
from pyergon.errors import FlowNotFoundError
from pyergon.executor.executor import Executor
from pyergon.serialization import Serializer
from pyergon.storage.base import ExecutionLog

__all__ = ["run"]

_FIRST_LOOK = 0.01
"""Seconds before the first look at a waiting flow; a signal sent at once is seen at once."""
_LONGEST_LOOK = 0.5
"""Most seconds between two looks: how late a signal or a child's end is seen at worst."""
_UNFINISHED = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUSPENDED})
_WAITING = frozenset(
    {
        InvocationStatus.WAITING_FOR_TIMER,
        InvocationStatus.WAITING_FOR_SIGNAL,
        InvocationStatus.WAITING_FOR_CHILD,
    }
)


def run(
    flow: object,
    *,
    storage: str | ExecutionLog | None = None,
    flow_id: str | None = None,
    timeout: float | None = None,
    serializer: Serializer | None = None,
) -> Any:
    """Run ``flow`` to its end from synchronous code and return what its ``@flow`` method returns.

    Like :func:`asyncio.run`, it returns the result or raises the flow's error (a
    :class:`~pyergon.StepFailedError`, the error a step raised, :class:`~pyergon.FlowCancelledError`
    ...). The flow is durable as any other: its steps are recorded, it sleeps on its timers and
    waits for its signals and children, and running the same ``flow_id`` again resumes it, or
    returns (or raises) its stored outcome without running anything once it is final.

    The flow runs in the calling thread with the direct executor: its child flows run inline,
    so no class needs registering and no worker is started. Inside a running event loop (a
    Jupyter cell) it runs on that loop, made re-entrant with ``nest-asyncio2``; from async code
    prefer ``await session.run(...)`` or an :class:`~pyergon.Executor`.

    Args:
        flow: An instance of a ``@flow_type`` dataclass.
        storage: A storage URL (``sqlite:///flows.db``, ``redis://…``), opened and closed by
            this call; a storage object, connected if needed and left open for you to close;
            or ``None`` for ``$PYERGON_STORAGE``, else ``sqlite:///pyergon.db`` in the current
            directory, the storage the ``pyergon`` command reads by default (so ``pyergon show
            FLOW_ID`` finds the flow afterwards).
        flow_id: The flow's id; default: ``<FlowClass>-<random hex>``. Give one to resume the
            flow later.
        timeout: Seconds to wait at most, including waits on timers, signals and children;
            ``None`` waits as long as it takes.
        serializer: How values are stored; required on shared storage (see
            :func:`~pyergon.serialization.check_serializer`).

    Returns:
        The flow's result.

    Raises:
        TimeoutError: The flow did not end within ``timeout``; the message names the flow id,
            what it waits on and how to continue. The flow stays stored as it was.
        FlowDefinitionError: ``flow`` is not an instance of a runnable flow class.
        PyergonError: ``flow_id`` belongs to a flow of another type; a loop is running and
            ``nest-asyncio2`` is missing.
        BaseException: Whatever error the flow ended with.
    """
    type_name = require_flow_instance(flow)
    flow_entry(type(flow))  # a class without exactly one @flow method fails here, not later
    flow_id = flow_id or f"{type_name}-{uuid.uuid4().hex[:12]}"
    from pyergon.notebook._sync import run_sync

    outcome = run_sync(_run_with_storage(flow, storage, flow_id, timeout, serializer))
    return outcome.unwrap()


async def _run_with_storage(
    flow: object,
    storage: str | ExecutionLog | None,
    flow_id: str,
    timeout: float | None,
    serializer: Serializer | None,
) -> Completed[Any]:
    if storage is not None and not isinstance(storage, str):
        await storage.connect()  # safe on a connected storage; the caller closes it
        return await run_to_end(
            flow, storage, flow_id, timeout=timeout, serializer=serializer, url="URL"
        )
    from pyergon.cli._worker import default_storage_url
    from pyergon.storage._url import open_storage

    opened = await open_storage(storage or default_storage_url())
    try:
        return await run_to_end(
            flow, opened, flow_id, timeout=timeout, serializer=serializer, url=storage
        )
    finally:
        await opened.close()


async def run_to_end(
    flow: object,
    storage: ExecutionLog,
    flow_id: str,
    *,
    timeout: float | None = None,
    serializer: Serializer | None = None,
    url: str | None = None,
) -> Completed[Any]:
    """Run ``flow`` with the direct executor again and again until it is final.

    Between two runs it waits until the flow or one of its unfinished descendants can go on:
    one is ``PENDING`` (a signal or a child's end arrived), a timer or retry backoff is due, or
    the flow is final. A flow a worker holds is left to that worker and only watched.

    Args:
        flow: The flow instance.
        storage: A connected storage.
        flow_id: The flow's id.
        timeout: Seconds to wait at most.
        serializer: How values are stored.
        url: The storage URL the ``pyergon`` commands of a timeout's message should name;
            ``None``: the commands' default.

    Raises:
        TimeoutError: ``timeout`` passed first (see :func:`run`).
    """
    method, _ = flow_entry(type(flow))
    executor = Executor(flow, storage, flow_id, serializer=serializer)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                outcome = await executor.run(lambda running: getattr(running, method)())
                if isinstance(outcome, Completed):
                    return outcome
                await _until_it_can_go_on(storage, flow_id)
        except TimeoutError:
            if deadline is None or loop.time() < deadline:
                raise  # not our deadline: a TimeoutError from the flow's own code
            where = f" --storage {url}" if url else ""
            raise TimeoutError(await _still_waiting(storage, flow_id, timeout, where)) from None


async def _until_it_can_go_on(storage: ExecutionLog, flow_id: str) -> None:
    """Return once a run of ``flow_id`` would do more than suspend again as it just did."""
    interval = _FIRST_LOOK
    while True:
        can_go_on, wake_at = await _can_go_on(storage, flow_id, time.time())
        if can_go_on:
            return
        pause = interval if wake_at is None else min(interval, max(wake_at - time.time(), 0.0))
        await asyncio.sleep(pause)
        interval = min(interval * 1.5, _LONGEST_LOOK)


async def _can_go_on(storage: ExecutionLog, flow_id: str, now: float) -> tuple[bool, float | None]:
    """Whether ``flow_id`` or a descendant can go on at ``now``, else the earliest wake time."""
    flow = await storage.get_flow(flow_id)
    if flow is None:
        raise FlowNotFoundError(flow_id)
    if flow.status.is_final or flow.status is TaskStatus.PENDING:
        return True, None
    if flow.status is TaskStatus.RUNNING:
        # A worker claimed it (a timer fell due while a `pyergon worker` serves the type):
        # running it here as well would run its steps twice. Wait for the worker instead.
        return False, None
    if flow.wake_at is not None and flow.wake_at <= now:
        return True, None
    wakes = [] if flow.wake_at is None else [flow.wake_at]
    for child in await _unfinished_children(storage, flow_id):
        can_go_on, wake_at = await _can_go_on(storage, child.flow_id, now)
        if can_go_on:
            return True, None
        if wake_at is not None:
            wakes.append(wake_at)
    return False, min(wakes, default=None)


async def _unfinished_children(storage: ExecutionLog, flow_id: str) -> list[ScheduledFlow]:
    query = FlowQuery(parent_flow_id=flow_id, status=_UNFINISHED, limit=1000)
    return await storage.list_flows(query)


async def _still_waiting(
    storage: ExecutionLog, flow_id: str, timeout: float | None, where: str
) -> str:
    """What a flow that did not end in time waits on, and how to go on."""
    again = (
        f"pyergon.run(..., flow_id={flow_id!r}) again resumes it and returns its result; "
        f"`pyergon show {flow_id}{where}` shows where it stands"
    )
    waiting = await _waiting_record(storage, flow_id)
    if waiting is None:
        return f"flow {flow_id!r} did not finish within {timeout} s; {again}"
    if waiting.status is InvocationStatus.WAITING_FOR_SIGNAL:
        owner, name = waiting.flow_id, waiting.name
        return (
            f"flow {flow_id!r} is still waiting for signal {name!r} after {timeout} s: send it "
            f"with `pyergon signal {owner} {name} VALUE{where}` (or session.signal({owner!r}, "
            f"{name!r}, value)); {again}"
        )
    return (
        f"flow {flow_id!r} is still waiting for {waiting.kind.value.lower()} {waiting.name!r}"
        f" after {timeout} s; {again}"
    )


async def _waiting_record(storage: ExecutionLog, flow_id: str) -> Invocation | None:
    """The record a flow waits on, followed into the child it waits for; ``None``: none."""
    records = await storage.load_invocations(flow_id)
    waiting = [record for record in records if record.status in _WAITING]
    if not waiting:
        return None
    record = waiting[-1]
    if record.status is InvocationStatus.WAITING_FOR_CHILD and record.child_flow_id:
        return await _waiting_record(storage, record.child_flow_id) or record
    return record
