"""Numbers for the result lines: summaries over runs, latency percentiles, RSS, the machine."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence

__all__ = [
    "busy_cpu_seconds",
    "cpu_seconds",
    "machine",
    "peak_rss_mb",
    "percentiles",
    "rss_mb",
    "summarize",
]


def summarize(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max of one number measured in each run."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of latency samples (interpolated between the nearest samples)."""
    if len(samples) == 1:
        only = round(samples[0], 3)
        return {"p50": only, "p95": only, "max": only}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3), "max": round(max(samples), 3)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is ``VmHWM``: ``ru_maxrss`` would also count the memory of the parent that
    spawned us, which the kernel carries over exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def rss_mb(pid: int) -> float:
    """The current resident set size (``VmRSS``) of process ``pid`` in MiB (Linux only)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used so far (Linux only)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces; the fields after it are plain numbers.
        fields = stat.read().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle so far, summed over its cores (Linux).

    Idle and I/O-wait time are left out; so is ``steal``, time the hypervisor gave elsewhere.
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq ...
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "platform": platform.platform()}
