"""How ``%pyergon`` reads its line: an argparse parser that fails the cell, not the kernel.

A bad line raises IPython's ``UsageError`` with the usage of the subcommand it names; ``-h`` and
``%pyergon help [SUBCOMMAND]`` print the help. ``schedule`` keeps its Python expression as it was
written (quotes and spaces), so it is split here rather than by a shell-like lexer.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NoReturn, TypeAlias

from IPython.core.error import UsageError

from pyergon.cli._arguments import (
    add_concurrency,
    add_flow_id,
    add_fork_options,
    add_listing_options,
    add_rerun_options,
    non_negative_seconds,
    parse_status,
    positive,
)
from pyergon.cli._lifetime import add_delete_options, add_gc_options, add_prune_options

__all__ = [
    "PROG",
    "Handler",
    "HelpShown",
    "MagicArgumentParser",
    "asks_help",
    "build_parser",
    "literal",
    "split_schedule",
    "stray_option",
    "subcommand_parser",
]

PROG = "%pyergon"
"""How the magic names itself in usages and messages."""

Handler: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, object]]
"""A subcommand: a coroutine function of its parsed arguments that returns what it shows."""
_Subcommands: TypeAlias = "argparse._SubParsersAction[MagicArgumentParser]"


class HelpShown(Exception):
    """argparse printed the help that ``-h`` asked for; the magic returns nothing."""


class MagicArgumentParser(argparse.ArgumentParser):
    """An argparse parser that fails the cell with ``UsageError`` instead of exiting.

    The message is the problem, then the usage of the (sub)command that has it; the top-level
    parser also says where the list of subcommands is.
    """

    def error(self, message: str) -> NoReturn:
        lines = [f"{self.prog}: {message}", self.format_usage().rstrip()]
        if self.prog == PROG:
            lines.append(
                f"`{PROG} help` lists the subcommands, `{PROG} help SUBCOMMAND` explains one"
            )
        raise UsageError("\n".join(lines))

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(message or f"{self.prog}: invalid arguments")
        raise HelpShown


def subcommand_parser(parser: argparse.ArgumentParser, names: list[str]) -> argparse.ArgumentParser:
    """The parser of ``names`` (such as ``["workers", "start"]``) under ``parser``.

    Raises:
        UsageError: A name is not a subcommand there; the message lists those that are.
    """
    for depth, name in enumerate(names):
        choices = _subcommands(parser)
        if name not in choices:
            where = " ".join([PROG, *names[:depth]])
            if not choices:
                raise UsageError(f"{PROG} help: {where} has no subcommands")
            known = ", ".join(choices)
            raise UsageError(f"{PROG} help: {where} has no subcommand {name!r}; it has: {known}")
        parser = choices[name]
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def asks_help(arguments: str) -> bool:
    """Whether the arguments of a subcommand are only ``-h`` or ``--help``."""
    return arguments.strip() in ("-h", "--help")


_SCHEDULE_ID = r"--id(?:=|\s+)(?P<id>\"[^\"]*\"|'[^']*'|\S+)"
_LEADING_ID = re.compile(rf"^{_SCHEDULE_ID}(?:\s+|$)")
_TRAILING_ID = re.compile(rf"\s{_SCHEDULE_ID}\s*$")
_OPTION = r"(?P<option>--?[A-Za-z][\w-]*)"
_LEADING_OPTION = re.compile(rf"^{_OPTION}(?:=\S*)?(?:\s|$)")
_TRAILING_OPTION = re.compile(rf"\s{_OPTION}=?\s*$")
_INNER_ID = re.compile(r"(?:^|\s)--id(?:=|\s)")


def split_schedule(text: str, usage: argparse.ArgumentParser) -> tuple[str, str | None]:
    """Split ``EXPR [--id ID]`` (or ``--id ID EXPR``) without touching the expression.

    A trailing ``--id word`` is never valid Python after an expression, so it cannot be part
    of one.

    Raises:
        UsageError: ``--id`` twice or no expression, with the usage of ``usage``.
    """
    expression, flow_id = text.strip(), None
    for pattern in (_LEADING_ID, _TRAILING_ID):
        match = pattern.search(expression)
        if match is None:
            continue
        if flow_id is not None:
            usage.error("give --id once")
        flow_id = match["id"]
        if flow_id[0] in "\"'":
            flow_id = flow_id[1:-1]
        expression = (expression[: match.start()] + expression[match.end() :]).strip()
    if not expression:
        usage.error("give a flow expression, such as OrderFlow(id=1)")
    return expression, flow_id


def stray_option(expression: str) -> str | None:
    """What is wrong with an option left at either end of a ``schedule`` expression, if any.

    ``Greet('a') --id`` is valid Python (``Greet('a') - (-id)``) that fails to evaluate with a
    message about unary minus; this finds the option the user meant instead.
    """
    if _TRAILING_ID.search(expression) or _LEADING_ID.search(expression):
        return "give --id once"  # split_schedule took one --id; the expression has another
    match = _TRAILING_OPTION.search(expression) or _LEADING_OPTION.search(expression)
    if match is None:
        if _INNER_ID.search(expression):
            return "--id takes one word (quote an id that has spaces): EXPR --id ID"
        return None
    option = match["option"]
    if option == "--id":
        return "--id needs a value, the flow's id: EXPR --id ID"
    return f"unknown option {option}; schedule takes EXPR [--id ID]"


def literal(text: str) -> object:
    """A signal value: the Python literal ``text`` spells, or else ``text`` itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def build_parser(handlers: Mapping[str, Handler]) -> MagicArgumentParser:
    """The parser of ``%pyergon`` and its subcommands.

    Args:
        handlers: The coroutine function that runs each subcommand, by its name (``"show"``,
            ``"workers start"``).
    """
    parser = MagicArgumentParser(
        prog=PROG,
        description="Connect to pyergon storage, run workers, inspect and steer flows.",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show a pyergon error's full traceback, not one line (first or last on the line)",
    )
    subcommands = parser.add_subparsers(
        title="subcommands", dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    help_command = _add(
        subcommands, "help", handlers["help"], "list the subcommands or explain one"
    )
    help_command.add_argument(
        "names", nargs="*", metavar="SUBCOMMAND", help="such as schedule, or workers start"
    )
    connect = _add(subcommands, "connect", handlers["connect"], "open a session on storage")
    connect.add_argument("url", metavar="URL", help="memory://, sqlite:///file.db, redis://…")
    _add(
        subcommands, "disconnect", handlers["disconnect"], "stop the workers and close the session"
    )
    _add_workers(subcommands, handlers)
    schedule = _add(subcommands, "schedule", handlers["schedule"], "queue a flow for the workers")
    schedule.add_argument("expression", metavar="EXPR", help="a flow instance, such as F(x=1)")
    schedule.add_argument("--id", dest="flow_id", metavar="ID", help="the flow's id")
    _add_flows(subcommands, handlers)
    show = _add(subcommands, "show", handlers["show"], "one flow's history")
    add_flow_id(show, "ID")
    output = _add(subcommands, "output", handlers["output"], "what a flow's steps printed")
    add_flow_id(output, "ID")
    output.add_argument(
        "step", nargs="?", metavar="STEP", help="one step, by its position (3) or its name"
    )
    value = _add(subcommands, "value", handlers["value"], "a flow's result, or a step's value")
    add_flow_id(value, "ID")
    value.add_argument(
        "step", nargs="?", metavar="STEP", help="one step, by its position (3) or its name"
    )
    timeline = _add(subcommands, "timeline", handlers["timeline"], "a timeline of flows")
    timeline.add_argument(
        "flow_ids", nargs="*", metavar="ID", help="the flows to show, one lane each"
    )
    timeline.add_argument(
        "--newest",
        type=positive(int),
        default=10,
        metavar="N",
        help="without IDs, show the N newest flows (default: 10)",
    )
    timeline.add_argument(
        "--status",
        type=parse_status,
        action="extend",
        nargs="+",
        metavar="STATUS",
        help="only flows in these statuses (FAILED, RUNNING, ...)",
    )
    timeline.add_argument(
        "--type", dest="flow_type", metavar="TYPE", help="only flows of this type"
    )
    timeline.add_argument(
        "--auto",
        action="store_true",
        help="redraw every second until every flow shown is final",
    )
    signal = _add(subcommands, "signal", handlers["signal"], "send a flow a named signal")
    add_flow_id(signal, "ID")
    signal.add_argument("name", metavar="NAME", help="the signal's name")
    signal.add_argument(
        "value",
        nargs="?",
        metavar="VALUE",
        help="a Python literal such as 42, True or \"{'a': 1}\" (quote it as one word); "
        "anything else is sent as a string; default: None",
    )
    replay = _add(subcommands, "replay", handlers["replay"], "check a log against today's code")
    add_flow_id(replay, "ID")
    replay.add_argument(
        "--flow",
        dest="flow_class",
        metavar="CLASS",
        help="the flow class (default: the class registered for the flow's type)",
    )
    for name, summary in (
        ("resume", "queue a waiting or stuck flow again"),
        ("retry", "run a failed or cancelled flow again"),
        ("cancel", "cancel a flow that has not finished"),
    ):
        add_flow_id(_add(subcommands, name, handlers[name], summary), "ID")
    fork = _add(subcommands, "fork", handlers["fork"], "start a copy of a flow's first N steps")
    add_flow_id(fork, "ID")
    add_fork_options(fork, new_id_help="the new flow's id")
    rerun = _add(subcommands, "rerun", handlers["rerun"], "recompute a flow from a changed step on")
    add_flow_id(rerun, "ID")
    add_rerun_options(rerun)
    add_gc_options(_add(subcommands, "gc", handlers["gc"], "remove artifacts no record names"))
    add_delete_options(
        _add(subcommands, "delete", handlers["delete"], "delete flows and their child flows")
    )
    add_prune_options(
        _add(subcommands, "prune", handlers["prune"], "delete finished flows older than a time")
    )
    watch = _add(subcommands, "watch", handlers["watch"], "a live monitor of workers and flows")
    watch.add_argument(
        "--interval",
        type=positive(float),
        default=1.0,
        metavar="SECONDS",
        help="seconds between two refreshes (default: 1)",
    )
    watch.add_argument(
        "--output",
        action="store_true",
        help="also show the last lines each running step printed",
    )
    watch.add_argument(
        "flow_ids",
        nargs="*",
        metavar="ID",
        help="only these flows (default: those created since the session opened)",
    )
    watch.add_argument("--type", dest="flow_type", metavar="TYPE", help="only flows of this type")
    watch.add_argument("--all", dest="all_flows", action="store_true", help="every flow in storage")
    return parser


def _add_workers(subcommands: _Subcommands, handlers: Mapping[str, Handler]) -> None:
    workers = subcommands.add_parser("workers", help="start, stop or list workers")
    # The metavar names the actions, so a bare ``%pyergon workers`` says which there are.
    actions = workers.add_subparsers(
        title="actions", dest="action", metavar="{start,stop,status}", required=True
    )
    start = _add(actions, "start", handlers["workers start"], "start workers on this kernel's loop")
    start.add_argument(
        "flow_classes",
        nargs="*",
        metavar="CLASS",
        help="flow classes to serve, by name (classes registered earlier are served too)",
    )
    start.add_argument(
        "--count", type=positive(int), default=1, metavar="N", help="workers to start"
    )
    add_concurrency(start, "each worker")
    stop = _add(actions, "stop", handlers["workers stop"], "stop every worker of the session")
    stop.add_argument(
        "--deadline",
        type=non_negative_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long running flows may finish before they go back to the queue",
    )
    _add(actions, "status", handlers["workers status"], "list the running workers")


def _add_flows(subcommands: _Subcommands, handlers: Mapping[str, Handler]) -> None:
    flows = _add(subcommands, "flows", handlers["flows"], "flows as a DataFrame, newest first")
    add_listing_options(flows, limit=1000)


def _add(
    subcommands: _Subcommands, name: str, handler: Handler, summary: str
) -> MagicArgumentParser:
    command = subcommands.add_parser(name, help=summary, description=summary)
    command.set_defaults(handler=handler)
    return command
