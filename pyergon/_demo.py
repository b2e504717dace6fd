"""``pyergon demo``: a flow killed with SIGKILL in the middle of a step resumes in a new process.

The parent process is only a user interface. It starts a child process that runs a five-step
order-fulfilment flow on a SQLite file, watches the steps' side-effect log, SIGKILLs the child
while step 4 runs, starts a second child that resumes the flow, and then shows, for every step,
how many times its body ran (counted in the side-effect log) next to what storage recorded.
Every number shown is read back from those two files; nothing is assumed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pyergon._context import current_idempotency_key
from pyergon.core.outcome import Completed
from pyergon.core.records import Invocation, ScheduledFlow
from pyergon.core.status import TaskStatus
from pyergon.decorators import flow, flow_type, step
from pyergon.executor.executor import Executor

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "KILL_AT_STEP",
    "OrderFulfilment",
    "SideEffect",
    "flow_id_for",
    "read_side_effects",
    "run_child",
    "run_demo",
    "side_effect_log_for",
]

KILL_AT_STEP = 4
"""Log position of the step during which the demo kills the first child."""

_STEP_SECONDS = 0.3
_CARRIER_SECONDS = 0.8  # longer, so the kill reliably lands while the step is running
_POLL_SECONDS = 0.02
_RUN_DEADLINE_SECONDS = 30.0


@dataclass
@flow_type
class OrderFulfilment:
    """Reserve, charge, pack, ship and confirm one order; each step leaves a side effect.

    Attributes:
        order_id: The order being fulfilled; every id the steps hand out derives from it.
        side_effect_log: File each step body appends ``start`` and ``done`` lines to, so runs
            can be counted from outside the process.
    """

    order_id: str
    side_effect_log: str

    @step
    async def reserve_inventory(self) -> dict[str, int]:
        """Hold the ordered items in the warehouse."""
        await self._work("reserve_inventory", _STEP_SECONDS)
        return {"kettle": 1, "tea-sampler": 2}

    @step
    async def charge_payment(self, items: dict[str, int]) -> str:
        """Charge the customer; the idempotency key makes a repeated charge harmless."""
        await self._work("charge_payment", _STEP_SECONDS)
        cents = 3990 * items["kettle"] + 1250 * items["tea-sampler"]
        return f"PAY-{self.order_id}-{cents}"

    @step
    async def pack_parcel(self, items: dict[str, int]) -> str:
        """Pack the reserved items into a parcel."""
        await self._work("pack_parcel", _STEP_SECONDS)
        return f"PCL-{self.order_id}-{sum(items.values())}"

    @step
    async def book_carrier(self, parcel: str) -> str:
        """Book a carrier for the parcel and get its tracking number."""
        await self._work("book_carrier", _CARRIER_SECONDS)
        return f"TRK-{parcel.removeprefix('PCL-')}"

    @step
    async def send_confirmation(self, tracking: str) -> str:
        """Email the customer the tracking number."""
        await self._work("send_confirmation", _STEP_SECONDS)
        return f"MAIL-{tracking}"

    @flow
    async def fulfil(self) -> dict[str, str]:
        """Run the five steps in order and return the ids they produced."""
        items = await self.reserve_inventory()
        payment = await self.charge_payment(items)
        parcel = await self.pack_parcel(items)
        tracking = await self.book_carrier(parcel)
        confirmation = await self.send_confirmation(tracking)
        return {
            "order": self.order_id,
            "payment": payment,
            "tracking": tracking,
            "confirmation": confirmation,
        }

    async def _work(self, step_name: str, seconds: float) -> None:
        _append_side_effect(self.side_effect_log, step_name, "start")
        await asyncio.sleep(seconds)
        _append_side_effect(self.side_effect_log, step_name, "done")


def _append_side_effect(path: str, step_name: str, event: str) -> None:
    # fsync so the line is on disk before the body goes on, whatever happens to this process.
    line = f"{current_idempotency_key()}\t{step_name}\t{event}\t{os.getpid()}\n"
    with open(path, "a", encoding="utf-8") as log:
        log.write(line)
        log.flush()
        os.fsync(log.fileno())


@dataclass(frozen=True, slots=True)
class SideEffect:
    """One line of the side-effect log.

    Attributes:
        flow_id: The flow whose step wrote it.
        sequence: The step's log position.
        step: The step's name.
        event: ``"start"`` or ``"done"``.
        pid: The process that ran the step body.
    """

    flow_id: str
    sequence: int
    step: str
    event: str
    pid: int


def read_side_effects(path: Path, flow_id: str) -> list[SideEffect]:
    """Return the complete lines of the side-effect log written for ``flow_id``, in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    effects = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a line still being written
        key, step_name, event, pid = line.rstrip("\n").split("\t")
        effect_flow_id, _, sequence = key.rpartition(":")
        if effect_flow_id == flow_id:
            effects.append(SideEffect(flow_id, int(sequence), step_name, event, int(pid)))
    return effects


def side_effect_log_for(db_path: Path) -> Path:
    """Return the side-effect log that sits next to the demo's database."""
    return db_path.with_name(f"{db_path.name}.side-effects.log")


def flow_id_for(order_id: str) -> str:
    """Return the flow id of the demo flow for ``order_id``."""
    return f"order-{order_id}"


# -- the child process ----------------------------------------------------------------------


def run_child(db_path: Path, order_id: str) -> int:
    """Run or resume the demo flow for ``order_id`` on ``db_path``; the child process's body.

    Returns:
        0 if the flow completed, 1 if it failed, 130 if interrupted.
    """
    try:
        outcome = asyncio.run(_run_flow(db_path, order_id))
    except KeyboardInterrupt:
        return 130
    succeeded = isinstance(outcome, Completed) and outcome.succeeded
    print(repr(outcome), file=sys.stdout if succeeded else sys.stderr)
    return 0 if succeeded else 1


async def _run_flow(db_path: Path, order_id: str) -> object:
    from pyergon.storage.sqlite import SqliteExecutionLog

    order = OrderFulfilment(order_id, str(side_effect_log_for(db_path)))
    async with SqliteExecutionLog(db_path) as storage:
        executor = Executor(order, storage, flow_id_for(order_id))
        return await executor.run(lambda flow: flow.fulfil())


# -- the parent process ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stored:
    flow: ScheduledFlow | None
    records: list[Invocation]


async def _read_storage(db_path: Path, flow_id: str) -> _Stored:
    from pyergon.storage.sqlite import SqliteExecutionLog

    async with SqliteExecutionLog(db_path) as storage:
        return _Stored(await storage.get_flow(flow_id), await storage.load_invocations(flow_id))


class _DemoFailed(Exception):
    """The demo could not show what it set out to show; the message says why."""


def run_demo(db_path: Path | None, *, keep: bool = False) -> int:
    """Run the crash-and-resume demo and print what happened.

    Args:
        db_path: SQLite file to use; ``None`` makes one in a new temporary directory.
        keep: Keep that temporary directory afterwards (a given ``db_path`` is always kept).

    Returns:
        0 if the flow survived the kill as promised, 1 otherwise.
    """
    from rich.console import Console

    console = Console(highlight=False)
    temporary_dir = None
    if db_path is None:
        temporary_dir = Path(tempfile.mkdtemp(prefix="pyergon-demo-"))
        db_path = temporary_dir / "demo.db"
    elif not db_path.parent.is_dir():
        console.print(f"[red]pyergon demo:[/] directory {db_path.parent} does not exist")
        return 1
    try:
        _demonstrate(console, db_path.resolve())
    except _DemoFailed as error:
        console.print(f"[bold red]demo failed:[/] {error}")
        return 1
    finally:
        if temporary_dir is not None:
            if keep:
                console.print(f"Kept {temporary_dir}")
            else:
                shutil.rmtree(temporary_dir, ignore_errors=True)
    return 0


def _demonstrate(console: Console, db_path: Path) -> None:
    from rich.pretty import Pretty

    started = time.monotonic()
    order_id = os.urandom(3).hex().upper()
    flow_id = flow_id_for(order_id)
    effects_path = side_effect_log_for(db_path)
    console.rule("[bold]pyergon demo[/]: a flow killed with SIGKILL resumes where it stopped")
    console.print(f"Database         {db_path}")
    console.print(f"Side-effect log  {effects_path}")
    console.print(f"Flow             {flow_id} (OrderFulfilment, 5 steps)")

    console.print("\n[bold]Run 1[/]: a child process starts the flow")
    with _child_process(db_path, order_id) as first:
        watcher = _Watcher(console, effects_path, flow_id)
        watcher.follow(first, until_started=KILL_AT_STEP)
        first.process.kill()  # SIGKILL on POSIX: no cleanup, no flushing, no goodbye
        first.process.wait()
    cut = next(e for e in watcher.seen if e.sequence == KILL_AT_STEP and e.event == "start")
    body_finished = any(
        e.sequence == cut.sequence and e.event == "done" and e.pid == first.pid
        for e in read_side_effects(effects_path, flow_id)
    )
    console.print(
        f"  [bold red]SIGKILL[/] sent to pid {first.pid} after step {cut.sequence} {cut.step} "
        + ("started; its body had already finished" if body_finished else "started, mid-body")
    )
    at_kill = asyncio.run(_read_storage(db_path, flow_id))
    recorded_at_kill = {r.sequence for r in at_kill.records if r.is_final}
    console.print(
        "  In storage at the kill: "
        + (", ".join(f"{r.sequence} {r.name}" for r in at_kill.records if r.is_final) or "none")
    )

    console.print("\n[bold]Run 2[/]: a new child process runs the same flow id")
    with _child_process(db_path, order_id) as second:
        watcher.follow(second, until_started=None)
    final = asyncio.run(_read_storage(db_path, flow_id))
    effects = read_side_effects(effects_path, flow_id)
    replayed = sorted(recorded_at_kill - {e.sequence for e in effects if e.pid == second.pid})
    if replayed:
        console.print(
            "  Replayed from the log without running their bodies: steps "
            + ", ".join(map(str, replayed))
        )

    console.print()
    console.print(_step_table(final.records, effects, recorded_at_kill, first.pid, second.pid))
    console.print(
        "[dim]runs, run 1, run 2: start lines in the side-effect log, in all and per process.\n"
        "recorded at kill: whether storage held the step's record when run 1 was killed.\n"
        "status, attempts: the step's record in storage now. Attempts are counted within one "
        "process, so the attempt that SIGKILL cut short left no trace in storage.[/]\n"
    )
    result = _final_result(final.flow)
    console.print("Flow result:", Pretty(result))
    verdict = _verdict(final.records, effects, recorded_at_kill, final.flow)
    console.print(verdict)
    console.print(f"Done in {time.monotonic() - started:.1f} s.")


@dataclass(slots=True)
class _Child:
    process: subprocess.Popen[bytes]
    stderr: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def failure(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return f"child process {self.pid} exited with code {self.process.returncode}: " + (
            text or "no output"
        )


@contextmanager
def _child_process(db_path: Path, order_id: str) -> Iterator[_Child]:
    """Start ``pyergon demo --child`` and make sure it is gone when the block is left."""
    command = [sys.executable, "-m", "pyergon", "demo", "--db", str(db_path)]
    command += ["--child", order_id]
    with tempfile.TemporaryFile() as stderr:
        # stderr goes to a file, not a pipe, so a chatty child can never block on it.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            yield _Child(process, stderr)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


class _Watcher:
    """Follows the side-effect log and prints each step body's start and end as it happens."""

    def __init__(self, console: Console, path: Path, flow_id: str) -> None:
        self.console = console
        self.path = path
        self.flow_id = flow_id
        self.seen: list[SideEffect] = []

    def follow(self, child: _Child, *, until_started: int | None) -> None:
        """Print new lines until step ``until_started`` starts in ``child``, or it exits.

        Raises:
            _DemoFailed: The child failed, exited too early, or took far too long.
        """
        deadline = time.monotonic() + _RUN_DEADLINE_SECONDS
        while True:
            exit_code = child.process.poll()
            for effect in self._new_effects():
                mark = "[yellow]started[/]" if effect.event == "start" else "[green]done[/]"
                self.console.print(f"  step {effect.sequence} {effect.step:<18} {mark}")
                if (
                    until_started is not None
                    and effect.pid == child.pid
                    and effect.sequence == until_started
                    and effect.event == "start"
                ):
                    return
            if exit_code is not None:
                if exit_code != 0 or until_started is not None:
                    raise _DemoFailed(child.failure())
                return
            if time.monotonic() > deadline:
                raise _DemoFailed(f"child process {child.pid} made no progress in time")
            time.sleep(_POLL_SECONDS)

    def _new_effects(self) -> Sequence[SideEffect]:
        effects = read_side_effects(self.path, self.flow_id)
        new = effects[len(self.seen) :]
        self.seen.extend(new)
        return new


def _step_table(
    records: list[Invocation],
    effects: list[SideEffect],
    recorded_at_kill: set[int],
    first_pid: int,
    second_pid: int,
) -> Any:
    from rich import box
    from rich.table import Table

    starts = Counter(e.sequence for e in effects if e.event == "start")
    starts_by_run = Counter((e.sequence, e.pid) for e in effects if e.event == "start")
    names = {e.sequence: e.step for e in effects} | {r.sequence: r.name for r in records}
    by_sequence = {r.sequence: r for r in records if r.sub_sequence == 0}
    table = Table(title="Steps of the flow", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("step", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("run 1", justify="right")
    table.add_column("run 2", justify="right")
    table.add_column("recorded at kill")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    for sequence in sorted(names):
        record = by_sequence.get(sequence)
        runs = starts[sequence]
        table.add_row(
            str(sequence),
            names[sequence],
            f"[bold red]{runs}[/]" if runs > 1 else str(runs),
            str(starts_by_run[(sequence, first_pid)]),
            str(starts_by_run[(sequence, second_pid)]),
            "yes" if sequence in recorded_at_kill else "no",
            record.status.value if record is not None else "-",
            str(record.attempts) if record is not None else "-",
        )
    return table


def _final_result(stored: ScheduledFlow | None) -> object:
    if stored is None or stored.result is None:
        return None
    from pyergon.serialization import default_serializer

    return default_serializer().loads(stored.result)


def _verdict(
    records: list[Invocation],
    effects: list[SideEffect],
    recorded_at_kill: set[int],
    stored: ScheduledFlow | None,
) -> str:
    """Say what the evidence shows, and raise if it breaks pyergon's promise."""
    starts = Counter(e.sequence for e in effects if e.event == "start")
    if stored is None or stored.status is not TaskStatus.COMPLETE:
        status = "missing" if stored is None else stored.status.value
        raise _DemoFailed(f"the resumed flow did not complete (status {status})")
    rerun_after_record = sorted(s for s in recorded_at_kill if starts[s] != 1)
    if rerun_after_record:
        raise _DemoFailed(
            f"steps {rerun_after_record} ran again although their records were written "
            "before the kill"
        )
    positions = [(r.sequence, r.sub_sequence) for r in records]
    if len(positions) != len(set(positions)):
        raise _DemoFailed("a log position holds two records")
    ran_again = sorted(s for s, count in starts.items() if count > 1)
    after_cut = sorted(s for s, count in starts.items() if count == 1 and s not in recorded_at_kill)
    lines = [
        "[bold green]Verdict:[/] the flow completed after the kill.",
        f"  Recorded before the kill, ran once: step {_listing(sorted(recorded_at_kill))}",
        "  Cut by the kill before its record was written, ran again: step "
        + (", ".join(f"{s} ({starts[s]} runs)" for s in ran_again) or "none"),
        f"  Started after the kill, ran once: step {_listing(after_cut)}",
    ]
    return "\n".join(lines)


def _listing(sequences: Sequence[int]) -> str:
    return ", ".join(map(str, sequences)) if sequences else "none"
