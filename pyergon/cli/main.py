"""The ``pyergon`` command: a terminal front end built on argparse and rich.

``main(argv)`` parses the arguments and dispatches to one handler per subcommand. Exit codes:
0 success, 1 the command ran and failed, 2 bad usage, 130 interrupted with Ctrl-C. rich and the
handlers are imported inside functions, so ``import pyergon`` does not pay for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from pyergon.cli._arguments import (
    add_concurrency,
    add_flow_id,
    add_fork_options,
    add_listing_options,
    add_rerun_options,
    parse_since,
    positive,
)
from pyergon.cli._errors import CommandError, CommandUsageError

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
"""The command did what was asked."""
EXIT_FAILED = 1
"""The command ran but failed (a flow failed, storage could not be opened, ...)."""
EXIT_USAGE = 2
"""The command line was wrong; argparse's own convention."""
EXIT_INTERRUPTED = 130
"""Stopped with Ctrl-C; the shell convention of 128 + SIGINT."""

Handler = Callable[[argparse.Namespace], int]
_Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_STORAGE_HELP = (
    "storage URL: sqlite:///file.db, redis://host:6379/0, postgresql://user@host/db "
    "(default: $PYERGON_STORAGE, else sqlite:///pyergon.db)"
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``pyergon`` command with one subparser per subcommand.

    Each subparser stores its handler as the ``handler`` default, so :func:`main` needs no
    table of commands; adding a subcommand means adding one ``_add_*`` function here.
    """
    from pyergon._version import __version__

    parser = argparse.ArgumentParser(
        prog="pyergon",
        description="Durable execution for Python: flows of recorded steps that survive crashes.",
    )
    parser.add_argument("--version", action="version", version=f"pyergon {__version__}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_demo(subcommands)
    _add_worker(subcommands)
    common = _management_options()
    _add_workers(subcommands, common)
    _add_flows(subcommands, common)
    _add_show(subcommands, common)
    _add_output(subcommands, common)
    _add_signal(subcommands, common)
    _add_flow_state_commands(subcommands, common)
    _add_fork(subcommands, common)
    _add_rerun(subcommands, common)
    _add_replay(subcommands, common)
    _add_lifetime(subcommands, common)
    return parser


def _add_demo(subcommands: _Subcommands) -> None:
    demo = subcommands.add_parser(
        "demo",
        help="kill a flow mid-step with SIGKILL and watch it resume",
        description=(
            "Run a five-step order-fulfilment flow in a child process on a SQLite file, "
            "SIGKILL the child while step 4 runs, resume the flow in a new process and show "
            "how often each step's body ran, from its side-effect log and from storage."
        ),
    )
    demo.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="SQLite file to use (default: demo.db in a new temporary directory)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory instead of deleting it at the end",
    )
    # The demo re-invokes itself as the child process that runs the flow.
    demo.add_argument("--child", metavar="ORDER_ID", help=argparse.SUPPRESS)
    demo.set_defaults(handler=_run_demo)


def _add_worker(subcommands: _Subcommands) -> None:
    worker = subcommands.add_parser(
        "worker",
        help="serve flow types from shared storage until SIGINT or SIGTERM",
        description=(
            "Import each MODULE:Class (the current directory is on the import path), register "
            "them on one worker and run the flows scheduled for them in the storage at URL, "
            "until Ctrl-C or SIGTERM; then stop gracefully, letting running steps finish. Start "
            "workers on several machines against one Redis or PostgreSQL server to share work."
        ),
    )
    worker.add_argument(
        "flow_classes",
        nargs="+",
        metavar="MODULE:Class",
        help="a flow class to serve, such as myapp.flows:OrderFlow",
    )
    worker.add_argument("--storage", metavar="URL", help=_STORAGE_HELP)
    worker.add_argument(
        "--id",
        dest="worker_id",
        metavar="WORKER_ID",
        help="name of this worker, unique among the workers; give one to take its flows "
        "over at once after a restart (default: worker-HOST-PID-RANDOM)",
    )
    add_concurrency(worker, "the worker")
    worker.add_argument(
        "--lease",
        type=positive(float),
        default=None,
        metavar="SECONDS",
        help="how long a claim lasts without a heartbeat; a killed worker's flows move on "
        "after it (default: 2 on SQLite, Redis and PostgreSQL, whose heartbeats run off the "
        "event loop; 30 in memory)",
    )
    worker.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log each flow that completes or is cancelled (failures, retries and lost "
        "leases are always logged)",
    )
    worker.set_defaults(handler=_run_worker)


def _management_options() -> argparse.ArgumentParser:
    """The options every management subcommand takes: ``--storage`` and ``--json``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", metavar="URL", help=_STORAGE_HELP)
    common.add_argument(
        "--json", action="store_true", help="print JSON for programs instead of text for people"
    )
    return common


def _add_management(
    subcommands: _Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    command = subcommands.add_parser(name, parents=[common], help=summary, description=description)
    command.set_defaults(handler=_run_management, command=name)
    return command


def _add_flows(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    flows = _add_management(
        subcommands,
        common,
        "flows",
        "list flows, newest first, with counts by status",
        "List the stored flows newest first, filtered by the options, with a count of all "
        "flows by status below the table.",
    )
    add_listing_options(flows, limit=50)
    flows.add_argument("--worker", metavar="WORKER_ID", help="only flows last run by this worker")
    flows.add_argument("--parent", metavar="FLOW_ID", help="only child flows of this flow")
    flows.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only flows created since WHEN: a time ago (30s, 15m, 1h, 2d, 1w) or an ISO-8601 "
        "time (UTC unless it has an offset)",
    )


def _add_show(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    show = _add_management(
        subcommands,
        common,
        "show",
        "show one flow: its records, a timeline, signals and children",
        "Show one flow: its state, a table of its recorded steps, timers, signals and "
        "children with durations, a text timeline, and the signals it was sent. With --json, "
        "the whole history (payloads as sizes) and the flow's result.",
    )
    add_flow_id(show)
    show.add_argument(
        "--result",
        action="store_true",
        help="print only the flow's result: its repr, a DataFrame as a table of its first and "
        "last rows",
    )
    show.add_argument(
        "--full",
        action="store_true",
        help="with --result or --json, the whole result (default: up to 10,000 characters, "
        "20 rows of a DataFrame)",
    )


def _add_output(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    output = _add_management(
        subcommands,
        common,
        "output",
        "print what a flow's steps printed, in full",
        "Print the stdout and stderr a flow's steps wrote, as recorded (pyergon show prints "
        "the last lines of each). Without STEP, every step that printed, each after a line "
        "'==> POSITION NAME <=='.",
    )
    add_flow_id(output)
    output.add_argument(
        "step",
        nargs="?",
        metavar="STEP",
        help="one step, by its position (3) or its name",
    )


def _add_signal(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    signal = _add_management(
        subcommands,
        common,
        "signal",
        "send a flow a named signal",
        "Send the signal NAME with VALUE to a flow and wake it if it waits for it. Only the "
        "first value per flow and name is kept; sending again changes nothing.",
    )
    add_flow_id(signal)
    signal.add_argument("name", metavar="NAME", help="the signal's name")
    signal.add_argument("value", metavar="VALUE", help="the value; a string unless --json-value")
    signal.add_argument(
        "--json-value",
        action="store_true",
        help='parse VALUE as JSON (42, true, "text", {"a": 1}) instead of sending a string',
    )


_FLOW_STATE_COMMANDS = (
    (
        "cancel",
        "cancel a flow that has not finished",
        "Cancel a flow: at once if it is queued or waiting, at its next step boundary if a "
        "worker runs it.",
    ),
    (
        "resume",
        "put a waiting or stuck flow back in the queue",
        "Put a suspended flow (or a running one whose worker is gone) back in the queue, so "
        "a worker runs it now.",
    ),
    (
        "retry",
        "run a failed or cancelled flow again",
        "Queue a FAILED or CANCELLED flow again; the steps that succeeded stay recorded and "
        "are not run again.",
    ),
)
"""The commands that take one flow id and change its state: name, help, description."""


def _add_flow_state_commands(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    for name, summary, description in _FLOW_STATE_COMMANDS:
        command = _add_management(subcommands, common, name, summary, description)
        add_flow_id(command)
        if name == "resume":
            command.add_argument(
                "--force",
                action="store_true",
                help="resume a running flow even though its worker looks alive (that worker "
                "may be inside a step, which then runs twice; its writes are refused)",
            )


def _add_workers(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    _add_management(
        subcommands,
        common,
        "workers",
        "list the workers that served this storage: live, stopped or dead",
        "List every worker that registered with this storage: live (beating), stopped "
        "(shut down cleanly) or dead (its heartbeats stopped: killed or cut off), with its "
        "host, pid, last heartbeat, the flows it holds now and the flow types it serves.",
    )


def _add_fork(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    fork = _add_management(
        subcommands,
        common,
        "fork",
        "start a copy of a flow that keeps its first N log positions",
        "Start a new flow with the same type and inputs whose log is the first N positions of "
        "FLOW_ID's; it replays them and runs live after them. The original is not touched.",
    )
    add_flow_id(fork)
    add_fork_options(fork, new_id_help="the new flow's id (default: FLOW_ID~fork-…)")


def _add_rerun(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    rerun = _add_management(
        subcommands,
        common,
        "rerun",
        "recompute a finished flow from a step on, keeping the old results",
        "Forget FLOW_ID's records from a step on (in a DAG flow: that step's and its "
        "descendants') and queue it again for a worker; the records before are reused. The "
        "flow as it was is kept as FLOW_ID~gen-N. Without --from-step, starts at the first step "
        "whose code changed since it was recorded, which needs --flow.",
    )
    add_flow_id(rerun)
    add_rerun_options(rerun)
    rerun.add_argument(
        "--flow",
        dest="flow_class",
        metavar="MODULE:Class",
        help="the flow class today, such as myapp.flows:OrderFlow (needed to find changed steps)",
    )


def _add_replay(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    replay = _add_management(
        subcommands,
        common,
        "replay",
        "check a flow's recorded log against today's code",
        "Run today's code of MODULE:Class against the flow's recorded log without running any "
        "step or writing anything. Exit code 0 when the code matches the log, 1 when it "
        "diverges.",
    )
    add_flow_id(replay)
    replay.add_argument(
        "--flow",
        dest="flow_class",
        required=True,
        metavar="MODULE:Class",
        help="the flow class, such as myapp.flows:OrderFlow (the current directory is on the "
        "import path)",
    )


def _add_lifetime(subcommands: _Subcommands, common: argparse.ArgumentParser) -> None:
    from pyergon.cli._lifetime import add_delete_options, add_gc_options, add_prune_options

    gc = _add_management(
        subcommands,
        common,
        "gc",
        "remove artifacts that no stored record names",
        "Remove the artifacts (large results kept apart from the log) that no flow, record or "
        "signal names any more, and leftovers of interrupted writes. Safe while workers run: "
        "an artifact written in the last --older-than stays, as a worker may be about to save "
        "the record naming it.",
    )
    add_gc_options(gc)
    gc.set_defaults(handler=_run_lifetime)
    delete = _add_management(
        subcommands,
        common,
        "delete",
        "delete flows with their records, signals and child flows",
        "Delete each FLOW_ID (not running) with its records, signals and child flows, then the "
        "artifacts that only they named. Every flow is checked before any is deleted.",
    )
    add_delete_options(delete)
    delete.set_defaults(handler=_run_lifetime)
    prune = _add_management(
        subcommands,
        common,
        "prune",
        "delete finished flows last updated longer ago than --older-than",
        "Delete the top-level flows in the given statuses (default: COMPLETE, FAILED, "
        "CANCELLED) last updated longer ago than --older-than, each with its child flows, "
        "then the artifacts that only they named.",
    )
    add_prune_options(prune)
    prune.set_defaults(handler=_run_lifetime)


def _run_demo(arguments: argparse.Namespace) -> int:
    from pyergon._demo import run_child, run_demo

    db_path: Path | None = arguments.db
    if arguments.child is not None:
        if db_path is None:
            raise CommandUsageError("--child needs --db")
        return run_child(db_path, str(arguments.child))
    return run_demo(db_path, keep=bool(arguments.keep))


def _run_worker(arguments: argparse.Namespace) -> int:
    from pyergon.cli._worker import (
        WorkerSettings,
        default_storage_url,
        default_worker_id,
        run_worker,
    )

    settings = WorkerSettings(
        flow_specs=list(arguments.flow_classes),
        storage_url=arguments.storage or default_storage_url(),
        worker_id=arguments.worker_id or default_worker_id(),
        concurrency=int(arguments.concurrency),
        lease_seconds=None if arguments.lease is None else float(arguments.lease),
        verbose=bool(arguments.verbose),
    )
    return run_worker(settings)


def _run_lifetime(arguments: argparse.Namespace) -> int:
    from pyergon.cli._lifetime import run_lifetime

    return run_lifetime(arguments)


def _run_management(arguments: argparse.Namespace) -> int:
    from pyergon.cli._manage import run_management

    return run_management(arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyergon`` command.

    Args:
        argv: The arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit code: 0 ok, 1 failed, 2 usage error, 130 interrupted.
    """
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help, --version and bad usage
        return _exit_code(exit_request.code)
    handler: Handler | None = getattr(arguments, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        _check_text(arguments)
        return handler(arguments)
    except CommandUsageError as error:
        _print_error(f"usage error: {error}")
        return EXIT_USAGE
    except CommandError as error:
        _print_error(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED


def _check_text(arguments: argparse.Namespace) -> None:
    """Refuse an argument that is not text no storage can hold alike, before anything runs.

    Bytes that are not UTF-8 reach ``sys.argv`` as lone surrogates; storage would fail on them
    deep inside a command.
    """
    from pyergon.core.records import text_problem

    for name, value in vars(arguments).items():
        for text in value if isinstance(value, list) else [value]:
            problem = text_problem(text) if isinstance(text, str) else None
            if problem is not None:
                raise CommandUsageError(f"argument {name} {text!r} {problem}")


def _exit_code(code: str | int | None) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    return EXIT_FAILED


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # Messages quote user input and exception text; "[...]" in them is not markup.
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]pyergon:[/] {escape(message)}"
    )
