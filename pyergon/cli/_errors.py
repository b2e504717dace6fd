"""The two ways a ``pyergon`` command ends in error, each reported once, by ``main``.

:class:`CommandUsageError` exits with code 2 (``pyergon: usage error: ...``);
:class:`CommandError` with code 1 (``pyergon: ...``). Subcommands raise subclasses of their own.
"""

from __future__ import annotations

__all__ = ["CommandError", "CommandUsageError"]


class CommandUsageError(Exception):
    """The command line cannot be carried out as written: exit code 2."""


class CommandError(Exception):
    """The command ran and failed (a one-line reason): exit code 1."""
