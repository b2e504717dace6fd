"""The storage contract suite (:mod:`pyergon.testing`) run against PostgreSQL, as a user would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

import pyergon.testing
from pyergon.storage.postgres import PostgresExecutionLog

from ..conftest import drop_schema


@pytest.fixture
async def storage(postgres_dsn: str) -> AsyncIterator[PostgresExecutionLog]:
    schema = f"pyergon_test_{uuid.uuid4().hex[:12]}"
    backend = PostgresExecutionLog(postgres_dsn, schema=schema)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()
        await drop_schema(schema)


class TestPostgresContract(pyergon.testing.StorageContract):
    pass


class TestPostgresWorkerRegistry(pyergon.testing.WorkerRegistryContract):
    pass
