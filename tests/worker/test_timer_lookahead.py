"""A worker prepares flows whose timers are about to fire, and continues them on time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pyergon import Scheduler, Worker, flow, flow_type, schedule_timer, step
from pyergon.core import ClaimRequest, OperationKind
from pyergon.storage.base import ClaimedRun, ExecutionLog


@dataclass
@flow_type
class ShortNap:
    @step
    async def woke_at(self) -> float:
        return time.time()

    @flow
    async def run(self) -> float:
        await schedule_timer(0.2)
        return await self.woke_at()


class ClaimLog:
    """Wraps a storage and keeps the times each claim was made with (``now``, ``due_by``)."""

    def __init__(self, storage: ExecutionLog) -> None:
        self._storage = storage
        self.claims: list[tuple[float, float | None]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        self.claims.append((request.now, request.due_by))
        return await self._storage.claim(request)


async def test_a_worker_claims_timers_ahead_and_continues_them_not_before_their_time(
    storage: ExecutionLog,
) -> None:
    watched = ClaimLog(storage)
    worker = Worker(watched, "w-lookahead")  # type: ignore[arg-type]
    await worker.register(ShortNap)
    handle = await worker.start()
    try:
        flow_id = await Scheduler(storage).schedule(ShortNap(), "nap")
        outcome = (await Scheduler(storage).wait([flow_id], timeout=30))[flow_id]
    finally:
        await handle.shutdown()

    timer = next(r for r in await storage.load_invocations("nap") if r.kind is OperationKind.TIMER)
    assert timer.fire_at is not None
    assert outcome.unwrap() >= timer.fire_at  # a timer never fires early
    assert watched.claims
    assert all(due_by is not None and due_by > now for now, due_by in watched.claims)
