"""``pyergon flows|show|output|signal|cancel|...``: manage stored flows from a shell.

Each command opens the storage named by ``--storage`` (default ``$PYERGON_STORAGE``, then
``sqlite:///pyergon.db``), does one read or one :class:`~pyergon.management.FlowManager`
operation, prints the result as text or, with ``--json``, as JSON, and closes the storage. A
SQLite file that does not exist is reported, never created.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyergon.cli._errors import CommandError, CommandUsageError
from pyergon.core.status import TaskStatus
from pyergon.errors import FlowDefinitionError, InvalidStorageUrlError, PyergonError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from pyergon.core.outcome import FlowOutcome
    from pyergon.core.records import ScheduledFlow
    from pyergon.history import FlowHistory
    from pyergon.management import FlowManager, ReplayResult
    from pyergon.storage.base import ExecutionLog

__all__ = [
    "MANAGEMENT_COMMANDS",
    "ManagementError",
    "ManagementUsageError",
    "run_command",
    "run_management",
]


class ManagementUsageError(CommandUsageError):
    """The command line cannot be carried out as written: exit code 2, nothing changed."""


class ManagementError(CommandError):
    """The command ran and the operation failed (a one-line reason): exit code 1."""


# -- running a command ---------------------------------------------------------------------------


class _Output:
    """Where a command prints: rich text for people, or one JSON document with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._console: Console | None = None

    def json(self, document: object) -> None:
        """Print ``document`` as indented JSON."""
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")

    def say(self, sentence: str) -> None:
        """Print a sentence that quotes user input, which must not be read as rich markup."""
        from rich.markup import escape

        self.text(escape(sentence))

    def text(self, *renderables: RenderableType) -> None:
        """Print rich renderables; strings are rich markup and never wrapped."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        console = self._console
        for renderable in renderables:
            if isinstance(renderable, str):
                console.print(renderable, soft_wrap=True)
            elif console.is_terminal:
                console.print(renderable)
            else:
                # A pipe or a file has no width: print tables whole, not folded to 80 columns.
                from rich.measure import Measurement

                unbounded = console.options.update_width(_UNBOUNDED_WIDTH)
                natural = Measurement.get(console, unbounded, renderable).maximum
                console.width = max(console.width, natural)
                console.print(renderable)


_UNBOUNDED_WIDTH = 10_000
"""Width to measure a table's natural width at, for output that is not a terminal."""
_Command = Callable[[argparse.Namespace, _Output], Coroutine[Any, Any, int]]


def run_management(arguments: argparse.Namespace) -> int:
    """Run the management command ``arguments.command`` as parsed by :mod:`pyergon.cli`.

    Returns:
        0 when the command did what was asked; 1 when ``replay`` found a divergence.

    Raises:
        ManagementUsageError: The arguments cannot be used (exit 2); nothing was changed.
        ManagementError: The operation failed (exit 1), with a one-line reason; nothing was
            changed.
    """
    return run_command(arguments, MANAGEMENT_COMMANDS[arguments.command])


def run_command(arguments: argparse.Namespace, command: _Command) -> int:
    """Run ``command`` as :func:`run_management` runs its own (for other command modules)."""
    from pyergon.cli._worker import WorkerStartError, WorkerUsageError

    output = _Output(bool(arguments.json))
    try:
        return asyncio.run(command(arguments, output))
    except (WorkerUsageError, InvalidStorageUrlError) as error:
        raise ManagementUsageError(str(error)) from None
    except (WorkerStartError, PyergonError) as error:
        raise ManagementError(_one_line(str(error))) from None


def _one_line(message: str) -> str:
    return " ".join(message.split())


@asynccontextmanager
async def _storage(arguments: argparse.Namespace) -> AsyncIterator[ExecutionLog]:
    """Open the storage of ``--storage``, refusing to create a SQLite file that is not there."""
    from pyergon.cli._worker import default_storage_url
    from pyergon.storage._url import open_storage

    url: str = arguments.storage or default_storage_url()
    missing = _missing_database(url)
    if missing is not None:
        raise ManagementError(missing)
    storage = await open_storage(url)
    try:
        yield storage
    finally:
        await storage.close()


def _missing_database(url: str) -> str | None:
    """Why ``url`` cannot be opened without creating it: a SQLite file that does not exist.

    A stat() run before the event loop has anything else to do, so it blocks nothing.
    """
    from pyergon.storage._url import sqlite_file

    path = sqlite_file(url)
    if path is None or Path(path).is_file():
        return None
    return (
        f"no pyergon database at {Path(path).resolve()} (from {url!r}); pass --storage URL or "
        "set $PYERGON_STORAGE"
    )


def _manager(storage: ExecutionLog) -> FlowManager:
    from pyergon.management import FlowManager

    return FlowManager(storage)


# -- the commands --------------------------------------------------------------------------------


async def _flows(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.history import iter_flows

    statuses: list[TaskStatus] | None = arguments.status
    async with _storage(arguments) as storage:
        flows = [
            flow
            async for flow in iter_flows(
                storage,
                status=statuses or None,
                flow_type=arguments.flow_type,
                created_after=arguments.since,
                worker_id=arguments.worker,
                parent_flow_id=arguments.parent,
                limit=arguments.limit,
            )
        ]
        counts = await storage.count_flows(flow_type=arguments.flow_type)
    from pyergon.cli._views import count_line, flow_json, flows_table

    if output.as_json:
        output.json([flow_json(flow) for flow in flows])
    else:
        output.text(
            flows_table(flows) if flows else "no flows match",
            count_line(len(flows), counts, arguments.flow_type),
        )
    return 0


async def _show(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon._values import value_json, value_text
    from pyergon.cli._views import history_json, history_view
    from pyergon.history import load_history

    full: bool = arguments.full
    if full and not (arguments.result or output.as_json):
        raise ManagementUsageError("--full goes with --result or --json: it shows the whole result")
    async with _storage(arguments) as storage:
        if arguments.result:
            value = await _manager(storage).value(arguments.flow_id)
            if output.as_json:
                output.json({"flow_id": arguments.flow_id, "result": value_json(value, full=full)})
            else:
                sys.stdout.write(value_text(value, full=full) + "\n")
            return 0
        history = await load_history(storage, arguments.flow_id)
        if output.as_json:
            output.json(
                {**history_json(history), "result": await _result_json(storage, history, full)}
            )
        else:
            output.text(*history_view(history, time.time(), storage_url=arguments.storage))
    return 0


async def _result_json(
    storage: ExecutionLog, history: FlowHistory, full: bool
) -> dict[str, Any] | None:
    """The flow's result for ``show --json``: ``None`` before it has one, else its JSON.

    A result that cannot be read here (its class is not importable, another serializer) is
    ``{"error": ...}``: the rest of the history is still worth printing. A result kept as an
    artifact is not loaded: it is ``{"artifact": ..., "bytes": ..., "format": ...}``, and
    ``show --result --json`` reads it.
    """
    from pyergon._values import stored_value, value_json
    from pyergon.serialization import payload_info

    if history.flow.status is not TaskStatus.COMPLETE:
        return None
    info = payload_info(history.flow.result)
    if info is not None and info.artifact is not None:
        return {"artifact": info.artifact, "bytes": info.size, "format": info.format}
    try:
        value = stored_value(history, _manager(storage).serializer, None)
    except PyergonError as error:
        return {"error": f"{type(error).__name__}: {_one_line(str(error))}"}
    return value_json(value, full=full)


async def _output(arguments: argparse.Namespace, output: _Output) -> int:
    step: str | None = arguments.step
    async with _storage(arguments) as storage:
        text = await _manager(storage).output(arguments.flow_id, step)
    if output.as_json:
        output.json({"flow_id": arguments.flow_id, "step": step, "output": text})
    else:
        sys.stdout.write(text)
    return 0


async def _signal(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.executor.scheduler import Scheduler

    flow_id: str = arguments.flow_id
    name: str = arguments.name
    value: object = arguments.value
    if arguments.json_value:
        try:
            value = json.loads(arguments.value)
        except json.JSONDecodeError as error:
            raise ManagementUsageError(
                f"VALUE is not valid JSON ({error}); nothing was sent"
            ) from None
    if not name:
        raise ManagementUsageError("the signal NAME must not be empty")
    async with _storage(arguments) as storage:
        delivered = await Scheduler(storage).signal(flow_id, name, value)
    if output.as_json:
        output.json({"flow_id": flow_id, "name": name, "delivered": delivered})
    elif delivered:
        output.say(f"delivered signal {name!r} to flow {flow_id!r}")
    else:
        output.say(
            f"flow {flow_id!r} already has a signal {name!r}; the first value is kept and "
            "nothing changed"
        )
    return 0


async def _cancel(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.management import FlowManager

    return await _change_state(arguments, output, FlowManager.cancel, _cancelled)


async def _resume(arguments: argparse.Namespace, output: _Output) -> int:
    force = bool(arguments.force)

    async def resume(manager: FlowManager, flow_id: str) -> ScheduledFlow:
        return await manager.resume(flow_id, force=force)

    return await _change_state(arguments, output, resume, _resumed)


async def _retry(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.management import FlowManager

    return await _change_state(arguments, output, FlowManager.retry, _retried)


async def _change_state(
    arguments: argparse.Namespace,
    output: _Output,
    change: Callable[[FlowManager, str], Coroutine[Any, Any, ScheduledFlow]],
    sentence: Callable[[ScheduledFlow], str],
) -> int:
    """Cancel, resume or retry the flow ``FLOW_ID``; show it as JSON, or say what happened."""
    from pyergon.cli._views import flow_json

    async with _storage(arguments) as storage:
        flow = await change(_manager(storage), arguments.flow_id)
    if output.as_json:
        output.json(flow_json(flow))
    else:
        output.say(sentence(flow))
    return 0


def _cancelled(flow: ScheduledFlow) -> str:
    if flow.status is TaskStatus.CANCELLED:
        return f"flow {flow.flow_id!r} is now CANCELLED"
    return (
        f"flow {flow.flow_id!r} is {flow.status.value} on worker {flow.lease_owner!r}; "
        "cancellation requested, it stops at its next step boundary"
    )


def _resumed(flow: ScheduledFlow) -> str:
    return (
        f"flow {flow.flow_id!r} is now {flow.status.value}; a worker serving "
        f"{flow.flow_type} picks it up"
    )


def _retried(flow: ScheduledFlow) -> str:
    return (
        f"flow {flow.flow_id!r} is now {flow.status.value} (attempt {flow.attempt}); a worker "
        f"serving {flow.flow_type} runs it again, reusing the steps that succeeded"
    )


async def _fork(arguments: argparse.Namespace, output: _Output) -> int:
    from_step: int = arguments.from_step
    async with _storage(arguments) as storage:
        new_id = await _manager(storage).fork(
            arguments.flow_id, from_step=from_step, new_flow_id=arguments.new_id
        )
    if output.as_json:
        output.json({"flow_id": new_id})
    else:
        kept = f"positions 1 to {from_step}" if from_step else "none"
        output.say(
            f"forked flow {arguments.flow_id!r} as {new_id!r} (PENDING), keeping {kept} of its log"
        )
    return 0


async def _rerun(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.cli._worker import load_flow_class

    if arguments.flow_class is None and arguments.from_step == "changed":
        raise ManagementUsageError(
            "pyergon rerun needs --flow MODULE:Class to find the steps whose code changed, or "
            "--from-step STEP to name where to start"
        )
    flow_class = None if arguments.flow_class is None else load_flow_class(arguments.flow_class)
    async with _storage(arguments) as storage:
        try:
            plan = await _manager(storage).rerun(
                arguments.flow_id, from_step=arguments.from_step, flow_class=flow_class
            )
        except FlowDefinitionError as error:  # --flow names a class of another flow type
            raise ManagementUsageError(str(error)) from None
    if output.as_json:
        output.json(
            {
                "flow_id": plan.flow_id,
                "previous": plan.previous,
                "recomputed": list(plan.recomputed),
                "positions": list(plan.positions),
            }
        )
    else:
        output.say(f"{plan.summary()}; it is PENDING: a worker serving its type runs it next")
    return 0


async def _replay(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.cli._worker import load_flow_class

    flow_class = load_flow_class(arguments.flow_class)
    async with _storage(arguments) as storage:
        try:
            result = await _manager(storage).replay(arguments.flow_id, flow_class)
        except FlowDefinitionError as error:  # --flow names a class of another flow type
            raise ManagementUsageError(str(error)) from None
    if output.as_json:
        output.json(_replay_json(result))
    else:
        style = "green" if result.consistent else "bold red"
        from rich.markup import escape

        output.text(f"[{style}]{escape(result.summary())}[/]")
    return 0 if result.consistent else 1


def _replay_json(result: ReplayResult) -> dict[str, Any]:
    divergence = result.divergence
    return {
        "flow_id": result.flow_id,
        "consistent": result.consistent,
        "replayed": result.replayed,
        "recorded": result.recorded,
        "ended_at": result.ended_at,
        "divergence": None
        if divergence is None
        else {
            "position": divergence.position,
            "recorded": divergence.recorded,
            "current": divergence.current,
        },
        "outcome": _outcome_json(result.outcome),
        "summary": result.summary(),
    }


def _outcome_json(outcome: FlowOutcome[Any] | None) -> dict[str, Any] | None:
    from pyergon.core.outcome import Completed

    if outcome is None:
        return None
    described: dict[str, Any] = {"status": outcome.status.value}
    if isinstance(outcome, Completed) and outcome.error is not None:
        error_type = type(outcome.error)
        described["error"] = {
            "type": f"{error_type.__module__}.{error_type.__qualname__}",
            "message": str(outcome.error),
        }
    return described


async def _workers(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.cli._workers_view import workers_json, workers_table
    from pyergon.history import iter_flows

    async with _storage(arguments) as storage:
        workers = await _manager(storage).workers()
        running: dict[str, int] = {}
        async for flow in iter_flows(storage, status=TaskStatus.RUNNING):
            if flow.lease_owner is not None:
                running[flow.lease_owner] = running.get(flow.lease_owner, 0) + 1
    now = time.time()
    if output.as_json:
        output.json(workers_json(workers, running, now))
    elif workers:
        output.text(workers_table(workers, running, now))
    else:
        output.say("no worker has registered with this storage yet")
    return 0


MANAGEMENT_COMMANDS: Mapping[str, _Command] = {
    "workers": _workers,
    "flows": _flows,
    "show": _show,
    "output": _output,
    "signal": _signal,
    "cancel": _cancel,
    "resume": _resume,
    "retry": _retry,
    "fork": _fork,
    "rerun": _rerun,
    "replay": _replay,
}
"""The management subcommands by name."""
