"""``pyergon gc|delete|prune``: remove artifacts no record names, and flows nobody needs.

The options are added here for the ``pyergon`` command and ``%pyergon`` alike; the commands
run like the other management commands (:mod:`pyergon.cli._manage`): one operation of
:class:`~pyergon.management.FlowManager`, its report as a sentence or, with ``--json``, as JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyergon.cli._arguments import parse_duration, parse_status

if TYPE_CHECKING:
    from pyergon._artifact_gc import GcReport
    from pyergon.cli._manage import _Command, _Output

__all__ = [
    "LIFETIME_COMMANDS",
    "add_delete_options",
    "add_gc_options",
    "add_prune_options",
    "report_json",
    "run_lifetime",
]

_GRACE_HELP = (
    "keep unreferenced artifacts written less than this long ago, such as 90s, 15m or 12h: a "
    "worker may be about to save the record naming one (default: 5m)"
)


def add_gc_options(command: argparse.ArgumentParser) -> None:
    """Add ``--dry-run`` and ``--older-than DURATION`` (into ``older_than``, in seconds)."""
    command.add_argument(
        "--dry-run", action="store_true", help="remove nothing; say what would be removed"
    )
    command.add_argument(
        "--older-than", type=parse_duration, default=300.0, metavar="DURATION", help=_GRACE_HELP
    )


def add_delete_options(command: argparse.ArgumentParser) -> None:
    """Add the flow ids to delete, into ``flow_ids``."""
    command.add_argument(
        "flow_ids", nargs="+", metavar="FLOW_ID", help="the flows to delete (not running)"
    )


def add_prune_options(command: argparse.ArgumentParser) -> None:
    """Add ``--older-than`` (required), ``--status``, ``--type`` and ``--dry-run``."""
    command.add_argument(
        "--older-than",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="delete flows last updated longer ago than this, such as 12h or 7d",
    )
    command.add_argument(
        "--status",
        type=parse_status,
        action="extend",
        nargs="+",
        metavar="STATUS",
        help="only flows in these statuses (default: COMPLETE FAILED CANCELLED)",
    )
    command.add_argument("--type", dest="flow_type", metavar="TYPE", help="only flows of this type")
    command.add_argument(
        "--dry-run", action="store_true", help="delete nothing; say what would be deleted"
    )


def report_json(report: GcReport) -> dict[str, Any]:
    """The report as a JSON document: counts, sizes in bytes, and the flows deleted."""
    return {
        "dry_run": report.dry_run,
        "has_artifact_store": report.has_store,
        "flows_deleted": list(report.flows),
        "artifacts_removed": report.removed,
        "bytes_removed": report.removed_bytes,
        "artifacts_kept": report.kept,
        "bytes_kept": report.kept_bytes,
        "artifacts_too_recent": report.too_recent,
    }


def _print(report: GcReport, output: _Output) -> int:
    if output.as_json:
        output.json(report_json(report))
    else:
        output.say(("dry run: " if report.dry_run else "") + report.summary())
    return 0


async def _gc(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.cli._manage import _manager, _storage

    async with _storage(arguments) as storage:
        report = await _manager(storage).gc(
            dry_run=bool(arguments.dry_run), older_than=float(arguments.older_than)
        )
    return _print(report, output)


async def _delete(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon._artifact_gc import delete_flows
    from pyergon.cli._manage import _storage

    async with _storage(arguments) as storage:
        report = await delete_flows(storage, list(arguments.flow_ids))
    return _print(report, output)


async def _prune(arguments: argparse.Namespace, output: _Output) -> int:
    from pyergon.cli._manage import _manager, _storage

    async with _storage(arguments) as storage:
        report = await _manager(storage).prune(
            float(arguments.older_than),
            statuses=arguments.status,
            flow_type=arguments.flow_type,
            dry_run=bool(arguments.dry_run),
        )
    return _print(report, output)


LIFETIME_COMMANDS: Mapping[str, _Command] = {"gc": _gc, "delete": _delete, "prune": _prune}
"""The subcommands of this module by name; :func:`~pyergon.cli._manage.run_management` runs
them as it runs its own."""


def run_lifetime(arguments: argparse.Namespace) -> int:
    """Run ``gc``, ``delete`` or ``prune`` (``arguments.command``) as parsed by the CLI."""
    from pyergon.cli._manage import run_command

    return run_command(arguments, LIFETIME_COMMANDS[arguments.command])
