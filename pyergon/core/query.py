"""What a listing and a claim ask for: :class:`FlowQuery` and :class:`ClaimRequest`.

Each is checked once, when it is built, and every backend reads it as it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TypedDict, Unpack

from pyergon.core.records import FlowCursor, ScheduledFlow, text_problem
from pyergon.core.status import TaskStatus
from pyergon.errors import InvalidFlowIdError

__all__ = ["ClaimRequest", "FlowFilters", "FlowQuery"]


class FlowFilters(TypedDict, total=False):
    """The filters of a listing, by keyword; one left out (or ``None``) matches every flow.

    :class:`FlowQuery` and :func:`pyergon.history.iter_flows` take them.

    Attributes:
        status: One status or several.
        flow_type: Only flows of this type.
        created_after: Only flows created at or after this time (epoch seconds).
        created_before: Only flows created before this time (epoch seconds).
        worker_id: Only flows last claimed by this worker.
        parent_flow_id: Only children of this flow.
        flow_ids: Only flows with one of these ids (a monitor's chosen flows); storage reads
            them by id, so the listing costs what the ids do, whatever else it holds.
    """

    status: TaskStatus | Collection[TaskStatus] | None
    flow_type: str | None
    created_after: float | None
    created_before: float | None
    worker_id: str | None
    parent_flow_id: str | None
    flow_ids: Collection[str] | None


def _set_fields(instance: object, **values: object) -> None:
    """Set the fields of a frozen value as its own ``__init__`` builds it."""
    for name, value in values.items():
        object.__setattr__(instance, name, value)


def _statuses(status: TaskStatus | Collection[TaskStatus] | None) -> frozenset[TaskStatus] | None:
    if status is None:
        return None
    if isinstance(status, str):  # a TaskStatus is a str too
        return frozenset((TaskStatus(status),))
    return frozenset(TaskStatus(value) for value in status)


def _flow_ids(flow_ids: Collection[str] | None) -> frozenset[str] | None:
    if flow_ids is None:
        return None
    if isinstance(flow_ids, str):
        raise InvalidFlowIdError(
            f"flow filter flow_ids={flow_ids!r} is one string; give a collection of ids"
        )
    for flow_id in flow_ids:
        problem = text_problem(flow_id)
        if problem is not None:
            raise InvalidFlowIdError(f"flow filter flow_ids: {flow_id!r} {problem}")
    return frozenset(flow_ids)


@dataclass(frozen=True, slots=True, init=False)
class FlowQuery:
    """A filter and a page of :meth:`~pyergon.storage.ExecutionLog.list_flows`.

    Flows come newest first, by ``(created_at, flow_id)``. Every filter left at ``None``
    matches every flow.

    Attributes:
        statuses: Only flows in one of these statuses.
        flow_type: Only flows of this type.
        created_after: Only flows created at or after this time (epoch seconds).
        created_before: Only flows created before this time (epoch seconds).
        worker_id: Only flows last claimed by this worker.
        parent_flow_id: Only children of this flow.
        flow_ids: Only flows with one of these ids.
        limit: At most this many flows.
        offset: Skip this many matching flows first; prefer ``after`` for deep pages.
        after: Continue after this cursor (see :class:`~pyergon.core.FlowCursor`).
    """

    statuses: frozenset[TaskStatus] | None
    flow_type: str | None
    created_after: float | None
    created_before: float | None
    worker_id: str | None
    parent_flow_id: str | None
    flow_ids: frozenset[str] | None
    limit: int
    offset: int
    after: FlowCursor | None

    def __init__(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        after: FlowCursor | None = None,
        **filters: Unpack[FlowFilters],
    ) -> None:
        """Build a query.

        Args:
            limit: At most this many flows (>= 0).
            offset: Skip this many matching flows first (>= 0).
            after: Continue after this cursor.
            **filters: The filters, by keyword: see :class:`FlowFilters`.

        Raises:
            TypeError: A keyword is not a filter.
            ValueError: ``limit`` or ``offset`` is negative, a status is not a flow status, or
                a text filter holds a NUL or a lone surrogate (see :func:`text_problem`).
            InvalidFlowIdError: ``parent_flow_id`` or one of ``flow_ids`` holds a NUL or a lone
                surrogate, or ``flow_ids`` is a single string rather than a collection of ids.
        """
        if unknown := filters.keys() - FlowFilters.__annotations__.keys():
            raise TypeError(f"not a flow filter: {', '.join(sorted(unknown))}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        for name in ("flow_type", "worker_id", "parent_flow_id"):
            value = filters.get(name)
            problem = None if not isinstance(value, str) else text_problem(value)
            if problem is not None:
                error = InvalidFlowIdError if name == "parent_flow_id" else ValueError
                raise error(f"flow filter {name}={value!r} {problem}")
        _set_fields(
            self,
            flow_ids=_flow_ids(filters.get("flow_ids")),
            statuses=_statuses(filters.get("status")),
            flow_type=filters.get("flow_type"),
            created_after=filters.get("created_after"),
            created_before=filters.get("created_before"),
            worker_id=filters.get("worker_id"),
            parent_flow_id=filters.get("parent_flow_id"),
            limit=limit,
            offset=offset,
            after=after,
        )

    def matches(self, flow: ScheduledFlow) -> bool:
        """Whether ``flow`` passes every filter and lies after the cursor (paging aside)."""
        return (
            (self.statuses is None or flow.status in self.statuses)
            and (self.flow_type is None or flow.flow_type == self.flow_type)
            and (self.created_after is None or flow.created_at >= self.created_after)
            and (self.created_before is None or flow.created_at < self.created_before)
            and (self.worker_id is None or flow.worker_id == self.worker_id)
            and (self.parent_flow_id is None or flow.parent_flow_id == self.parent_flow_id)
            and (self.flow_ids is None or flow.flow_id in self.flow_ids)
            and (
                self.after is None
                or (flow.created_at, flow.flow_id) < (self.after.created_at, self.after.flow_id)
            )
        )

    def page_of(self, flows: Collection[ScheduledFlow]) -> list[ScheduledFlow]:
        """The page this query selects from ``flows``: matching, newest first, offset, limit."""
        chosen = sorted(
            (flow for flow in flows if self.matches(flow)),
            key=lambda flow: (flow.created_at, flow.flow_id),
            reverse=True,
        )
        return chosen[self.offset : self.offset + self.limit]

    def of_flows(self, flow_ids: Collection[str]) -> FlowQuery:
        """The same query (page included) of only these flows; ids are checked as in ``__init__``.

        Raises:
            InvalidFlowIdError: One of ``flow_ids`` cannot be an id.
        """
        query = self.page(limit=self.limit, offset=self.offset, after=self.after)
        _set_fields(query, flow_ids=_flow_ids(flow_ids))
        return query

    def page(
        self, *, limit: int | None = None, offset: int = 0, after: FlowCursor | None = None
    ) -> FlowQuery:
        """The same filters with another page: ``limit`` (kept if ``None``), ``offset``, ``after``.

        Raises:
            ValueError: ``limit`` or ``offset`` is negative.
        """
        limit = self.limit if limit is None else limit
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        query = object.__new__(FlowQuery)
        kept = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        _set_fields(query, **kept)
        _set_fields(query, limit=limit, offset=offset, after=after)
        return query


@dataclass(frozen=True, slots=True, init=False)
class ClaimRequest:
    """What a worker asks :meth:`~pyergon.storage.ExecutionLog.claim` for.

    Attributes:
        worker_id: The claiming worker; it becomes each taken flow's lease owner.
        flow_types: Only flows of these types.
        limit: At most this many flows (>= 1).
        lease_seconds: How long each lease lasts unless renewed (> 0).
        now: The worker's clock (epoch seconds).
        due_by: Also take suspended flows waking by this time (a worker asks a little ahead,
            to prepare timers about to fire); ``None``: those waking by ``now``.
    """

    worker_id: str
    flow_types: frozenset[str]
    limit: int
    lease_seconds: float
    now: float
    due_by: float | None

    def __init__(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> None:
        """Build a claim request.

        Args:
            worker_id: The claiming worker.
            flow_types: The flow types it runs (any collection).
            limit: At most this many flows.
            lease_seconds: How long each lease lasts unless renewed.
            now: The worker's clock (epoch seconds).
            due_by: Also take suspended flows waking by this time.

        Raises:
            ValueError: ``limit`` is less than 1, or ``lease_seconds`` is not a finite number
                above 0.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not (math.isfinite(lease_seconds) and lease_seconds > 0):
            raise ValueError(f"lease_seconds must be finite and > 0, got {lease_seconds}")
        _set_fields(
            self,
            worker_id=worker_id,
            flow_types=frozenset(flow_types),
            limit=limit,
            lease_seconds=lease_seconds,
            now=now,
            due_by=due_by,
        )

    @property
    def wakes_by(self) -> float:
        """Suspended flows waking at or before this are due: ``due_by``, never before ``now``."""
        return self.now if self.due_by is None else max(self.due_by, self.now)
