"""The scenario table: name, backends it applies to, default and quick sizes, what it runs."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks import (
    artifacts,
    cancels,
    chaos,
    dag_pipeline,
    direct,
    floor,
    hashing,
    history_queries,
    imports,
    kernel_cells,
    queued,
    recovery,
    resources,
    sync_steps,
    views,
)
from benchmarks.result import RunResult

__all__ = ["NO_BACKEND", "SCENARIOS", "Scenario"]

ALL_BACKENDS = ("memory", "sqlite", "redis", "postgres")
SHARED_BACKENDS = ("sqlite", "redis", "postgres")
NO_BACKEND = "none"
"""The backend of scenarios that use no storage."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """One benchmark.

    Attributes:
        name: What ``--scenario`` selects.
        backends: The backends it runs on (``("none",)`` for storage-free scenarios).
        run_once: Runs it once on a backend with size ``n``.
        local_n: Default ``n`` on memory and SQLite.
        server_n: Default ``n`` on Redis and PostgreSQL.
        quick_n: ``n`` under ``--quick``.
        latency_of: What the latency samples are, if any.
        variants: Ways of running it that give a line each (``--variant``); ``run_once`` then
            takes the variant as the keyword argument ``variant``.
    """

    name: str
    backends: tuple[str, ...]
    run_once: Callable[..., Awaitable[RunResult]]
    local_n: int
    server_n: int
    quick_n: int
    latency_of: str | None = None
    variants: tuple[str, ...] = ()

    def size(self, backend: str, *, quick: bool) -> int:
        """The default ``n`` for ``backend``."""
        if quick:
            return self.quick_n
        return self.server_n if backend in ("redis", "postgres") else self.local_n

    def runner(self, variant: str | None) -> Callable[[str, int], Awaitable[RunResult]]:
        """What runs it once on ``(backend, n)``: of ``variant``, if it has variants."""
        if not self.variants:
            if variant is not None:
                raise ValueError(f"{self.name} has no variants; leave out --variant")
            return self.run_once
        if variant not in self.variants:
            raise ValueError(f"{self.name} needs --variant, one of {', '.join(self.variants)}")
        return functools.partial(self.run_once, variant=variant)


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "executor_sequential",
            ALL_BACKENDS,
            direct.sequential,
            2000,
            1000,
            100,
            latency_of="run time of one flow",
        ),
        Scenario(
            "executor_concurrent",
            ALL_BACKENDS,
            direct.concurrent,
            2000,
            1000,
            100,
            latency_of="run time of one flow, 50 in flight",
        ),
        Scenario(
            "workers_1proc",
            SHARED_BACKENDS,
            functools.partial(queued.drain, processes=1),
            2000,
            2000,
            100,
        ),
        Scenario(
            "workers_2proc",
            SHARED_BACKENDS,
            functools.partial(queued.drain, processes=2),
            2000,
            2000,
            100,
        ),
        Scenario("heartbeat_cost", SHARED_BACKENDS, queued.heartbeat_cost, 2000, 2000, 100),
        Scenario(
            "timer_lateness",
            ALL_BACKENDS,
            queued.timer_lateness,
            100,
            100,
            20,
            latency_of="timer lateness: continued-at minus fire_at",
        ),
        Scenario(
            "signal_latency",
            ALL_BACKENDS,
            queued.signal_latency,
            100,
            100,
            20,
            latency_of="signal to resume: resumed-at minus sent_at",
        ),
        Scenario(
            "cancel_latency",
            ALL_BACKENDS,
            cancels.cancel_latency,
            40,
            40,
            20,
            latency_of="cancel request to CANCELLED, flows running 2 ms steps",
        ),
        Scenario("import_time", (NO_BACKEND,), imports.import_time, 5, 5, 2),
        Scenario("argument_hash", (NO_BACKEND,), hashing.argument_hash, 200, 200, 10),
        Scenario(
            "large_result",
            ("sqlite", "postgres"),
            artifacts.large_result,
            200,
            200,
            10,
            variants=artifacts.VARIANTS,
        ),
        Scenario(
            "history_queries",
            SHARED_BACKENDS,
            history_queries.history_queries,
            100_000,
            100_000,
            2_000,
        ),
        Scenario(
            "suspended_memory", SHARED_BACKENDS, resources.suspended_memory, 10_000, 10_000, 300
        ),
        Scenario(
            "recovery_time",
            SHARED_BACKENDS,
            recovery.recovery_time,
            200,
            200,
            200,
            latency_of="kill to complete, per flow the killed worker held",
        ),
        Scenario("chaos", SHARED_BACKENDS, chaos.chaos, 400, 250, 60),
        Scenario("idle_cpu", ALL_BACKENDS, resources.idle_cpu, 5, 5, 2),
        Scenario(
            "machine_floor",
            (NO_BACKEND, *SHARED_BACKENDS),
            floor.machine_floor,
            5000,
            2000,
            500,
            latency_of="one bare durable write: commit or round trip",
        ),
        Scenario(
            "cell_latency",
            ("sqlite",),
            kernel_cells.cell_latency,
            10,
            10,
            2,
            latency_of="a 1 + 1 cell's request to reply while the CPU step runs",
            variants=kernel_cells.VARIANTS,
        ),
        Scenario(
            "sync_step_overhead",
            ("memory", "sqlite"),
            sync_steps.sync_step_overhead,
            1000,
            1000,
            100,
        ),
        Scenario("sync_steps_flow", ALL_BACKENDS, sync_steps.sync_steps_flow, 1000, 1000, 100),
        Scenario("dag_pipeline", ("memory", "sqlite"), dag_pipeline.dag_pipeline, 10, 10, 2),
        Scenario("views_render", ("memory",), views.views_render, 2_000, 2_000, 200),
        Scenario(
            "monitor_refresh", SHARED_BACKENDS, views.monitor_refresh, 100_000, 100_000, 2_000
        ),
        Scenario("views_large_result", ("sqlite",), views.views_large_result, 200, 200, 5),
    )
}
