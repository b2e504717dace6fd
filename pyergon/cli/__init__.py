"""The ``pyergon`` command, one module per command group.

:mod:`~pyergon.cli.main` parses the arguments and dispatches; :mod:`~pyergon.cli._worker` runs
workers; :mod:`~pyergon.cli._manage` lists, shows and operates on flows; :mod:`~pyergon.cli._views`
renders them with rich. ``python -m pyergon`` and the ``pyergon`` script call :func:`main`.
"""

from pyergon.cli.main import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
