"""Fixtures shared by the whole suite: one connected storage per backend, closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog


async def _memory(_tmp_path: Path) -> ExecutionLog:
    return InMemoryExecutionLog()


async def _sqlite_file(tmp_path: Path) -> ExecutionLog:
    from pyergon.storage.sqlite import SqliteExecutionLog

    storage = SqliteExecutionLog(tmp_path / "pyergon.db")
    await storage.connect()
    return storage


async def _sqlite_memory(_tmp_path: Path) -> ExecutionLog:
    from pyergon.storage.sqlite import SqliteExecutionLog

    return await SqliteExecutionLog.in_memory()


BACKENDS: dict[str, Callable[[Path], Awaitable[ExecutionLog]]] = {
    "memory": _memory,
    "sqlite-file": _sqlite_file,
    "sqlite-memory": _sqlite_memory,
}
"""Every backend the storage-agnostic tests run on; Redis and PostgreSQL join here."""


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExecutionLog]:
    """A connected, empty storage backend of each kind."""
    backend = await BACKENDS[request.param](tmp_path)
    try:
        yield backend
    finally:
        await backend.close()
