"""Storage backends: the ``ExecutionLog`` contract, the in-memory backend and ``open_storage``.

The SQLite backend lives in :mod:`pyergon.storage.sqlite`; ``open_storage`` imports it when a
``sqlite://`` URL is opened, so importing this package does not load it.
"""

from pyergon.storage._url import open_storage
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog

__all__ = ["ExecutionLog", "InMemoryExecutionLog", "open_storage"]
