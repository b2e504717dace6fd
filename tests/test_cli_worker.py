"""``pyergon worker``, run as a user runs it: a real process serving flows until SIGTERM."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from pyergon import Scheduler
from pyergon.cli._worker import DEFAULT_STORAGE_URL, STORAGE_URL_VARIABLE, default_storage_url
from pyergon.storage import open_storage

FLOWS_MODULE = "cli_worker_flows"
FLOWS_SOURCE = """\
import os
import re
from dataclasses import dataclass

from pyergon import flow, flow_type, step


@dataclass
@flow_type(name="CliGreeting")
class Greeting:
    name: str

    @step
    async def greet(self) -> str:
        return f"hello {self.name} from {os.getpid()}"

    @flow
    async def run(self) -> str:
        return await self.greet()


NOT_A_FLOW = 42
"""
STOP_DEADLINE = 30.0


@pytest.fixture
def flows_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A module of flow types in ``tmp_path``, the worker's working directory."""
    (tmp_path / f"{FLOWS_MODULE}.py").write_text(FLOWS_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, FLOWS_MODULE, raising=False)
    module = importlib.import_module(FLOWS_MODULE)
    monkeypatch.setitem(sys.modules, FLOWS_MODULE, module)  # removed again after the test
    return module


def start_worker(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environment = dict(os.environ, COLUMNS="100", NO_COLOR="1", **(env or {}))
    environment.pop(STORAGE_URL_VARIABLE, None)
    return subprocess.Popen(
        [sys.executable, "-m", "pyergon", "worker", *arguments],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_worker(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a worker that is expected to exit by itself."""
    process = start_worker(*arguments, cwd=cwd, env=env)
    try:
        output, errors = process.communicate(timeout=STOP_DEADLINE)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, output, errors)


async def schedule_and_wait(url: str, flows: list[object]) -> list[str]:
    storage = await open_storage(url)
    try:
        scheduler = Scheduler(storage)
        ids = [await scheduler.schedule(flow) for flow in flows]
        outcomes = await scheduler.wait(ids, timeout=STOP_DEADLINE)
    finally:
        await storage.close()
    return [outcomes[flow_id].result for flow_id in ids]


def serve_greetings(
    tmp_path: Path, flows_module: ModuleType, names: list[str], *options: str
) -> tuple[subprocess.Popen[str], list[str], str, str]:
    """Run a worker with ``options``, greet ``names`` through it, stop it with SIGTERM.

    Returns:
        The worker process, the greetings, and its stdout and stderr.
    """
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    worker = start_worker(f"{FLOWS_MODULE}:Greeting", "--storage", url, *options, cwd=tmp_path)
    try:
        results = asyncio.run(schedule_and_wait(url, [flows_module.Greeting(n) for n in names]))
        worker.send_signal(signal.SIGTERM)
        output, errors = worker.communicate(timeout=STOP_DEADLINE)
    finally:
        worker.kill()
    assert worker.returncode == 0, errors
    return worker, results, output, errors


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_a_worker_runs_scheduled_flows_and_stops_on_sigterm(
    tmp_path: Path, flows_module: ModuleType
) -> None:
    names = ["ann", "bob", "cy"]
    worker, results, output, errors = serve_greetings(
        tmp_path, flows_module, names, "--id", "cli-1", "--lease", "5"
    )

    assert results == [f"hello {name} from {worker.pid}" for name in names]
    lines = output.splitlines()
    assert lines[0].startswith("pyergon worker cli-1 serving CliGreeting on SqliteExecutionLog(")
    assert "concurrency 10, lease 5 s" in lines[0]
    assert lines[-1] == "pyergon worker cli-1 stopped after 3 finished flow(s)"
    assert "completed" not in errors  # completions are said with -v only


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_a_verbose_worker_logs_each_completed_flow(
    tmp_path: Path, flows_module: ModuleType
) -> None:
    *_, errors = serve_greetings(tmp_path, flows_module, ["ann", "bob"], "--id", "cli-v", "-v")

    completed = [line for line in errors.splitlines() if line.endswith("(CliGreeting) completed")]
    assert len(completed) == 2, errors
    assert all(" INFO worker cli-v: flow " in line for line in completed)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:Flow", "cannot import 'no_such_module:Flow': no module named"),
        (f"{FLOWS_MODULE}:Missing", f"module '{FLOWS_MODULE}' has no attribute 'Missing'"),
        (f"{FLOWS_MODULE}:NOT_A_FLOW", "expected a flow class, got 42"),
        (FLOWS_MODULE, f"'{FLOWS_MODULE}' is not MODULE:Class"),
    ],
)
def test_a_bad_flow_class_exits_2_with_one_line(
    tmp_path: Path, flows_module: ModuleType, spec: str, message: str
) -> None:
    finished = run_worker(spec, "--storage", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)

    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.startswith("pyergon: usage error: ")
    assert message in finished.stderr
    assert finished.stderr.count("\n") == 1
    assert not (tmp_path / "x.db").exists()  # refused before any storage was opened


def test_unreachable_storage_exits_1_with_one_line(
    tmp_path: Path, flows_module: ModuleType
) -> None:
    url = f"sqlite:///{tmp_path / 'missing-directory' / 'flows.db'}"

    finished = run_worker(f"{FLOWS_MODULE}:Greeting", "--storage", url, cwd=tmp_path)

    assert finished.returncode == 1, finished.stderr
    assert finished.stderr.startswith("pyergon: SQLite storage ")
    assert "unable to open database file" in finished.stderr
    assert finished.stderr.count("\n") == 1


def test_the_storage_url_defaults_to_the_environment_then_sqlite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STORAGE_URL_VARIABLE, raising=False)
    assert default_storage_url() == DEFAULT_STORAGE_URL == "sqlite:///pyergon.db"
    monkeypatch.setenv(STORAGE_URL_VARIABLE, "redis://redis-host:6379/0")
    assert default_storage_url() == "redis://redis-host:6379/0"


@pytest.mark.parametrize("lease", ["inf", "nan", "-1", "0", "1e400"])
def test_a_lease_that_is_not_a_finite_positive_number_exits_2_with_one_line(
    tmp_path: Path, flows_module: ModuleType, lease: str
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"

    finished = run_worker(
        f"{FLOWS_MODULE}:Greeting", "--storage", url, "--lease", lease, cwd=tmp_path
    )

    assert finished.returncode == 2, finished.stderr
    last_line = finished.stderr.splitlines()[-1]  # argparse prints its usage lines first
    assert "--lease" in last_line
    assert "finite" in last_line or "greater than 0" in last_line
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "x.db").exists()  # refused before any storage was opened


def test_a_worker_on_shared_storage_without_a_chosen_serializer_exits_1_saying_how(
    tmp_path: Path, flows_module: ModuleType, redis_url: str, redis_prefix: Callable[..., str]
) -> None:
    url = f"{redis_url}?prefix={redis_prefix()}"
    environment = {"PYERGON_UNSIGNED_PICKLE": "", "PYERGON_SECRET_KEY": ""}

    finished = run_worker(
        f"{FLOWS_MODULE}:Greeting", "--storage", url, cwd=tmp_path, env=environment
    )

    assert finished.returncode == 1, finished.stderr
    last_line = finished.stderr.splitlines()[-1]
    assert last_line.startswith("pyergon: ") and "shared storage" in last_line
    assert "PYERGON_SECRET_KEY" in last_line and "PYERGON_UNSIGNED_PICKLE=1" in last_line
    assert "Traceback" not in finished.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_a_worker_without_an_id_is_named_for_its_host_and_process(
    tmp_path: Path, flows_module: ModuleType
) -> None:
    worker, results, output, _ = serve_greetings(tmp_path, flows_module, ["ann"])

    assert results == [f"hello ann from {worker.pid}"]
    first_line = output.splitlines()[0]
    assert re.match(rf"pyergon worker worker-\S+-{worker.pid}-[0-9a-f]{{4}} serving ", first_line)
