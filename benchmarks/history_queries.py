"""The ``history_queries`` scenario: listing pages and a records DataFrame over a large history.

Per run: ``n`` flows and ``n`` step records are bulk-loaded (``bulk.py``); then each listing is
run once to warm up and ``QUERY_REPEATS`` times timed, and its median is the run's number: the
first page of ``list_flows(FlowQuery(limit=50))``, the page after a cursor 90 % of the way down,
the first page filtered by status (``FAILED``, 8 % of the flows) and by type (one of four); the
untimed call's flow ids are checked against the loaded history. Last, the records are read back
with ``load_invocations`` (50 flows at a time) and turned into a DataFrame with
``pyergon.history.invocations_frame`` (pandas imported beforehand, as in a notebook).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from benchmarks import bulk
from benchmarks.backends import fresh_storage
from benchmarks.result import RunResult
from pyergon.core import FlowQuery
from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.history import invocations_frame
from pyergon.storage.base import ExecutionLog

__all__ = ["PAGE", "history_queries"]

PAGE = 50
QUERY_REPEATS = 20
DEEP_FRACTION = 0.9
LOAD_CONCURRENCY = 50
TARGETS = {"page_ms": 50, "frame_s": 2}


async def _median_ms(
    query: Callable[[], Awaitable[list[ScheduledFlow]]], expected: list[ScheduledFlow]
) -> float:
    """The median of ``QUERY_REPEATS`` timings of ``query`` after one untimed, checked call."""
    got = [flow.flow_id for flow in await query()]
    if got != [flow.flow_id for flow in expected[:PAGE]]:
        raise RuntimeError(f"a listing returned {got[:3]}..., not the page expected")
    samples = []
    for _ in range(QUERY_REPEATS):
        started = time.perf_counter()
        await query()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _load_records(storage: ExecutionLog, flow_ids: list[str]) -> list[Invocation]:
    slots = asyncio.Semaphore(LOAD_CONCURRENCY)

    async def load(flow_id: str) -> list[Invocation]:
        async with slots:
            return await storage.load_invocations(flow_id)

    pages = await asyncio.gather(*(load(flow_id) for flow_id in flow_ids))
    return [record for page in pages for record in page]


async def history_queries(backend: str, n: int) -> RunResult:
    """Bulk-load ``n`` flows and ``n`` records, then time listings and the records frame."""
    import pandas  # noqa: F401 - imported before the frame is timed, as a notebook has it

    history = bulk.make_history(n, n)
    newest_first = history.flows[::-1]
    deep_rank = int(n * DEEP_FRACTION)
    deep = newest_first[deep_rank]
    async with fresh_storage(backend) as fresh:
        storage = fresh.storage
        loading = time.perf_counter()
        await bulk.load(fresh, history)
        bulk_load_s = time.perf_counter() - loading
        stored = sum((await storage.count_flows()).values())
        if stored != n:
            raise RuntimeError(f"{stored} flows stored after loading {n}")
        started = time.perf_counter()
        pages = {
            "first_page_ms": await _median_ms(
                lambda: storage.list_flows(FlowQuery(limit=PAGE)), newest_first
            ),
            "deep_page_ms": await _median_ms(
                lambda: storage.list_flows(FlowQuery(limit=PAGE, after=FlowCursor.after(deep))),
                newest_first[deep_rank + 1 :],
            ),
            "status_page_ms": await _median_ms(
                lambda: storage.list_flows(FlowQuery(status=TaskStatus.FAILED, limit=PAGE)),
                [flow for flow in newest_first if flow.status is TaskStatus.FAILED],
            ),
            "type_page_ms": await _median_ms(
                lambda: storage.list_flows(FlowQuery(flow_type=bulk.FLOW_TYPES[0], limit=PAGE)),
                [flow for flow in newest_first if flow.flow_type == bulk.FLOW_TYPES[0]],
            ),
        }
        loading = time.perf_counter()
        flow_ids = list(dict.fromkeys(record.flow_id for record in history.invocations))
        records = await _load_records(storage, flow_ids)
        load_s = time.perf_counter() - loading
        framing = time.perf_counter()
        frame = invocations_frame(records)
        frame_s = time.perf_counter() - framing
        wall = time.perf_counter() - started
    if len(frame) != n:
        raise RuntimeError(f"the frame has {len(frame)} rows, expected {n}")
    return RunResult(
        wall,
        extra={
            **pages,
            "records_load_s": load_s,
            "frame_s": frame_s,
            "frame_rows": len(frame),
            "bulk_load_s": bulk_load_s,
            "targets": TARGETS,
        },
    )
