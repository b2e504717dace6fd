"""The argument types and options that the ``pyergon`` command and ``%pyergon`` share.

Each type is an argparse ``type``: it turns the text into a value or raises
``argparse.ArgumentTypeError`` with a message that says what was expected.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from datetime import datetime

from pyergon.core.records import epoch_seconds
from pyergon.core.status import TaskStatus, flow_status

__all__ = [
    "add_concurrency",
    "add_flow_id",
    "add_fork_options",
    "add_listing_options",
    "add_rerun_options",
    "non_negative_int",
    "non_negative_seconds",
    "parse_duration",
    "parse_since",
    "parse_status",
    "positive",
]

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_status(text: str) -> TaskStatus:
    """An argparse ``type`` for ``--status``: a flow status, in any letter case.

    Raises:
        argparse.ArgumentTypeError: Not a status; the message lists the valid ones.
    """
    try:
        return flow_status(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_since(text: str, *, now: float | None = None) -> float:
    """An argparse ``type`` for ``--since``: a time ago, or an ISO-8601 date or time.

    A time ago is written ``90s``, ``15m``, ``1h30m``, ``2d`` or ``1w``; an ISO-8601 time
    without an offset is taken as UTC.

    Args:
        text: What the user wrote.
        now: The current time (epoch seconds); defaults to the system clock.

    Returns:
        The moment as epoch seconds.

    Raises:
        argparse.ArgumentTypeError: Neither form.
    """
    ago = _duration(text)
    if ago is not None:
        return (time.time() if now is None else now) - ago
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30s, 15m, 1h, 2d, 1w) nor an ISO-8601 time "
            "(2024-05-01 or 2024-05-01T12:00:00+02:00)"
        ) from None
    return epoch_seconds(moment)


def _duration(text: str) -> float | None:
    """Seconds in ``90s``, ``15m``, ``1h30m``, ``2d`` or ``1w``; ``None`` if not written so."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact) != "":
        return None
    return sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION.findall(compact))


def parse_duration(text: str) -> float:
    """An argparse ``type`` for a length of time: ``90s``, ``15m``, ``12h``, ``7d``, ``1w``.

    A plain number is seconds.

    Raises:
        argparse.ArgumentTypeError: Neither form.
    """
    seconds = _duration(text)
    if seconds is not None:
        return seconds
    try:
        return non_negative_seconds(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a length of time: write 90s, 15m, 12h, 7d or 1w (or seconds)"
        ) from None


def non_negative_int(text: str) -> int:
    """An argparse ``type`` accepting whole numbers >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_seconds(text: str) -> float:
    """An argparse ``type`` for a number of seconds >= 0, such as a deadline."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
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


def add_flow_id(command: argparse.ArgumentParser, metavar: str = "FLOW_ID") -> None:
    """Add the positional ``flow_id`` every command on one flow takes."""
    command.add_argument("flow_id", metavar=metavar, help="the flow's id")


def add_listing_options(command: argparse.ArgumentParser, *, limit: int) -> None:
    """Add the options of a listing of flows: ``--status``, ``--type`` and ``--limit``.

    ``--status S [S ...]`` is repeatable and read into ``status`` as a list of statuses;
    ``--type`` into ``flow_type``; ``--limit N`` defaults to ``limit``.
    """
    command.add_argument(
        "--status",
        type=parse_status,
        action="extend",
        nargs="+",
        metavar="STATUS",
        help="only flows in these statuses (PENDING, RUNNING, SUSPENDED, COMPLETE, FAILED, "
        "CANCELLED); repeat or list several",
    )
    command.add_argument("--type", dest="flow_type", metavar="TYPE", help="only flows of this type")
    command.add_argument(
        "--limit",
        type=positive(int),
        default=limit,
        metavar="N",
        help=f"show at most N flows (default: {limit})",
    )


def add_concurrency(command: argparse.ArgumentParser, who: str) -> None:
    """Add ``--concurrency N`` (default 10): how many flows ``who`` runs at once."""
    command.add_argument(
        "--concurrency",
        type=positive(int),
        default=10,
        metavar="N",
        help=f"flows {who} runs at once (default: 10)",
    )


def step_reference(text: str) -> str | int:
    """A step as the command line names it: a log position (digits) or a step name."""
    return int(text) if text.isdigit() else text


def add_rerun_options(command: argparse.ArgumentParser) -> None:
    """Add ``--from-step STEP``, the option of ``rerun``."""
    command.add_argument(
        "--from-step",
        type=step_reference,
        default="changed",
        metavar="STEP",
        help="a step name or log position to recompute from (default: changed, the first "
        "step whose code changed since it was recorded)",
    )


def add_fork_options(command: argparse.ArgumentParser, new_id_help: str) -> None:
    """Add ``--from-step N`` (required) and ``--new-id ID``, the options of ``fork``."""
    command.add_argument(
        "--from-step",
        type=non_negative_int,
        required=True,
        metavar="N",
        help="how many log positions to keep (0 keeps none)",
    )
    command.add_argument("--new-id", metavar="ID", help=new_id_help)
