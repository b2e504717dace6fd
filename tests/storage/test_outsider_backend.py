"""The shipped storage contract run as a third party would run it, on a backend of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import pyergon.testing

from .outsider_backend import OutsiderExecutionLog


class TestOutsiderBackend(pyergon.testing.StorageContract):
    """Every contract test on :class:`OutsiderExecutionLog`."""

    @pytest.fixture
    async def storage(self) -> AsyncIterator[OutsiderExecutionLog]:
        backend = OutsiderExecutionLog()
        await backend.connect()
        yield backend
        await backend.close()
