"""How ``pyergon workers`` shows the workers storage has records of: a rich table, or JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyergon.cli._views import format_duration, format_time
from pyergon.core.workers import WorkerRecord, WorkerState, worker_state

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["workers_json", "workers_table"]

_STATE_STYLES = {
    WorkerState.LIVE: "green",
    WorkerState.STOPPED: "dim",
    WorkerState.DEAD: "bold red",
}


def workers_table(workers: Sequence[WorkerRecord], running: Mapping[str, int], now: float) -> Table:
    """One row per worker: state, where it runs, what it serves, its last beat and flows."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    table.add_column("id", overflow="fold", min_width=2)
    table.add_column("state", no_wrap=True)
    table.add_column("host", overflow="fold")
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("last beat", justify="right", no_wrap=True)
    table.add_column("running", justify="right", no_wrap=True)
    table.add_column("flow types", overflow="fold")
    for worker in workers:
        state = worker_state(worker, now)
        table.add_row(
            escape(worker.worker_id),
            f"[{_STATE_STYLES[state]}]{state.value}[/]",
            escape(worker.host),
            str(worker.pid),
            format_time(worker.started_at),
            f"{format_duration(max(now - worker.last_beat, 0.0))} ago",
            str(running.get(worker.worker_id, 0)),
            escape(", ".join(worker.flow_types)),
        )
    return table


def workers_json(
    workers: Sequence[WorkerRecord], running: Mapping[str, int], now: float
) -> list[dict[str, Any]]:
    """The workers as plain dicts: times as epoch seconds, ``seconds_since_beat``."""
    return [
        {
            "worker_id": worker.worker_id,
            "state": worker_state(worker, now).value,
            "host": worker.host,
            "pid": worker.pid,
            "started_at": worker.started_at,
            "last_beat": worker.last_beat,
            "seconds_since_beat": max(now - worker.last_beat, 0.0),
            "stopped_at": worker.stopped_at,
            "lease_seconds": worker.lease_seconds,
            "flow_types": list(worker.flow_types),
            "running_flows": running.get(worker.worker_id, 0),
        }
        for worker in workers
    ]
