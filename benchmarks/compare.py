"""``python -m benchmarks --compare dbos``: the ``executor_sequential`` workload on DBOS Transact.

DBOS is installed with pip into its own venv, ``benchmarks/.venv-dbos`` (made on first use; the
project's environment and lock stay as they are), and ``peers/dbos_workload.py`` runs there: N
workflows of three trivial steps, one after another, on DBOS's SQLite system database, one fresh
database and process per run, with DBOS's synchronous API (its faster one here). It runs twice:
with DBOS's SQLite settings (``peer_sqlite: default``: a rollback journal and an fsync per
commit) and with pyergon's (``wal``: WAL, ``synchronous=NORMAL``). Each line has the shape of the
others plus the pyergon line it is compared with (``executor_sequential`` on SQLite, same N and
runs, run just before) and the ratio of the throughputs. When DBOS cannot be installed or run,
the line says why instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.direct import STEPS_PER_FLOW
from benchmarks.result import RunResult, error_line, result_line

__all__ = ["PEERS", "compare"]

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-dbos"
WORKLOAD = HERE / "peers" / "dbos_workload.py"
SCENARIO = "compare_dbos"
MATCHING = ("executor_sequential", "sqlite")
SIZES = {"default": 500, "quick": 100}
STYLE = "sync"
"""DBOS's synchronous API: about a quarter faster here than its async one."""
SQLITE_MODES = ("default", "wal")
INSTALL_TIMEOUT = 900.0
PEERS = ("dbos",)

RunLine = Callable[[str, str, argparse.Namespace], dict[str, Any]]


class PeerError(RuntimeError):
    """DBOS could not be installed or its workload failed."""


def _venv_python() -> Path:
    """The DBOS venv's interpreter, after making the venv and installing DBOS if needed."""
    python = VENV / "bin" / "python"
    if python.exists() and _run([str(python), "-c", "import dbos"], 60).returncode == 0:
        return python
    print(f"installing DBOS into {VENV} (first use)", file=sys.stderr, flush=True)
    for command in (
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "dbos"],
    ):
        done = _run(command, INSTALL_TIMEOUT)
        if done.returncode != 0:
            raise PeerError(f"{' '.join(command[:4])} failed: {done.stderr.strip()[-1500:]}")
    (VENV / ".gitignore").write_text("*\n")  # nothing of the venv belongs in the repository
    print(f"DBOS is installed in {VENV}", file=sys.stderr, flush=True)
    return python


def _run(
    command: list[str], timeout: float, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise PeerError(f"{' '.join(command[:4])} timed out after {timeout} s") from error


def _dbos_run(python: Path, n: int, mode: str, timeout: float) -> dict[str, Any]:
    """One run of the workload on a new SQLite database; its JSON report."""
    with tempfile.TemporaryDirectory(prefix="pyergon-bench-dbos-") as directory:
        command = [str(python), str(WORKLOAD), directory, str(n), "--style", STYLE]
        command += ["--sqlite", mode]
        done = _run(command, timeout, cwd=directory)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise PeerError(f"the DBOS workload failed: {done.stderr.strip()[-1500:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def _dbos_line(python: Path, n: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    reports = []
    for number in range(1, args.runs + 1):
        reports.append(_dbos_run(python, n, mode, args.timeout))
        wall = reports[-1]["wall_s"]
        print(
            f"  DBOS ({mode} SQLite), run {number}/{args.runs}: {wall:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    runs = [
        RunResult(report["wall_s"], n, n * STEPS_PER_FLOW, report["latencies_ms"])
        for report in reports
    ]
    line = result_line(SCENARIO, "sqlite", n, runs, latency_of="run time of one workflow")
    peaks = [report["peak_rss_mb"] for report in reports if report["peak_rss_mb"]]
    line["peak_rss_mb"] = max(peaks, default=None)  # the DBOS process's, not the harness's
    return line | {
        "peer": "dbos",
        "peer_version": reports[-1]["dbos_version"],
        "peer_style": reports[-1]["style"],
        "peer_sqlite": mode,
        "peer_python": str(python),
    }


def compare(peer: str, args: argparse.Namespace, run_line: RunLine) -> list[dict[str, Any]]:
    """The pyergon line and the peer's line with the throughput ratio (or an error line)."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose one of {', '.join(PEERS)}")
    n = args.n or SIZES["quick" if args.quick else "default"]
    ours = run_line(*MATCHING, argparse.Namespace(**{**vars(args), "n": n}))
    print(f"[compare] {peer}: {n} sequential workflows", file=sys.stderr, flush=True)
    try:
        python = _venv_python()
    except PeerError as error:
        return [ours, error_line(SCENARIO, "sqlite", str(error))]
    lines = [ours]
    for mode in SQLITE_MODES:
        try:
            theirs = _dbos_line(python, n, mode, args)
        except PeerError as error:
            lines.append(error_line(SCENARIO, "sqlite", f"{mode} SQLite: {error}"))
            continue
        if "flows_per_s" in ours:
            pyergon, dbos = ours["flows_per_s"]["median"], theirs["flows_per_s"]["median"]
            theirs["compared_with"] = {"scenario": MATCHING[0], "pyergon_flows_per_s": pyergon}
            theirs["ratio_pyergon_over_dbos"] = round(pyergon / dbos, 2)
        lines.append(theirs)
    return lines
