"""The ``import_time`` scenario: what ``import pyergon`` costs a fresh interpreter.

Per run: the median of ``n`` timings of ``python -c "import pyergon"`` minus the median of
``python -c "pass"``, the cumulative time ``-X importtime`` reports for ``pyergon``, and whether
heavy optional modules (pandas, IPython, ipywidgets) came in with it (they must not).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from benchmarks.result import RunResult

__all__ = ["HEAVY_MODULES", "import_time"]

HEAVY_MODULES = ("pandas", "IPython", "ipywidgets")

_REPORT_AFTER_IMPORT = f"""
import json, sys
import pyergon
heavy = {{name: name in sys.modules for name in {HEAVY_MODULES!r}}}
with open("/proc/self/status") as status:  # VmHWM: this process's own peak RSS
    kib = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
print(json.dumps([heavy, round(kib / 1024, 1) if kib else None]))
"""


async def _python(*arguments: str) -> tuple[float, bytes, bytes]:
    """Run the interpreter; return its wall time, stdout and stderr."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"python {' '.join(arguments)} failed: {err.decode()[-2000:]}")
    return wall, out, err


def _cumulative_us(importtime_report: str, module: str) -> int:
    """The cumulative microseconds ``-X importtime`` reports for ``module``."""
    for line in importtime_report.splitlines():
        # "import time:      self [us] |  cumulative | imported package"
        _, _, numbers = line.partition("import time:")
        fields = [part.strip() for part in numbers.split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1])
    raise RuntimeError(f"-X importtime did not report {module!r}")


async def import_time(_backend: str, n: int) -> RunResult:
    """Time ``n`` fresh interpreters importing pyergon against ``n`` doing nothing."""
    importing, empty, reported = [], [], []
    for _ in range(n):
        importing.append((await _python("-c", "import pyergon"))[0])
        empty.append((await _python("-c", "pass"))[0])
        _, _, err = await _python("-X", "importtime", "-c", "import pyergon")
        reported.append(_cumulative_us(err.decode(), "pyergon") / 1000)
    _, out, _ = await _python("-c", _REPORT_AFTER_IMPORT)
    heavy, imported_rss = json.loads(out)
    cost = statistics.median(importing) - statistics.median(empty)
    return RunResult(
        cost,
        extra={
            "import_ms": cost * 1000,
            "importtime_ms": statistics.median(reported),
            "heavy_modules_imported": heavy,
            "imported_peak_rss_mb": imported_rss,
        },
    )
