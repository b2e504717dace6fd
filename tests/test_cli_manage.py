"""``pyergon flows|show|signal|cancel|resume|retry|fork|replay``, run as a user runs them.

Each test prepares a SQLite file in-process (flows run with ``Executor`` and ``Scheduler`` from a
module written into ``tmp_path``), then runs the commands as real subprocesses. Commands that do
not depend on each other run at once to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from pyergon import Executor, Scheduler, Worker
from pyergon.cli._arguments import parse_since
from pyergon.cli._worker import STORAGE_URL_VARIABLE
from pyergon.core import ClaimRequest, FlowQuery, Invocation, ScheduledFlow, TaskStatus
from pyergon.core.records import SignalRecord
from pyergon.serialization import default_serializer
from pyergon.storage import open_storage
from pyergon.testing import make_worker

FLOWS_MODULE = "cli_manage_flows"
FLOWS_SOURCE = """\
from dataclasses import dataclass

from pyergon import await_external_signal, flow, flow_type, step


@dataclass
@flow_type(name="CliOrder")
class Order:
    order_id: str
    declined: bool = False

    @step
    async def reserve(self) -> int:
        return 2

    @step
    async def charge(self, amount: int) -> str:
        if self.declined:
            raise ValueError(f"card declined for {self.order_id}")
        return f"charged {amount}"

    @step
    async def ship(self) -> str:
        return "shipped"

    @flow
    async def run(self) -> str:
        items = await self.reserve()
        approval = await await_external_signal("approve")
        charged = await self.charge(items + len(str(approval)))
        return f"{charged}, {await self.ship()}"


@dataclass
@flow_type(name="CliOrder")
class RenamedOrder:
    order_id: str
    declined: bool = False

    @step
    async def reserve(self) -> int:
        return 2

    @step
    async def bill(self, amount: int) -> str:
        return f"billed {amount}"

    @flow
    async def run(self) -> str:
        items = await self.reserve()
        await await_external_signal("approve")
        return await self.bill(items)


@dataclass
@flow_type(name="CliReceipt")
class Receipt:
    order_id: str

    @flow
    async def run(self) -> str:
        return self.order_id


NOT_A_FLOW = 42
"""
FLOW = f"{FLOWS_MODULE}:Order"
IDS_NEWEST_FIRST = ["queued", "running", "waiting", "failed", "done"]
"""The flows :func:`prepare` stores, newest first."""

Snapshot = dict[str, tuple[ScheduledFlow, list[Invocation], list[SignalRecord]]]


@dataclass(frozen=True)
class Store:
    """A prepared SQLite file and the directory the commands run in."""

    url: str
    cwd: Path

    def snapshot(self) -> Snapshot:
        """Every flow with its records and signals, to show that a command changed nothing."""
        return asyncio.run(_snapshot(self.url))

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Run one command on this store."""
        return self.run_all(arguments)[0]

    def run_all(self, *commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands on this store at once."""
        return run_all(*([*command, "--storage", self.url] for command in commands), cwd=self.cwd)


def run_all(
    *commands: Sequence[str], cwd: Path, storage_variable: str | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``pyergon`` once per command, all at once, and return their results in order."""
    environment = dict(os.environ, NO_COLOR="1")
    environment.pop("COLUMNS", None)  # not a terminal: tables print at their natural width
    environment.pop(STORAGE_URL_VARIABLE, None)
    if storage_variable is not None:
        environment[STORAGE_URL_VARIABLE] = storage_variable
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pyergon", *command],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    finished = []
    for process in processes:
        try:
            output, errors = process.communicate(timeout=30)
        finally:
            process.kill()
        finished.append(
            subprocess.CompletedProcess(process.args, process.returncode, output, errors)
        )
    return finished


async def _snapshot(url: str) -> Snapshot:
    storage = await open_storage(url)
    try:
        return {
            flow.flow_id: (
                flow,
                await storage.load_invocations(flow.flow_id),
                await storage.list_signals(flow.flow_id),
            )
            for flow in await storage.list_flows(FlowQuery(limit=1_000))
        }
    finally:
        await storage.close()


async def prepare(url: str, module: ModuleType) -> None:
    """Store one flow in each state: done, failed, waiting (for a signal), running, queued."""
    storage = await open_storage(url)
    try:
        scheduler = Scheduler(storage)
        for flow_id, declined in (("done", False), ("failed", True)):
            order = module.Order(flow_id, declined)
            await Executor(order, storage, flow_id).run(lambda flow: flow.run())
            await scheduler.signal(flow_id, "approve", "yes")
            await Executor(order, storage, flow_id).run(lambda flow: flow.run())
        await Executor(module.Order("waiting"), storage, "waiting").run(lambda flow: flow.run())
        await scheduler.schedule(module.Order("running"), flow_id="running")
        claimed = await storage.claim(
            ClaimRequest("worker-9", ["CliOrder"], limit=1, lease_seconds=3600, now=time.time())
        )
        assert [run.flow.flow_id for run in claimed] == ["running"]
        await scheduler.schedule(module.Order("queued"), flow_id="queued")
    finally:
        await storage.close()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A SQLite file holding one flow per state, and a module of their class in ``tmp_path``."""
    (tmp_path / f"{FLOWS_MODULE}.py").write_text(FLOWS_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, FLOWS_MODULE, raising=False)
    module = importlib.import_module(FLOWS_MODULE)
    monkeypatch.setitem(sys.modules, FLOWS_MODULE, module)  # removed again after the test
    url = f"sqlite:///{tmp_path / 'flows.db'}"
    asyncio.run(prepare(url, module))
    return Store(url, tmp_path)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    """Assert the command failed with ``code`` and a single stderr line containing ``fragment``."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pyergon: ")
    assert fragment in result.stderr


def test_flows_lists_filters_and_counts(store: Store) -> None:
    text, everything, filtered, limited, bad_status = store.run_all(
        ["flows"],
        ["flows", "--json"],
        ["flows", "--status", "failed", "COMPLETE", "--type", "CliOrder", "--json"],
        ["flows", "--since", "1h", "--limit", "2", "--json"],
        ["flows", "--status", "DONE"],
    )

    assert text.returncode == 0, text.stderr
    rows = re.findall(
        r"^(\w+)\s+CliOrder\s+([A-Z]+)\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text.stdout, re.M
    )
    assert rows == [
        ("queued", "PENDING"),
        ("running", "RUNNING"),
        ("waiting", "SUSPENDED"),
        ("failed", "FAILED"),
        ("done", "COMPLETE"),
    ]
    assert re.search(r"^failed\s.*\s1\s+-\s+ValueError\s+-\s*$", text.stdout, re.M)
    assert re.search(r"^done\s.*\s\d+ B pickle\s*$", text.stdout, re.M)  # its result's size
    assert text.stdout.splitlines()[-1] == (
        "showing 5; 5 flows in storage: 1 PENDING, 1 RUNNING, 1 SUSPENDED, 1 COMPLETE, 1 FAILED"
    )

    flows = json.loads(everything.stdout)
    assert [flow["flow_id"] for flow in flows] == IDS_NEWEST_FIRST
    by_id = {flow["flow_id"]: flow for flow in flows}
    created = _utc(by_id["done"]["created_at"])
    assert abs(created.timestamp() - time.time()) < 60
    assert by_id["done"]["duration_seconds"] >= 0 and by_id["done"]["result_bytes"] > 0
    assert by_id["failed"]["error"] == {
        "type": "builtins.ValueError",
        "message": "card declined for failed",
    }
    assert by_id["running"]["lease_owner"] == "worker-9"
    assert by_id["running"]["duration_seconds"] is None
    assert [flow["flow_id"] for flow in json.loads(filtered.stdout)] == ["failed", "done"]
    assert [flow["flow_id"] for flow in json.loads(limited.stdout)] == ["queued", "running"]

    assert bad_status.returncode == 2
    assert "unknown status 'DONE'; valid: PENDING, RUNNING, SUSPENDED, COMPLETE, FAILED" in (
        bad_status.stderr
    )


def test_show_prints_records_a_timeline_and_signals(store: Store) -> None:
    before = store.snapshot()
    done, failed, as_json, unknown = store.run_all(
        ["show", "done"], ["show", "failed"], ["show", "done", "--json"], ["show", "nope"]
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flow done  CliOrder  COMPLETE\n")
    assert re.search(
        r"^3\s+step\s+charge\s+COMPLETE\s+1\s+\d\d:\d\d:\d\d\.\d{3}\s+\S+", done.stdout, re.M
    )
    assert re.search(r"^2\s+signal\s+approve\s+COMPLETE\s+\d\d:\d\d", done.stdout, re.M)
    timeline = done.stdout.split("\ntimeline\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[-3:-1] for line in timeline] == [
        ["reserve", "COMPLETE"],
        ["approve", "COMPLETE"],
        ["charge", "COMPLETE"],
        ["ship", "COMPLETE"],
    ]
    assert all(re.match(r"^ +\+\d+\.\d{3}s  [ █]{32}  +\d ", line) for line in timeline)
    assert re.search(
        r"^  approve  sent \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  \d+ B pickle$", done.stdout, re.M
    )

    assert "  error ValueError: card declined for failed" in failed.stdout
    assert re.search(
        r"^3\s+step\s+charge\s+FAILED\s.*ValueError: card declined", failed.stdout, re.M
    )

    history = json.loads(as_json.stdout)
    assert history["flow"]["flow_id"] == "done" and history["flow"]["status"] == "COMPLETE"
    records = history["invocations"]
    assert [(r["position"], r["kind"], r["name"]) for r in records] == [
        ("1", "STEP", "reserve"),
        ("2", "SIGNAL", "approve"),
        ("3", "STEP", "charge"),
        ("4", "STEP", "ship"),
    ]
    assert all(r["result_bytes"] > 0 and "result" not in r for r in records)
    assert records[2]["idempotency_key"] == "done:3"
    assert _utc(records[0]["started_at"]) <= _utc(records[0]["completed_at"])
    assert [(s["name"], s["payload_bytes"] > 0) for s in history["signals"]] == [("approve", True)]
    assert history["children"] == []

    one_line_error(unknown, 1, "no flow with id 'nope' in storage")
    assert store.snapshot() == before


async def _take_over(url: str, flow_id: str) -> None:
    """Run a receipt whose first claim, by ``worker-a``, lost its lease long ago."""
    module = sys.modules[FLOWS_MODULE]
    storage = await open_storage(url)
    try:
        await Scheduler(storage).schedule(module.Receipt(flow_id), flow_id=flow_id)
        stale = ClaimRequest("worker-a", ["CliReceipt"], limit=1, lease_seconds=1, now=1_000.0)
        assert [run.flow.flow_id for run in await storage.claim(stale)] == [flow_id]
        worker = Worker(storage, "worker-b")
        worker.register(module.Receipt)
        async with asyncio.timeout(30):
            await worker.run_until_idle()
    finally:
        await storage.close()


def test_show_and_flows_mark_a_flow_whose_lease_was_lost(store: Store) -> None:
    asyncio.run(_take_over(store.url, "taken-over"))

    shown, as_json, listed, kept = store.run_all(
        ["show", "taken-over"],
        ["show", "taken-over", "--json"],
        ["flows", "--type", "CliReceipt"],
        ["show", "done"],
    )

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("flow taken-over  CliReceipt  COMPLETE\n")
    assert (
        "  lease lost \u00d71 (last by worker-a): a step running then may have started twice"
        in (shown.stdout)
    )
    flow = json.loads(as_json.stdout)["flow"]
    assert (flow["lease_losses"], flow["last_lost_by"], flow["worker_id"]) == (
        1,
        "worker-a",
        "worker-b",
    )
    assert re.search(
        r"^taken-over\s+CliReceipt\s+COMPLETE \(lease lost \u00d71\)", listed.stdout, re.M
    )
    assert "lease" not in kept.stdout


def test_signal_delivers_once_and_refuses_bad_values(store: Store) -> None:
    before = store.snapshot()
    bad_json, unknown, plain = store.run_all(
        ["signal", "waiting", "approve", "{nope", "--json-value"],
        ["signal", "nope", "approve", "x"],
        ["signal", "queued", "note", "hello"],
    )
    one_line_error(bad_json, 2, "VALUE is not valid JSON (Expecting property name")
    one_line_error(unknown, 1, "no flow with id 'nope'")
    assert plain.stdout == "delivered signal 'note' to flow 'queued'\n"
    after = store.snapshot()
    assert after["waiting"] == before["waiting"]

    delivered = store.run("signal", "waiting", "approve", "[1, 2]", "--json-value")
    again = store.run("signal", "waiting", "approve", "x", "--json")

    assert delivered.stdout == "delivered signal 'approve' to flow 'waiting'\n"
    assert json.loads(again.stdout) == {"flow_id": "waiting", "name": "approve", "delivered": False}
    after = store.snapshot()
    flow, _, signals = after["waiting"]
    assert flow.status is TaskStatus.PENDING  # woken for a worker
    values = {signal.name: default_serializer().loads(signal.payload) for signal in signals}
    assert values == {"approve": [1, 2]}
    assert [default_serializer().loads(s.payload) for s in after["queued"][2]] == ["hello"]


def test_cancel_resume_and_retry(store: Store) -> None:
    before = store.snapshot()
    cancelled, requested, resumed, retried, cancel_done, retry_done = store.run_all(
        ["cancel", "queued", "--json"],
        ["cancel", "running"],
        ["resume", "waiting", "--json"],
        ["retry", "failed"],
        ["cancel", "done"],
        ["retry", "done"],
    )

    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
    assert requested.stdout == (
        "flow 'running' is RUNNING on worker 'worker-9'; cancellation requested, it stops at "
        "its next step boundary\n"
    )
    assert json.loads(resumed.stdout)["status"] == "PENDING"
    assert retried.stdout.startswith("flow 'failed' is now PENDING (attempt 1); a worker")
    one_line_error(cancel_done, 1, "flow 'done' is already COMPLETE; nothing to cancel")
    one_line_error(retry_done, 1, "only FAILED or CANCELLED flows can be retried")

    after = store.snapshot()
    assert after["done"] == before["done"]
    assert after["running"][0].cancel_requested
    assert after["failed"][0].status is TaskStatus.PENDING and after["failed"][0].error is None
    resume_done = store.run("resume", "done")
    one_line_error(resume_done, 1, "flow 'done' is COMPLETE and cannot resume")


def test_resume_force_takes_a_flow_from_a_worker_that_looks_alive(store: Store) -> None:
    refused = store.run("resume", "running")
    one_line_error(refused, 1, "flow 'running' is running on worker 'worker-9'")

    forced = store.run("resume", "running", "--force", "--json")

    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["status"] == "PENDING"


async def _add_workers(url: str) -> None:
    storage = await open_storage(url)
    try:
        now = time.time()
        live = make_worker("worker-9", host="box-1", pid=11, last_beat=now, lease_seconds=60)
        dead = make_worker("worker-old", host="box-2", pid=12, last_beat=now - 120)
        stopped = make_worker("worker-done", pid=13).stopping(now - 5)
        for record in (live, dead, stopped):
            await storage.put_worker(record, replacing=None)
    finally:
        await storage.close()


def test_workers_lists_live_dead_and_stopped_workers(store: Store) -> None:
    empty = store.run("workers")
    assert (empty.returncode, empty.stdout) == (
        0,
        "no worker has registered with this storage yet\n",
    )
    asyncio.run(_add_workers(store.url))

    table, as_json = store.run_all(["workers"], ["workers", "--json"])

    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:]}
    assert rows["worker-9"][1:4] == ["live", "box-1", "11"]
    assert rows["worker-old"][1:4] == ["dead", "box-2", "12"]
    assert rows["worker-done"][1] == "stopped"
    workers = {worker["worker_id"]: worker for worker in json.loads(as_json.stdout)}
    assert list(workers) == ["worker-9", "worker-done", "worker-old"]
    assert workers["worker-9"]["running_flows"] == 1  # it holds 'running'
    assert workers["worker-old"]["state"] == "dead"
    assert workers["worker-9"]["flow_types"] == ["Order", "Refund"]


def test_fork_copies_a_prefix_and_refuses_bad_requests(store: Store) -> None:
    before = store.snapshot()
    forked, default_id, past_end, running, taken = store.run_all(
        ["fork", "done", "--from-step", "2", "--new-id", "done-2", "--json"],
        ["fork", "done", "--from-step", "0"],
        ["fork", "done", "--from-step", "9"],
        ["fork", "running", "--from-step", "0"],
        ["fork", "done", "--from-step", "1", "--new-id", "waiting"],
    )

    assert json.loads(forked.stdout) == {"flow_id": "done-2"}
    match = re.fullmatch(
        r"forked flow 'done' as '(done~fork-\w+)' \(PENDING\), keeping none of its log\n",
        default_id.stdout,
    )
    assert match is not None
    one_line_error(past_end, 1, "from_step=9 is past the end of its log")
    one_line_error(running, 1, "flow 'running' is running; fork it once it waits")
    one_line_error(taken, 1, "flow 'waiting' already exists; choose another id")

    after = store.snapshot()
    assert sorted(after) == sorted([*before, "done-2", match[1]])
    assert {flow_id: after[flow_id] for flow_id in before} == before
    fork, records, _ = after["done-2"]
    assert fork.status is TaskStatus.PENDING and fork.flow_type == "CliOrder"
    assert [record.position for record in records] == ["1", "2"]
    assert after[match[1]][1] == []


def test_replay_reports_consistency_with_its_exit_code(store: Store) -> None:
    before = store.snapshot()
    consistent, diverges, ends, not_a_flow, other_type = store.run_all(
        ["replay", "done", "--flow", FLOW],
        ["replay", "done", "--flow", f"{FLOWS_MODULE}:RenamedOrder", "--json"],
        ["replay", "waiting", "--flow", FLOW, "--json"],
        ["replay", "done", "--flow", f"{FLOWS_MODULE}:NOT_A_FLOW"],
        ["replay", "done", "--flow", f"{FLOWS_MODULE}:Receipt"],
    )

    assert consistent.returncode == 0, consistent.stderr
    assert consistent.stdout.startswith(
        "flow 'done' is consistent with its log (4 of 4 recorded operations replayed); it returns "
    )
    assert consistent.stdout.endswith("\n") and consistent.stdout.count("\n") == 1
    assert diverges.returncode == 1
    report = json.loads(diverges.stdout)
    assert report["consistent"] is False
    assert report["divergence"]["position"] == "3"
    assert "'charge'" in report["divergence"]["recorded"]
    assert "'bill'" in report["divergence"]["current"]
    assert ends.returncode == 0
    assert json.loads(ends.stdout) | {"summary": ""} == {
        "flow_id": "waiting",
        "consistent": True,
        "replayed": 1,
        "recorded": 2,
        "ended_at": "2",
        "divergence": None,
        "outcome": None,
        "summary": "",
    }
    one_line_error(not_a_flow, 2, "cannot serve 'cli_manage_flows:NOT_A_FLOW'")
    one_line_error(other_type, 2, "is of type 'CliOrder' but Receipt is flow type 'CliReceipt'")
    assert store.snapshot() == before


def test_storage_comes_from_the_environment_then_pyergon_db(store: Store) -> None:
    empty = store.cwd / "empty"
    empty.mkdir()
    from_variable, no_database, no_database_to_cancel = [
        *run_all(["flows", "--json"], cwd=empty, storage_variable=store.url),
        *run_all(["flows"], ["cancel", "queued"], cwd=empty),
    ]

    assert len(json.loads(from_variable.stdout)) == len(IDS_NEWEST_FIRST)
    expected = f"no pyergon database at {empty / 'pyergon.db'}"
    one_line_error(no_database, 1, expected)
    one_line_error(no_database_to_cancel, 1, expected)
    assert list(empty.iterdir()) == []  # nothing was created


@pytest.mark.parametrize(
    ("text", "ago"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("0.5h", 1800)],
)
def test_since_takes_a_time_ago(text: str, ago: float) -> None:
    assert parse_since(text, now=1_000_000.0) == 1_000_000.0 - ago


def test_since_takes_an_iso_time_in_utc_unless_it_has_an_offset() -> None:
    assert parse_since("1970-01-02") == 86400.0
    assert parse_since("1970-01-02T02:00:00+02:00") == 86400.0


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


def test_rerun_recomputes_from_a_step_and_keeps_the_previous_generation(store: Store) -> None:
    before = store.snapshot()
    waiting, unchanged, no_class, unknown = store.run_all(
        ["rerun", "waiting", "--from-step", "1"],
        ["rerun", "done", "--flow", FLOW],
        ["rerun", "done"],
        ["rerun", "done", "--from-step", "pack"],
    )
    one_line_error(waiting, 1, "flow 'waiting' is SUSPENDED; rerun a flow once it has finished")
    one_line_error(unchanged, 1, "no step of flow 'done' changed since it was recorded")
    one_line_error(no_class, 2, "pyergon rerun needs --flow MODULE:Class to find the steps")
    one_line_error(unknown, 1, "flow 'done' has no step 'pack'")
    assert store.snapshot() == before

    done, failed = store.run_all(
        ["rerun", "done", "--from-step", "charge", "--json"],
        ["rerun", "failed", "--from-step", "3"],
    )
    assert json.loads(done.stdout) == {
        "flow_id": "done",
        "previous": "done~gen-1",
        "recomputed": ["charge", "ship"],
        "positions": [3, 4],
    }
    assert failed.stdout == (
        "flow 'failed': recomputing charge; the previous results are kept as "
        "'failed~gen-1'; it is PENDING: a worker serving its type runs it next\n"
    )
    after = store.snapshot()
    flow, records, _ = after["done"]
    assert flow.status is TaskStatus.PENDING and flow.result is None
    assert [record.position for record in records] == ["1", "2"]
    kept, kept_records, _ = after["done~gen-1"]
    assert kept.status is TaskStatus.COMPLETE and kept.result == before["done"][0].result
    assert [r.position for r in kept_records] == [r.position for r in before["done"][1]]
