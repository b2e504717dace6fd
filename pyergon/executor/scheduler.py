"""The scheduler: put flows on the shared queue, send them signals, wait for their outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import Any

from pyergon.clock import Clock, SystemClock
from pyergon.core.outcome import Completed
from pyergon.core.records import ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.decorators import flow_entry, require_flow_instance
from pyergon.errors import FlowNotFoundError, PyergonError
from pyergon.executor._inputs import check_same_inputs, encode_flow
from pyergon.executor._runner import stored_outcome
from pyergon.executor.executor import validate_flow_id, validate_new_flow_id
from pyergon.executor.signal import send_signal
from pyergon.serialization import Serializer, serializer_for
from pyergon.storage.base import ExecutionLog

__all__ = ["Scheduler"]


class Scheduler:
    """Enqueues flows for workers and talks to flows that are already running.

    Args:
        storage: The storage the workers share.
        serializer: How inputs and signal values are stored; must match the workers'.
        clock: Time source for stored timestamps.
    """

    def __init__(
        self,
        storage: ExecutionLog,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.storage = storage
        self.serializer = serializer_for(storage, serializer)
        self.clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"Scheduler(storage={self.storage!r})"

    async def schedule(self, flow: object, flow_id: str | None = None) -> str:
        """Put ``flow`` on the queue for any worker that registered its type.

        Scheduling is idempotent per id: if a flow with ``flow_id`` exists with the same inputs,
        nothing is written and its id is returned, whatever its state (a finished flow is not
        run again; use retry, rerun or fork for that).

        Args:
            flow: An instance of a ``@flow_type`` dataclass with one ``@flow`` method.
            flow_id: The flow's id; a random one is made when omitted.

        Returns:
            The flow's id.

        Raises:
            FlowDefinitionError: ``flow`` is not a runnable flow instance.
            InvalidFlowIdError: ``flow_id`` is given but not a non-empty string, or has the
                form of a child flow's id (``"<parent id>~child-<position>"``).
            SerializationError: A field cannot be serialized; nothing is stored.
            PyergonError: ``flow_id`` already belongs to a flow of another type.
            FlowInputsChangedError: ``flow_id`` belongs to a flow with other inputs.
        """
        type_name = require_flow_instance(flow)
        flow_entry(type(flow))
        flow_id = uuid.uuid4().hex if flow_id is None else validate_new_flow_id(flow_id)
        payload = encode_flow(self.serializer, flow, type_name)
        now = self.clock.now()
        stored, created = await self.storage.create_flow(
            ScheduledFlow(
                flow_id=flow_id,
                flow_type=type_name,
                payload=payload,
                status=TaskStatus.PENDING,
                created_at=now,
                updated_at=now,
            )
        )
        if stored.flow_type != type_name:
            raise PyergonError(
                f"flow id {flow_id!r} already belongs to a flow of type {stored.flow_type!r}, "
                f"not {type_name!r}; choose another flow id"
            )
        if not created:
            check_same_inputs(self.serializer, stored, payload, flow)
        return stored.flow_id

    async def signal(self, flow_id: str, name: str, value: Any = None) -> bool:
        """Send the signal ``name`` with ``value`` to a flow and wake it if it waits.

        Returns:
            Whether the signal was new (the first value per flow and name is kept).

        Raises:
            InvalidFlowIdError: ``flow_id`` is not a usable flow id.
            FlowNotFoundError: No flow with ``flow_id`` exists.
            SerializationError: ``value`` cannot be serialized; nothing is stored.
        """
        return await send_signal(
            self.storage, flow_id, name, value, serializer=self.serializer, sent_at=time.time()
        )

    async def wait(
        self, flow_ids: str | Iterable[str], *, timeout: float | None = None
    ) -> dict[str, Completed[Any]]:
        """Wait until each flow is final and return their outcomes.

        Storage is checked with a short interval that grows while nothing changes.

        Args:
            flow_ids: One id or several.
            timeout: Seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            Each flow's outcome, by id, in the order the ids were given.

        Raises:
            InvalidFlowIdError: An id is not a usable flow id.
            FlowNotFoundError: An id does not exist.
            TimeoutError: Some flow was not final in time; the message lists which.
        """
        requested = [flow_ids] if isinstance(flow_ids, str) else list(flow_ids)
        for flow_id in requested:
            validate_flow_id(flow_id)
        pending = list(dict.fromkeys(requested))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        outcomes: dict[str, Completed[Any]] = {}
        interval = 0.002
        while pending:
            still_pending = []
            for flow_id in pending:
                flow = await self.storage.get_flow(flow_id)
                if flow is None:
                    raise FlowNotFoundError(flow_id)
                if flow.status.is_final:
                    outcomes[flow_id] = stored_outcome(flow, self.serializer)
                else:
                    still_pending.append(flow_id)
            if len(still_pending) < len(pending):
                interval = 0.002
            pending = still_pending
            if not pending:
                break
            if deadline is not None and loop.time() >= deadline:
                shown = ", ".join(repr(flow_id) for flow_id in pending[:5])
                raise TimeoutError(
                    f"{len(pending)} flow(s) not finished after {timeout} s: {shown}"
                )
            remaining = None if deadline is None else deadline - loop.time()
            await asyncio.sleep(interval if remaining is None else min(interval, remaining))
            interval = min(interval * 1.5, 0.1)
        return {flow_id: outcomes[flow_id] for flow_id in dict.fromkeys(requested)}
