"""Every backend of this repository passes the shipped storage contract, ``pyergon.testing``."""

from __future__ import annotations

import asyncio

import pytest

from pyergon.storage.base import ExecutionLog
from pyergon.testing import StorageContract


class TestContract(StorageContract):
    """The contract on each backend of the ``storage`` fixture in tests/conftest.py."""


async def test_a_wait_cancelled_in_the_pass_its_event_is_set_ends_cancelled(
    storage: ExecutionLog,
) -> None:
    # The shipped suite cannot set a backend's wake-up event in the very pass of the cancel;
    # every backend here wakes its waits with one, so this one can.
    await storage.wait_for_work(timeout=0.01)  # consume anything setting up notified
    waiter = asyncio.create_task(storage.wait_for_work(timeout=30))
    for _ in range(5):  # let it reach its wait (a backend may look at storage first)
        await asyncio.sleep(0)
    woken = getattr(storage, "_work", None)
    assert isinstance(woken, asyncio.Event)
    woken.set()  # work arrives in the same pass as the cancel
    waiter.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiter
