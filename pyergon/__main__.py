"""``python -m pyergon``: the same command line as the ``pyergon`` console script."""

from pyergon.cli import main

raise SystemExit(main())
