"""Removing artifacts no record names, and flows nobody needs: gc, delete and prune.

Forks and reruns share artifacts (their records copy the small reference, never the value), so
an artifact is released only when no stored payload names it. :func:`collect_artifacts` is the
one code path that removes artifacts; :func:`delete_flows` and :func:`prune_flows` delete flows
and then hand it the artifacts those flows named.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta

from pyergon.core.records import ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.errors import ArtifactError, FlowNotFoundError, FlowStateError
from pyergon.history import iter_flows
from pyergon.serialization._artifact_refs import format_size
from pyergon.serialization._artifact_store import OWNERS_DIRECTORY, TEMPORARY_DIRECTORY
from pyergon.serialization._artifacts import log_identity
from pyergon.serialization.artifacts import ArtifactStore, StoredArtifact
from pyergon.storage._artifact_references import payloads_of, referenced_digests
from pyergon.storage.base import ExecutionLog

__all__ = [
    "DEFAULT_GRACE",
    "GcReport",
    "collect_artifacts",
    "delete_flows",
    "flow_tree",
    "prune_flows",
    "seconds",
]

DEFAULT_GRACE = 300.0
"""Seconds an unnamed artifact is kept after it was last written: a worker's write in flight."""

_TEMPORARY = f"{TEMPORARY_DIRECTORY}/"
_FINAL = frozenset(status for status in TaskStatus if status.is_final)


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a collection of artifacts removed, or would remove in a dry run.

    Attributes:
        removed: Artifacts (and leftovers of interrupted writes) removed.
        removed_bytes: Their total size.
        kept: Artifacts kept because a stored payload names them.
        kept_bytes: Their total size.
        too_recent: Unnamed artifacts kept because they were written within the grace period
            (a worker may be about to save the record naming them).
        dry_run: Whether nothing was removed (the counts say what would have been).
        has_store: Whether the storage keeps artifacts at all.
        flows: The flows deleted (by :meth:`~pyergon.management.FlowManager.delete` and
            ``prune``), or that a dry run would delete.
        shared_with: Other logs that keep artifacts in the same store: then flows are deleted
            but no artifact is removed, since this log cannot tell which theirs still need.
    """

    removed: int = 0
    removed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0
    too_recent: int = 0
    dry_run: bool = False
    has_store: bool = True
    flows: tuple[str, ...] = ()
    shared_with: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line saying what was (or would be) deleted, removed and kept."""
        would = "would " if self.dry_run else ""
        parts = []
        if self.flows:
            plural = "s" if len(self.flows) != 1 else ""
            parts.append(f"{would}delete {len(self.flows)} flow{plural}")
            if not self.dry_run:
                parts[-1] = f"deleted {len(self.flows)} flow{plural}"
        if not self.has_store:
            parts.append("the storage keeps no artifacts (no artifact store): nothing to remove")
            return "; ".join(parts)
        if self.shared_with:
            parts.append(
                "no artifact removed: the store is shared with "
                f"{', '.join(self.shared_with)} (see pyergon gc)"
            )
            return "; ".join(parts)
        removed = f"{self.removed} artifact{'s' if self.removed != 1 else ''}"
        verb = "would remove" if self.dry_run else "removed"
        parts.append(f"{verb} {removed} ({format_size(self.removed_bytes)})")
        parts.append(f"kept {self.kept} in use ({format_size(self.kept_bytes)})")
        if self.too_recent:
            parts.append(f"kept {self.too_recent} written too recently to remove")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"GcReport({self.summary()})"

    def _repr_html_(self) -> str:
        label = "dry run: " if self.dry_run else ""
        return f"<span>{html.escape(label + self.summary())}</span>"


def seconds(duration: float | timedelta, name: str = "older_than") -> float:
    """``duration`` in seconds, checked to be a number >= 0.

    Raises:
        ValueError: It is negative or not a number.
    """
    value = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if not value >= 0:  # NaN too
        raise ValueError(f"{name} must be 0 seconds or more, got {duration!r}")
    return value


async def collect_artifacts(
    storage: ExecutionLog,
    *,
    dry_run: bool = False,
    older_than: float | timedelta = DEFAULT_GRACE,
    now: float | None = None,
    only: Collection[str] | None = None,
    released: Collection[str] = (),
) -> GcReport:
    """Remove the artifacts no stored payload names, safely while workers run.

    The store is listed first, then the log's references are read, then what is unnamed and
    was last written more than ``older_than`` seconds ago is removed (with
    ``unless_modified_after``, so an artifact written again meanwhile stays); leftovers of
    interrupted writes (``tmp/...``) older than that go too. A worker saves the record naming a
    new artifact right after writing it (:mod:`pyergon.executor._steps`): an artifact listed
    before its record was saved is younger than the grace period, so it stays; one written
    after the listing is not in it. Keep ``older_than`` above the longest time a step's
    result takes from written to saved (the default, 5 minutes, is far above it).

    Args:
        storage: The storage whose artifact store (``storage.artifacts``) is collected.
        dry_run: Remove nothing; report what would be removed.
        older_than: The grace period, in seconds or as a ``timedelta``.
        now: The current time (epoch seconds, as file times are); defaults to the system clock.
        only: Consider only these artifacts (hex digests): those of deleted flows.
        released: Digests to count as unnamed although the log names them: those of flows a
            dry run would delete.

    Returns:
        What was removed and kept; says so when the storage keeps no artifacts.

    Raises:
        ValueError: ``older_than`` is negative.
    """
    grace = seconds(older_than)
    store: ArtifactStore | None = getattr(storage, "artifacts", None)
    if store is None:
        return GcReport(dry_run=dry_run, has_store=False)
    others = await _other_owners(storage, store)
    if others:
        raise ArtifactError(
            f"the artifacts at {store.location} are shared with other logs "
            f"({', '.join(sorted(others))}): this log's references cannot tell which of their "
            "artifacts are still needed, so nothing was removed. Give each log its own artifacts "
            f"location; if a log named here is gone, delete its file in "
            f"{store.location}/{OWNERS_DIRECTORY}/"
        )
    cutoff = (time.time() if now is None else now) - grace
    listed = await asyncio.to_thread(lambda: list(store.list()))  # first: see the docstring
    named = await storage.artifact_references() - set(released)
    chosen = None if only is None else set(only)
    kept: list[StoredArtifact] = []
    recent: list[StoredArtifact] = []
    unnamed: list[StoredArtifact] = []
    for artifact in listed:
        leftover = artifact.hex.startswith(_TEMPORARY)
        if chosen is not None and (leftover or artifact.hex not in chosen):
            continue
        if artifact.hex in named:
            kept.append(artifact)
        elif artifact.modified_at > cutoff:
            recent.append(artifact)
        else:
            unnamed.append(artifact)
    removed = unnamed
    if not dry_run:
        removed = await asyncio.to_thread(_remove, store, unnamed, cutoff)
    return GcReport(
        removed=len(removed),
        removed_bytes=sum(artifact.size for artifact in removed),
        kept=len(kept),
        kept_bytes=sum(artifact.size for artifact in kept),
        too_recent=len(recent) + len(unnamed) - len(removed),
        dry_run=dry_run,
    )


def _remove(
    store: ArtifactStore, artifacts: Iterable[StoredArtifact], cutoff: float
) -> list[StoredArtifact]:
    """Remove ``artifacts`` not written since ``cutoff``; return those removed."""
    return [
        artifact
        for artifact in artifacts
        if store.remove(artifact.hex, unless_modified_after=cutoff)
    ]


async def flow_tree(storage: ExecutionLog, flow: ScheduledFlow) -> list[ScheduledFlow]:
    """``flow`` and its child flows at any depth, children before their parents."""
    children = [child async for child in iter_flows(storage, parent_flow_id=flow.flow_id)]
    tree: list[ScheduledFlow] = []
    for child in children:
        tree += await flow_tree(storage, child)
    return [*tree, flow]


async def _named_by(storage: ExecutionLog, flows: Iterable[ScheduledFlow]) -> set[str]:
    """The digests the payloads of ``flows`` (their records and signals too) name."""
    digests: set[str] = set()
    for flow in flows:
        records = await storage.load_invocations(flow.flow_id)
        signals = await storage.list_signals(flow.flow_id)
        digests |= referenced_digests(payloads_of([flow], records, signals))
    return digests


def _refuse_running(tree: list[ScheduledFlow], flow_id: str) -> None:
    for member in tree:
        if member.status is TaskStatus.RUNNING:
            whose = "" if member.flow_id == flow_id else f" (its child {member.flow_id!r} is)"
            raise FlowStateError(
                flow_id,
                f"flow {flow_id!r} is running{whose}; cancel it or wait until it stops, then "
                "delete it",
            )


async def delete_flows(
    storage: ExecutionLog,
    flow_ids: Iterable[str],
    *,
    dry_run: bool = False,
    grace: float | timedelta = DEFAULT_GRACE,
) -> GcReport:
    """Delete flows with their child flows, then the artifacts only they named.

    Every flow is checked before any is deleted; a flow's children are deleted before it, so
    an interrupted delete leaves the flow to delete again.

    Args:
        storage: Where the flows are.
        flow_ids: The flows to delete.
        dry_run: Delete nothing; report what would go (artifacts the flows name count as
            released, as if no other flow named them).
        grace: Artifacts written within this many seconds stay (see :func:`collect_artifacts`).

    Returns:
        The flows deleted and the artifacts removed.

    Raises:
        FlowNotFoundError: One of the flows does not exist.
        FlowStateError: One of the flows, or one of its children, is running.
    """
    trees = []
    for flow_id in dict.fromkeys(flow_ids):
        flow = await storage.get_flow(flow_id)
        if flow is None:
            raise FlowNotFoundError(flow_id)
        tree = await flow_tree(storage, flow)
        _refuse_running(tree, flow_id)
        trees.append(tree)
    return await _delete_trees(storage, trees, dry_run=dry_run, grace=grace)


async def _delete_trees(
    storage: ExecutionLog,
    trees: list[list[ScheduledFlow]],
    *,
    dry_run: bool,
    grace: float | timedelta,
) -> GcReport:
    flows = [flow for tree in trees for flow in tree]
    candidates = await _named_by(storage, flows)
    store: ArtifactStore | None = getattr(storage, "artifacts", None)
    shared = () if store is None else tuple(sorted(await _other_owners(storage, store)))
    if not dry_run:
        for flow in flows:
            await storage.delete_flow(flow.flow_id)
    if shared:  # the flows go; which artifacts the other logs need, this one cannot tell
        ids = tuple(dict.fromkeys(flow.flow_id for flow in flows))
        return GcReport(dry_run=dry_run, flows=ids, shared_with=shared)
    report = await collect_artifacts(
        storage,
        dry_run=dry_run,
        older_than=grace,
        only=candidates,
        released=candidates if dry_run else (),
    )
    ids = tuple(dict.fromkeys(flow.flow_id for flow in flows))
    return GcReport(
        report.removed,
        report.removed_bytes,
        report.kept,
        report.kept_bytes,
        report.too_recent,
        dry_run,
        report.has_store,
        ids,
    )


async def prune_flows(
    storage: ExecutionLog,
    older_than: float | timedelta,
    *,
    statuses: Collection[TaskStatus] | None = None,
    flow_type: str | None = None,
    dry_run: bool = False,
    grace: float | timedelta = DEFAULT_GRACE,
    now: float | None = None,
) -> GcReport:
    """Delete the flows that ended (or last changed) more than ``older_than`` ago.

    Only top-level flows are chosen; each goes with its child flows. A flow with a running
    child is left alone.

    Args:
        storage: Where the flows are.
        older_than: How long ago a flow was last updated, in seconds or as a ``timedelta``.
        statuses: Which statuses to prune; defaults to the final ones (``COMPLETE``,
            ``FAILED``, ``CANCELLED``). ``RUNNING`` is refused.
        flow_type: Only flows of this type.
        dry_run: Delete nothing; report what would go.
        grace: Artifacts written within this many seconds stay (see :func:`collect_artifacts`).
        now: The current time of the flows' clock (epoch seconds); defaults to the system
            clock. Artifacts' times are always the system clock's.

    Raises:
        ValueError: ``older_than`` is negative, or ``statuses`` holds ``RUNNING``.
    """
    age = seconds(older_than)
    chosen = _FINAL if statuses is None else frozenset(TaskStatus(s) for s in statuses)
    if TaskStatus.RUNNING in chosen:
        raise ValueError("prune never deletes running flows; leave RUNNING out of statuses")
    cutoff = (time.time() if now is None else now) - age
    old = [
        flow
        async for flow in iter_flows(
            storage, status=chosen, flow_type=flow_type, created_before=cutoff
        )
        if flow.updated_at < cutoff and flow.parent_flow_id is None
    ]
    trees = []
    for flow in old:
        tree = await flow_tree(storage, flow)
        if all(member.status is not TaskStatus.RUNNING for member in tree):
            trees.append(tree)
    return await _delete_trees(storage, trees, dry_run=dry_run, grace=grace)


async def _other_owners(storage: ExecutionLog, store: ArtifactStore) -> set[str]:
    """The logs besides ``storage`` that keep artifacts in ``store``."""
    return await asyncio.to_thread(store.owners) - {log_identity(storage)}
