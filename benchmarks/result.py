"""What one run of a scenario measured, and the JSON line that sums up several runs."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyergon
from benchmarks.stats import machine, peak_rss_mb, percentiles, summarize

__all__ = ["RunResult", "error_line", "result_line"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run: its wall time, how much work it did and any per-item latencies.

    Attributes:
        wall_s: Seconds the measured part took.
        flows: Flows finished in that time (0 where throughput means nothing).
        steps: Steps executed in that time.
        latencies_ms: Per-item samples (per flow, per timer, per signal), pooled over runs.
        extra: Scenario-specific numbers (medians over runs are reported) or facts.
        totals: Scenario-specific counts reported as their sum over runs, where one bad run
            must show (a median of three would hide it).
        worker_peak_rss_mb: The largest worker process's peak RSS, where workers ran apart.
    """

    wall_s: float
    flows: int = 0
    steps: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    worker_peak_rss_mb: float | None = None


def result_line(
    scenario: str,
    backend: str,
    n: int,
    runs: list[RunResult],
    *,
    latency_of: str | None,
    variant: str | None = None,
    loads_before_runs: list[float] | None = None,
) -> dict[str, Any]:
    """The JSON-ready summary of ``runs``: medians over runs, latency percentiles over samples.

    ``loads_before_runs``: the machine's 1-minute load average before each run, kept as a list.
    """
    line: dict[str, Any] = {
        "scenario": scenario,
        "backend": backend,
        **_variant(variant),
        "n": n,
        "runs": len(runs),
        "wall_s": summarize([run.wall_s for run in runs]),
    }
    if all(run.flows for run in runs):
        line["flows_per_s"] = summarize([run.flows / run.wall_s for run in runs], digits=1)
        line["steps_per_s"] = summarize([run.steps / run.wall_s for run in runs], digits=1)
    samples = [sample for run in runs for sample in run.latencies_ms]
    if samples:
        line["latency_ms"] = percentiles(samples)
        line["latency_of"] = latency_of
    for key in runs[-1].extra:
        values = [run.extra[key] for run in runs]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        line[key] = round(statistics.median(values), 3) if numeric else values[-1]
    for key in runs[-1].totals:
        line[key] = sum(run.totals[key] for run in runs)
    line["peak_rss_mb"] = peak_rss_mb()
    worker_peaks = [run.worker_peak_rss_mb for run in runs if run.worker_peak_rss_mb is not None]
    if worker_peaks:
        line["worker_peak_rss_mb"] = max(worker_peaks)
    if loads_before_runs:
        line["load_avg_1m_before_runs"] = loads_before_runs
    return line | _context()


def error_line(
    scenario: str, backend: str, error: str, *, variant: str | None = None
) -> dict[str, Any]:
    """The line reported instead of numbers when a scenario could not run."""
    return {
        "scenario": scenario,
        "backend": backend,
        **_variant(variant),
        "error": error,
    } | _context()


def _variant(variant: str | None) -> dict[str, str]:
    """The ``variant`` field, in the lines of scenarios that have variants only."""
    return {"variant": variant} if variant is not None else {}


def _context() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "pyergon": pyergon.__version__,
        "commit": _commit(),
        "machine": machine(),
        # Other work on the machine skews the numbers; this says how busy it was.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _commit() -> str | None:
    """The checked-out commit (the working tree may differ from it), if this is a git clone."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip() or None
