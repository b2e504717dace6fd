"""``python -m benchmarks``: run the chosen scenarios, one JSON line per scenario and backend.

Each line comes from a fresh ``python -m benchmarks.one`` process (its own peak RSS, no state
left from earlier scenarios). Lines go to stdout (and ``--out``); progress goes to stderr. A
scenario that fails or times out gives a line with an ``error`` field and the rest go on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.backends import BACKENDS
from benchmarks.compare import PEERS, compare
from benchmarks.result import error_line
from benchmarks.scenarios import NO_BACKEND, SCENARIOS

REPO_ROOT = Path(__file__).resolve().parent.parent
KILL_GRACE = 20.0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run pyergon's benchmarks; print one JSON line per scenario and backend.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="run on this backend (repeatable; default: all)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        help="of scenarios with variants, run this one (repeatable; default: all)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per line (default 3)")
    parser.add_argument("--n", type=int, help="flows (or samples) per run, for every scenario")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--out", type=Path, help="also append the lines to this file")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per line before it is stopped"
    )
    parser.add_argument(
        "--compare",
        choices=PEERS,
        help="instead of the scenarios, run executor_sequential on SQLite and the same "
        "workload on this other engine (installed into its own venv on first use)",
    )
    return parser.parse_args(argv)


def plan(
    scenarios: list[str] | None,
    backends: list[str] | None,
    variants: list[str] | None = None,
) -> list[tuple[str, str, str | None]]:
    """The (scenario, backend, variant) lines to run, in table order.

    The variant is ``None`` for scenarios without variants; ``variants`` only filters those
    with variants.
    """
    chosen = set(backends or BACKENDS) | {NO_BACKEND}
    return [
        (scenario.name, backend, variant)
        for scenario in SCENARIOS.values()
        if scenarios is None or scenario.name in scenarios
        for backend in scenario.backends
        if backend in chosen
        for variant in (scenario.variants or (None,))
        if variant is None or variants is None or variant in variants
    ]


def run_line(
    scenario: str, backend: str, args: argparse.Namespace, variant: str | None = None
) -> dict[str, Any]:
    """Run one scenario on one backend (of ``variant``) in a child process; return its line."""
    command = [sys.executable, "-m", "benchmarks.one", scenario, backend, "--runs", str(args.runs)]
    if args.n:
        command += ["--n", str(args.n)]
    if args.quick:
        command.append("--quick")
    if variant is not None:
        command += ["--variant", variant]
    # A session of its own, so a timeout can stop the worker processes the child started.
    child = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, _ = child.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        _stop_group(child)
        return error_line(scenario, backend, f"timed out after {args.timeout} s", variant=variant)
    except BaseException:
        _stop_group(child)
        raise
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return error_line(
            scenario, backend, f"exited with code {child.returncode}, no result", variant=variant
        )
    line: dict[str, Any] = json.loads(lines[-1])
    return line


def _stop_group(child: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group; SIGKILL it if the child outlives a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _emit(line: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as file:
            file.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if args.compare:
        lines = compare(args.compare, args, run_line)
        for line in lines:
            _emit(line, args.out)
    else:
        planned = plan(args.scenario, args.backend, args.variant)
        lines = []
        for number, (scenario, backend, variant) in enumerate(planned, start=1):
            of = f" ({variant})" if variant else ""
            print(
                f"[{number}/{len(planned)}] {scenario} on {backend}{of}",
                file=sys.stderr,
                flush=True,
            )
            lines.append(run_line(scenario, backend, args, variant))
            _emit(lines[-1], args.out)
    failed = sum("error" in line for line in lines)
    if failed:
        print(f"{failed} of {len(lines)} line(s) failed; see their errors", file=sys.stderr)
    return 1 if failed else 0
