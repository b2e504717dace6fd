"""How a notebook cell shows pyergon's errors and interruptions: one line, not a traceback.

An interrupted ``await session.wait(...)`` or ``await session.run(...)`` raises the
``CancelledError`` asyncio gives it, unchanged (so ``asyncio.timeout`` and cancelled tasks
behave as asyncio says), with a note that says which flows go on and how to reach them again.
In IPython, :func:`show_errors_as_one_line` registers a custom exception handler that shows
that note, or ``TypeName: message`` for a :class:`~pyergon.errors.PyergonError`, instead of the
traceback; ``%tb`` still shows the traceback, ``%xmode Verbose`` shows every one in full, and
:func:`show_in_full` marks one error to be shown in full (``%pyergon --traceback ...``). Any other
error is shown as IPython would.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from pyergon.errors import PyergonError

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = [
    "INTERRUPTED",
    "current_shell",
    "interrupted_run",
    "interrupted_wait",
    "one_line",
    "show_errors_as_one_line",
    "show_errors_as_usual",
    "show_errors_in_cells",
    "show_in_full",
]

INTERRUPTED = "Interrupted: "
"""How every note pyergon attaches to an interruption starts."""

FULL_TRACEBACK_MODES = frozenset({"Verbose", "Docs"})
"""The ``%xmode`` modes in which a user asks for detail: pyergon's errors show their traceback."""

_FULL = "_pyergon_show_in_full"
_CANNOT_KILL = "a def step that is running finishes first: a thread cannot be killed"
_SHOWN_IDS = 5


def interrupted_wait(flow_ids: Sequence[str]) -> str:
    """The note for an interrupted wait on ``flow_ids``: they go on; how to wait again."""
    shown = ", ".join(repr(flow_id) for flow_id in flow_ids[:_SHOWN_IDS])
    more = f" and {len(flow_ids) - _SHOWN_IDS} more" if len(flow_ids) > _SHOWN_IDS else ""
    again = repr(flow_ids[0]) if len(flow_ids) == 1 else repr(list(flow_ids))
    noun, verb = ("flow", "goes") if len(flow_ids) == 1 else ("flows", "go")
    return (
        f"{INTERRUPTED}the wait stopped, not the {noun}: {shown}{more} {verb} on in the "
        "background. "
        f"`await session.wait({again})` waits again; `await session.cancel({flow_ids[0]!r})` "
        f"stops one ({_CANNOT_KILL})."
    )


def interrupted_run(flow_id: str) -> str:
    """The note for an interrupted direct run of ``flow_id``: it stopped; how to go on."""
    return (
        f"{INTERRUPTED}flow {flow_id!r} stopped at its current step; the steps it finished are "
        f"kept. `await session.run(flow, {flow_id!r})` goes on from there, "
        f"`await session.cancel({flow_id!r})` ends it ({_CANNOT_KILL})."
    )


def one_line(error: BaseException) -> str | None:
    """The one line a cell shows for ``error``, or ``None`` where a traceback belongs."""
    if isinstance(error, asyncio.CancelledError):
        notes = [note for note in getattr(error, "__notes__", ()) if note.startswith(INTERRUPTED)]
        return notes[-1] if notes else None
    if isinstance(error, PyergonError):
        message = str(error)
        return f"{type(error).__name__}: {message}" if message else type(error).__name__
    return None


def show_in_full(error: BaseException) -> None:
    """Have the cell that ends with ``error`` show its full traceback, not one line."""
    setattr(error, _FULL, True)


def show_errors_as_one_line(shell: InteractiveShell) -> None:
    """Show pyergon's errors and interruptions in ``shell``'s cells as one line.

    Registers an IPython custom exception handler for ``CancelledError`` and
    :class:`~pyergon.errors.PyergonError`, unless another handler is registered already (one
    of the user's own stays as it is). Calling it again changes nothing.
    """
    current = getattr(shell, "custom_exceptions", ())
    if current and current != _HANDLED:
        return
    shell.set_custom_exc(_HANDLED, _show)  # type: ignore[no-untyped-call]  # IPython: untyped


def show_errors_as_usual(shell: InteractiveShell) -> None:
    """Undo :func:`show_errors_as_one_line` on ``shell``; another handler is left alone."""
    if getattr(shell, "custom_exceptions", ()) == _HANDLED:
        shell.set_custom_exc((), None)  # type: ignore[no-untyped-call]  # IPython: untyped


_HANDLED = (asyncio.CancelledError, PyergonError)


def _show(
    shell: InteractiveShell,
    etype: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
    tb_offset: int | None = None,
) -> list[str]:
    """IPython's custom handler: one line for ours, the usual traceback for anything else."""
    line = None if _wants_full(shell, value) else one_line(value)
    if line is None:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        return []
    # What showtraceback records, so that %tb shows the full traceback of this error.
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = value
    # _showtraceback is the hook IPython's frontends override to send the lines: ipykernel
    # sends them as the cell's error (the cell still ends with this error), a terminal prints.
    shell._showtraceback(etype, value, [line])
    return [line]


def _wants_full(shell: InteractiveShell, error: BaseException) -> bool:
    """Whether ``error`` was marked by :func:`show_in_full`, or is ours and ``%xmode`` asks.

    An interruption keeps its one line in every mode: it is not an error to debug.
    """
    if getattr(error, _FULL, False) is True:
        return True
    mode = getattr(getattr(shell, "InteractiveTB", None), "mode", None)
    return isinstance(error, PyergonError) and mode in FULL_TRACEBACK_MODES


def current_shell() -> InteractiveShell | None:
    """The IPython shell this code runs in, if any (without importing IPython otherwise)."""
    if "IPython" not in sys.modules:  # not in IPython; and importing it costs a second
        return None
    from IPython import get_ipython
    from IPython.core.interactiveshell import InteractiveShell

    shell = get_ipython()
    return shell if isinstance(shell, InteractiveShell) else None


def show_errors_in_cells() -> None:
    """In an IPython shell, show pyergon's errors and interruptions as one line."""
    shell = current_shell()
    if shell is not None:
        show_errors_as_one_line(shell)
