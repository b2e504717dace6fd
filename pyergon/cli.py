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


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``pyergon`` command with one subparser per subcommand.

    Each subparser stores its handler as the ``handler`` default, so :func:`main` needs no
    table of commands; adding a subcommand means adding one ``_add_*`` function here.
    """
    from pyergon import __version__

    parser = argparse.ArgumentParser(
        prog="pyergon",
        description="Durable execution for Python: flows of recorded steps that survive crashes.",
    )
    parser.add_argument("--version", action="version", version=f"pyergon {__version__}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_demo(subcommands)
    _add_worker(subcommands)
    return parser


def _add_demo(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _add_worker(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    worker.add_argument(
        "--storage",
        metavar="URL",
        help=(
            "storage URL: sqlite:///file.db, redis://host:6379/0, postgresql://user@host/db "
            "(default: $PYERGON_STORAGE, else sqlite:///pyergon.db)"
        ),
    )
    worker.add_argument(
        "--id",
        dest="worker_id",
        metavar="WORKER_ID",
        help="name of this worker, unique among the workers (default: HOSTNAME-PID)",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive(int),
        default=10,
        metavar="N",
        help="flows run at once (default: 10)",
    )
    worker.add_argument(
        "--lease",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="how long a claim lasts without renewal; a dead worker's flows move on after it "
        "(default: 30)",
    )
    worker.set_defaults(handler=_run_worker)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse ``type`` accepting numbers of ``kind`` greater than zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


class _UsageError(Exception):
    """Arguments that parse but do not make sense together."""


def _run_demo(arguments: argparse.Namespace) -> int:
    from pyergon.demo import run_child, run_demo

    db_path: Path | None = arguments.db
    if arguments.child is not None:
        if db_path is None:
            raise _UsageError("--child needs --db")
        return run_child(db_path, str(arguments.child))
    return run_demo(db_path, keep=bool(arguments.keep))


def _run_worker(arguments: argparse.Namespace) -> int:
    from pyergon.cli_worker import (
        WorkerSettings,
        WorkerStartError,
        WorkerUsageError,
        default_storage_url,
        default_worker_id,
        run_worker,
    )

    settings = WorkerSettings(
        flow_specs=list(arguments.flow_classes),
        storage_url=arguments.storage or default_storage_url(),
        worker_id=arguments.worker_id or default_worker_id(),
        concurrency=int(arguments.concurrency),
        lease_seconds=float(arguments.lease),
    )
    try:
        return run_worker(settings)
    except WorkerUsageError as error:
        raise _UsageError(str(error)) from None
    except WorkerStartError as error:
        _print_error(str(error))
        return EXIT_FAILED


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
        return handler(arguments)
    except _UsageError as error:
        _print_error(f"usage error: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED


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
