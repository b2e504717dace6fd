"""``python -m benchmarks.ab --base REV``: this checkout against an older commit, in one run.

Both sides run the same scenarios on the same machine at the same time of day, alternating run
by run (the order flips every round, so a drift of the machine falls on both sides alike). Each
run is a fresh ``python -m benchmarks.one ... --runs 1`` process of its own side: the base side
runs in a git worktree of ``REV`` (under ``.bench/``, kept for the next A/B) with its own
virtual environment from its own ``uv.lock``, so each side is measured with the code and the
dependencies it shipped with.

One JSON line per scenario, backend and side (medians over rounds), then one ``"side":
"ratio"`` line with ``head / base`` of each median. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.backends import BACKENDS
from benchmarks.run import REPO_ROOT, plan
from benchmarks.scenarios import SCENARIOS

__all__ = ["main"]

COMPARED = ("wall_s", "flows_per_s", "steps_per_s", "worker_cpu_percent", "recovery_s")
"""The numbers of a line that are compared between the sides (where a line has them)."""


def _base_checkout(rev: str) -> Path:
    """A worktree of ``rev`` with its dependencies installed (made once, then reused)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if sha.returncode != 0:
        raise SystemExit(f"benchmarks.ab: {rev!r} is not a commit here: {sha.stderr.strip()}")
    path = REPO_ROOT / ".bench" / f"ab-{sha.stdout.strip()}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), sha.stdout.strip()],
            cwd=REPO_ROOT,
            check=True,
        )
    subprocess.run(["uv", "sync", "--frozen", "--quiet"], cwd=path, check=True)
    return path


def _one_run(
    python: str,
    cwd: Path,
    line_of: tuple[str, str, str | None],
    quick: bool,
    n: int | None,
) -> dict[str, Any]:
    scenario, backend, variant = line_of
    command = [python, "-m", "benchmarks.one", scenario, backend, "--runs", "1"]
    if quick:
        command.append("--quick")
    if n:
        command += ["--n", str(n)]
    if variant is not None:
        command += ["--variant", variant]
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, text=True, env=_env(cwd))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exited with code {done.returncode}, no result"}
    line: dict[str, Any] = json.loads(lines[-1])
    return line


def _env(cwd: Path) -> dict[str, str]:
    """The environment of a run: its own checkout first on the import path."""
    return os.environ | {"PYTHONPATH": str(cwd), "VIRTUAL_ENV": str(cwd / ".venv")}


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    medians: dict[str, float] = {}
    for key in COMPARED:
        values = [_number(run[key]) for run in runs if key in run]
        if values:
            medians[key] = round(statistics.median(values), 4)
    return medians


def _number(value: Any) -> float:
    """A line's number: plain, or the median of a ``summarize`` dict."""
    return float(value["median"] if isinstance(value, dict) else value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--base", required=True, help="the older commit (any git revision)")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--backend", action="append", choices=BACKENDS)
    parser.add_argument("--rounds", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--n", type=int, help="flows (or samples) per run, for every scenario")
    parser.add_argument("--out", type=Path, help="also append the lines to this file")
    args = parser.parse_args(argv)
    base = _base_checkout(args.base)
    sides = {
        "base": (str(base / ".venv" / "bin" / "python"), base),
        "head": (sys.executable, REPO_ROOT),
    }
    failed = 0
    for scenario, backend, variant in plan(args.scenario, args.backend):
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
        for number in range(args.rounds):
            order = ("base", "head") if number % 2 == 0 else ("head", "base")
            for side in order:
                python, cwd = sides[side]
                line = _one_run(python, cwd, (scenario, backend, variant), args.quick, args.n)
                print(
                    f"  {scenario} on {backend}, {side} {number + 1}: {line.get('wall_s', line)}",
                    file=sys.stderr,
                    flush=True,
                )
                runs[side].append(line)
        out: dict[str, dict[str, Any]] = {}
        for side, lines in runs.items():
            good = [line for line in lines if "error" not in line]
            failed += len(lines) - len(good)
            commit = good[0].get("commit") if good else None
            out[side] = {
                "scenario": scenario,
                "backend": backend,
                **({"variant": variant} if variant else {}),
                "side": side,
                "commit": commit,
                "runs": len(good),
            } | _medians(good)
        ratio = {
            key: round(out["head"][key] / out["base"][key], 3)
            for key in COMPARED
            if out["base"].get(key) and key in out["head"]
        }
        out["ratio"] = {
            "scenario": scenario,
            "backend": backend,
            **({"variant": variant} if variant else {}),
            "side": "ratio",
        } | ratio
        for line in out.values():
            text = json.dumps(line)
            print(text, flush=True)
            if args.out:
                with args.out.open("a") as file:
                    file.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
