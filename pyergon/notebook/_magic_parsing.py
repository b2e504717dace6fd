"""How ``%pyergon`` reads its line: an argparse parser that fails the cell, not the kernel.

A bad line raises IPython's ``UsageError`` with the usage of the subcommand it names; ``-h`` and
``%pyergon help [SUBCOMMAND]`` print the help. ``schedule`` keeps its Python expression as it was
written (quotes and spaces), so it is split here rather than by a shell-like lexer.
"""

from __future__ import annotations

import argparse
import ast
import re
from typing import NoReturn

from IPython.core.error import UsageError

__all__ = [
    "PROG",
    "HelpShown",
    "MagicArgumentParser",
    "asks_help",
    "literal",
    "split_schedule",
    "stray_option",
    "subcommand_parser",
]

PROG = "%pyergon"
"""How the magic names itself in usages and messages."""


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
